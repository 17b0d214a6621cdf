"""The JSON-lines sink, for those without NATS: a directory with ``audit.jsonl`` and ``usage.jsonl``, one
CloudEvent per line, each batch fsync'd before it counts as published.

An export resumes after the last complete line of ``audit.jsonl``. A crash in the middle of a write leaves a
torn last line: it is cut off (and fsync'd) before anything is appended, and the entries it held are written
again, so the file stays gap-free and duplicate-free. One exporter writes a directory at a time (an flock on
``.lock``); a second one waits, retrying, until the first is gone. Every file operation runs in a thread.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from tenantgate.errors import FailedPrecondition, InvalidArgument
from tenantgate.events.cloudevents import MAX_EVENT_BYTES, OutboundEvent, audit_position
from tenantgate.events.sinks import Position, SinkUnavailable

log = logging.getLogger("tenantgate.events")
AUDIT_FILE, USAGE_FILE, LOCK_FILE = "audit.jsonl", "usage.jsonl", ".lock"
_BLOCK = 64 * 1024


def repair_tail(path: Path) -> bytes | None:
    """Cuts a torn last line off ``path`` (durably) and answers its last complete line, or None when it holds
    none. A last line longer than any event is refused: this is not a file the sink wrote."""
    with open(path, "r+b") as file:
        size = file.seek(0, os.SEEK_END)
        start, tail = size, b""
        while start > 0 and tail.count(b"\n") < 2 and len(tail) <= 2 * MAX_EVENT_BYTES + 2:
            step = min(_BLOCK, start)
            start -= step
            file.seek(start)
            tail = file.read(step) + tail
        last_newline = tail.rfind(b"\n")
        if last_newline < 0 and start > 0:
            raise FailedPrecondition(f"{path}: no line break in its last {len(tail)} bytes; not an event file")
        complete = start + last_newline + 1  # 0 when there is no complete line at all
        if complete < size:
            log.warning("%s: cutting a torn last line of %d bytes (an interrupted write); its events are written "
                        "again", path, size - complete)
            file.truncate(complete)
            file.flush()
            os.fsync(file.fileno())
        if last_newline < 0:
            return None
        previous = tail.rfind(b"\n", 0, last_newline)
        if previous < 0 and start > 0:
            raise FailedPrecondition(f"{path}: its last line is longer than {MAX_EVENT_BYTES} bytes; not an event "
                                     "file")
        return tail[previous + 1:last_newline]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileSink:
    def __init__(self, directory: str) -> None:
        self._directory = Path(directory)
        self.description = f"file:{directory}"
        self._lock: int | None = None
        self._audit: BinaryIO | None = None
        self._usage: BinaryIO | None = None
        self._guard = asyncio.Lock()

    # Each method below runs in a thread; the async methods only hand them over.

    def _open(self) -> Position | None:
        self._directory.mkdir(parents=True, exist_ok=True)
        lock = os.open(self._directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            raise SinkUnavailable(f"another exporter writes to {self._directory} (it holds {LOCK_FILE})") from None
        self._lock = lock
        paths = [self._directory / AUDIT_FILE, self._directory / USAGE_FILE]
        created = [path for path in paths if not path.exists()]
        for path in created:
            path.touch()
        if created:
            _fsync_directory(self._directory)
        last = repair_tail(paths[0])
        repair_tail(paths[1])
        # Held open from one batch to the next, until close().
        self._audit = open(paths[0], "ab")  # noqa: SIM115
        self._usage = open(paths[1], "ab")  # noqa: SIM115
        if last is None:
            return None
        try:
            return Position(*audit_position(last))
        except InvalidArgument as exc:
            raise FailedPrecondition(f"{paths[0]}: its last line is not a tenantgate audit event ({exc.message}); "
                                     "move the file away or export to another directory") from exc

    def _close(self) -> None:
        for file in (self._audit, self._usage):
            if file is not None:
                file.close()
        self._audit = self._usage = None
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None

    @staticmethod
    def _append(file: BinaryIO | None, events: Sequence[OutboundEvent]) -> None:
        if file is None:
            raise SinkUnavailable("the event file is not open")
        file.write(b"".join(event.body + b"\n" for event in events))
        file.flush()
        os.fsync(file.fileno())

    async def last_audit(self) -> Position | None:
        async with self._guard:  # one operation at a time: the audit and the usage export share the sink
            await asyncio.to_thread(self._close)
            return await self._open_now()

    async def _open_now(self) -> Position | None:
        try:
            return await asyncio.to_thread(self._open)
        except OSError as exc:  # no permission, not a directory, a full disk: said, and retried
            await asyncio.to_thread(self._close)
            raise SinkUnavailable(f"cannot open the event files in {self._directory}: {exc}") from exc
        except BaseException:
            await asyncio.to_thread(self._close)
            raise

    async def publish_audit(self, events: Sequence[OutboundEvent]) -> None:
        await self._write(AUDIT_FILE, events)

    async def publish_usage(self, events: Sequence[OutboundEvent]) -> None:
        await self._write(USAGE_FILE, events)

    async def _write(self, name: str, events: Sequence[OutboundEvent]) -> None:
        async with self._guard:
            if self._lock is None:
                await self._open_now()
            try:
                await asyncio.to_thread(self._append, self._audit if name == AUDIT_FILE else self._usage, events)
            except OSError as exc:  # a full disk, an I/O error: the next export repairs the tail and goes on
                raise SinkUnavailable(f"writing to {self._directory / name} failed: {exc}") from exc

    async def close(self) -> None:
        async with self._guard:
            await asyncio.to_thread(self._close)
