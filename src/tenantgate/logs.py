"""Structured logs: one JSON object per line, with the event's fields (tenant_id, decision_id, ...) as keys."""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from logging.handlers import QueueHandler, QueueListener

# What every LogRecord has; anything else on a record is an event field passed with ``extra=``.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def __init__(self, fields: Mapping[str, object] | None = None) -> None:
        """``fields`` go into every line (a worker process's index and pid)."""
        super().__init__()
        self._fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                 "level": record.levelname.lower(), "logger": record.name, **self._fields,
                 "message": record.getMessage()}
        entry.update({key: value for key, value in record.__dict__.items() if key not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class _DroppingQueueHandler(QueueHandler):
    """Hands records to a writer thread; when the writer falls behind by ``maxsize`` records, new ones
    are dropped (and counted) rather than growing memory or blocking the event loop."""

    def __init__(self, maxsize: int) -> None:
        self.records: queue.Queue[logging.LogRecord | None] = queue.Queue(maxsize)
        super().__init__(self.records)
        self.dropped = 0
        self.listener: QueueListener | None = None

    def close(self) -> None:
        """Write what is queued, then stop the writer (saying how many records were dropped, if any)."""
        if self.listener is not None:
            if self.dropped:
                self.records.put(logging.makeLogRecord({
                    "name": "tenantgate.logs", "levelno": logging.WARNING, "levelname": "WARNING",
                    "msg": f"{self.dropped} log records were dropped: the log writer fell behind"}))
            self.listener.stop()
            self.listener = None
        super().close()

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class _Writer(QueueListener):
    def __init__(self, records: queue.Queue[logging.LogRecord | None], handler: logging.Handler) -> None:
        super().__init__(records, handler, respect_handler_level=True)
        self.records = records

    def enqueue_sentinel(self) -> None:
        # Waits for room: the standard listener puts its stop mark without waiting, which raises queue.Full
        # when the queue is full, and the records in it would never be written.
        # (The queue and the mark as typed here: typeshed knows QueueListener's queue as put-less, and not _sentinel.)
        self.records.put(getattr(self, "_sentinel", None))


def in_background(handler: logging.Handler, maxsize: int = 10_000) -> logging.Handler:
    """``handler`` fed from a queue by a writer thread, so a slow disk or pipe never stalls serving.
    Closing the returned handler flushes the queue."""
    front = _DroppingQueueHandler(maxsize)
    front.listener = _Writer(front.records, handler)
    front.listener.start()
    atexit.register(front.close)
    return front


def configure_logging(level: str = "INFO", fmt: str = "json", *, background: bool = False,
                      worker: int | None = None) -> None:
    """Send every record to stderr. ``background``: through a writer thread started here, in this process
    (a fork copies no thread: a forked worker calls this again for its own). ``worker``: tag each line with
    the worker's index and pid."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(None if worker is None else {"worker": worker, "pid": os.getpid()}))
    else:
        tag = "" if worker is None else f"[worker {worker} pid {os.getpid()}] "
        handler.setFormatter(logging.Formatter(f"%(asctime)s {tag}%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [in_background(handler) if background else handler]
    root.setLevel(level.upper())


def flush_logs() -> None:
    """Write every record the writer thread still holds, and log synchronously from here on: for a process
    about to end with ``os._exit``, which skips the atexit flush (a worker's last words are its crash)."""
    root = logging.getLogger()
    handlers: list[logging.Handler] = []
    for handler in root.handlers:
        if isinstance(handler, _DroppingQueueHandler) and handler.listener is not None:
            targets = handler.listener.handlers
            handler.close()
            handlers.extend(targets)
        else:
            handler.flush()
            handlers.append(handler)
    root.handlers[:] = handlers
