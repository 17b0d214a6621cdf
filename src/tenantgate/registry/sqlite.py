"""The registry on SQLite: the embedded default.

WAL mode lets decision servers read while `apply` writes from another process; `BEGIN IMMEDIATE`
takes the write lock before the first read, so a writer plans against what it commits over and
revisions are gap-free in commit order. `secure_delete` and a WAL checkpoint after key destruction
leave no copy of destroyed key bytes in the file.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tenantgate.clock import Clock
from tenantgate.errors import ConfigurationError, StorageError
from tenantgate.registry.migrations import CREATE_LEDGER, pending
from tenantgate.registry.sql import SqlRegistry, Tx


class _SQLiteTx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._db.execute(sql, tuple(params)).fetchall()

    def run(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._db.execute(sql, tuple(params))


class SQLiteBackend:
    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000) -> None:
        """Connects on first use, and again after a failure, so a server can start (NOT_SERVING) while
        the file is unreadable and recover when it is back."""
        self.path = str(path)
        self.description = f"sqlite://{self.path}"
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._db: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_dev, stat.st_ino

    def _connection(self) -> sqlite3.Connection:
        # A file replaced under its name (a restored backup, a move) is a different registry: reconnect
        # rather than keep reading the old file through a connection that still holds it open.
        if self._db is not None and self.path != ":memory:" and self._file_identity() != self._identity:
            self._disconnect()
        if self._db is None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                db.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
                db.execute("PRAGMA journal_mode = WAL")
                # FULL: an acknowledged write survives a power cut, not only a process crash.
                db.execute("PRAGMA synchronous = FULL")
                db.execute("PRAGMA secure_delete = ON")
                self._migrate(db)
            except BaseException:
                db.close()
                raise
            self._db = db
            self._identity = self._file_identity()
        return self._db

    def _migrate(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(CREATE_LEDGER)
            applied = {int(row[0]) for row in db.execute("SELECT version FROM schema_migrations")}
            for version, statements in pending("sqlite", applied, self.description):
                for statement in statements:
                    db.execute(statement)
                db.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                           (version, datetime.now(UTC).isoformat()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[Tx]:
        with self._lock:
            try:
                db = self._connection()
                db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield _SQLiteTx(db)
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._disconnect()
                raise StorageError(f"SQLite registry {self.path}: {exc}") from exc

    def announce(self, tx: Tx, revision: int) -> None:
        """Followers poll the revision; nothing to send."""

    def after_destroy(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def wait_for_change(self, timeout: float) -> None:
        time.sleep(timeout)

    def _disconnect(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def close(self) -> None:
        with self._lock:
            self._disconnect()


class SQLiteStore(SqlRegistry):
    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000, clock: Clock | None = None) -> None:
        super().__init__(SQLiteBackend(path, busy_timeout_ms=busy_timeout_ms), clock=clock)


def open_sqlite(url: str) -> SQLiteStore:
    """``sqlite:///abs/path.db`` (absolute) or ``sqlite://relative/path.db``."""
    path = url.removeprefix("sqlite://")
    if not path:
        raise ConfigurationError(f"registry URL {url!r} names no file; expected sqlite:///path/registry.db")
    return SQLiteStore(path)
