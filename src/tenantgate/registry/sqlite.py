"""The registry on SQLite: the embedded default.

WAL mode lets decision servers read while `apply` writes from another process; `BEGIN IMMEDIATE`
takes the write lock before the first read, so a writer plans against what it commits over and
revisions are gap-free in commit order. `secure_delete` and a WAL checkpoint after key destruction
leave no copy of destroyed key bytes in the file. Opened without ``create`` (as a server opens it), a
missing file or one without a registry in it is a registry not reachable yet, never one to make.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tenantgate.clock import Clock
from tenantgate.errors import ConfigurationError, StorageError
from tenantgate.registry.migrations import CREATE_LEDGER, created, no_registry, pending
from tenantgate.registry.sql import SqlRegistry, Tx


class _SQLiteTx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._db.execute(sql, tuple(params)).fetchall()

    def run(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._db.execute(sql, tuple(params))


class SQLiteBackend:
    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000, create: bool = True) -> None:
        """Connects on first use, and again after a failure, so a server can start (NOT_SERVING) while
        the file is unreadable and recover when it is back. With ``create`` false the file must hold a
        registry already: until it does, every call fails as if the registry were unreachable."""
        self.path = str(path)
        self.description = f"sqlite://{self.path}"
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._create = create
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
            db = self._open()
            try:
                db.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
                if not self._create:
                    self._require_registry(db)  # before switching to WAL, which writes to the file
                self._enable_wal(db)
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

    def _enable_wal(self, db: sqlite3.Connection) -> None:
        """WAL mode is kept in the file, but switching a new file to it needs a moment of exclusive access,
        and SQLite answers "database is locked" at once, without its busy handler, while another connection
        is opening the same new file (a server and an apply started together). Wait for it like any other
        lock: retry within the busy timeout."""
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        while True:
            try:
                db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(0.005)

    def _open(self) -> sqlite3.Connection:
        if self._create:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            return sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        if not os.path.exists(self.path):
            raise no_registry(self.description, "the file does not exist")
        # mode=rw: open the file only if it is there, never create it (even if it goes away meanwhile).
        uri = f"file:{urllib.parse.quote(os.path.abspath(self.path))}?mode=rw"
        return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)

    def _require_registry(self, db: sqlite3.Connection) -> None:
        ledger = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'")
        applied = ({int(row[0]) for row in db.execute("SELECT version FROM schema_migrations")}
                   if ledger.fetchall() else set())
        if not created(applied):
            raise no_registry(self.description, "the file holds no registry")

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
    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000, clock: Clock | None = None,
                 create: bool = True) -> None:
        super().__init__(SQLiteBackend(path, busy_timeout_ms=busy_timeout_ms, create=create), clock=clock)


def open_sqlite(url: str, *, create: bool = True, clock: Clock | None = None) -> SQLiteStore:
    """``sqlite:///abs/path.db`` (absolute) or ``sqlite://relative/path.db``."""
    path = url.removeprefix("sqlite://")
    if not path:
        raise ConfigurationError(f"registry URL {url!r} names no file; expected sqlite:///path/registry.db")
    if path == ":memory:" and not create:
        raise ConfigurationError(f"{url!r} is a new, empty registry in each process; a server follows a registry "
                                 "file that `tenantgate apply` writes")
    return SQLiteStore(path, create=create, clock=clock)
