"""The background log writer: a full queue drops records (and says so) but never breaks the flush."""

from __future__ import annotations

import logging
import threading

from tenantgate.logs import in_background


class _Held(logging.Handler):
    """A handler that writes nothing until released: a stalled pipe or disk."""

    def __init__(self) -> None:
        super().__init__()
        self.unblocked = threading.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.unblocked.wait(30)
        self.messages.append(record.getMessage())


def test_closing_a_full_queue_writes_what_it_holds_and_counts_what_it_dropped() -> None:
    target = _Held()
    front = in_background(target, maxsize=5)
    logger = logging.Logger("test.full-queue")
    logger.addHandler(front)
    for index in range(20):
        logger.warning("record %d", index)
    failures: list[BaseException] = []

    def close() -> None:
        try:
            front.close()
        except BaseException as exc:  # what the caller of flush_logs would see
            failures.append(exc)

    closing = threading.Thread(target=close, daemon=True)
    closing.start()
    target.unblocked.set()
    closing.join(30)
    assert not closing.is_alive() and not failures, failures
    assert target.messages[0] == "record 0"
    written = [m for m in target.messages if m.startswith("record")]
    assert 5 <= len(written) < 20
    dropped = 20 - len(written)
    assert target.messages[-1] == f"{dropped} log records were dropped: the log writer fell behind"
