"""The registry on PostgreSQL (psycopg 3 with a connection pool), for many servers and writers.

A write transaction starts by locking the revision row (`SELECT ... FOR UPDATE`), so writers commit one
after another and revision N+1 is never visible before N. Reads run REPEATABLE READ, so the revision and
the changes read with it agree. Commits `NOTIFY` followers, which also poll as a fallback. Opened without
``create`` (as a server opens it), a database without a registry schema is a registry not created yet: the
store upgrades a registry's schema, never makes one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from tenantgate.clock import Clock
from tenantgate.errors import ConfigurationError, StorageError
from tenantgate.registry.migrations import CREATE_LEDGER, created, no_registry, pending
from tenantgate.registry.sql import SqlRegistry, Tx

CHANNEL = "tenantgate_changes"
# Any constant: serialises schema migrations between servers starting at once.
MIGRATION_LOCK = 0x7465_6E61_6E74


def _placeholders(sql: str) -> str:
    return sql.replace("?", "%s")


class _PostgresTx:
    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._cursor = cursor

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._cursor.execute(_placeholders(sql), tuple(params))
        return self._cursor.fetchall()

    def run(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._cursor.execute(_placeholders(sql), tuple(params))


class PostgresBackend:
    def __init__(self, conninfo: str, *, pool_size: int = 4, connect_timeout: float = 5.0,
                 create: bool = True) -> None:
        self._conninfo = conninfo
        self._create = create
        self.description = _redacted(conninfo)
        self._timeout = connect_timeout
        self._pool = ConnectionPool(conninfo, min_size=1, max_size=pool_size, open=False,
                                    kwargs={"connect_timeout": max(1, int(connect_timeout))})
        self._pool.open(wait=False)
        self._migrated = False
        self._migrate_lock = threading.Lock()
        self._listener: psycopg.Connection[Any] | None = None

    def _ensure_schema(self, conn: psycopg.Connection[Any]) -> None:
        if self._migrated:
            return
        with self._migrate_lock, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            if not self._create:
                self._require_registry(conn)
            conn.execute(CREATE_LEDGER)
            applied = {int(row[0]) for row in conn.execute("SELECT version FROM schema_migrations").fetchall()}
            for version, statements in pending("postgresql", applied, self.description):
                for statement in statements:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (%s, %s)",
                             (version, datetime.now(UTC).isoformat()))
            self._migrated = True

    def _require_registry(self, conn: psycopg.Connection[Any]) -> None:
        ledger = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()
        applied = ({int(row[0]) for row in conn.execute("SELECT version FROM schema_migrations").fetchall()}
                   if ledger is not None and ledger[0] is not None else set())
        if not created(applied):
            raise no_registry(self.description, "the database holds no registry schema")

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[Tx]:
        try:
            with self._pool.connection(timeout=self._timeout) as conn:
                self._ensure_schema(conn)
                with conn.transaction(), conn.cursor() as cursor:
                    if write:
                        cursor.execute("SELECT value FROM meta WHERE key = 'revision' FOR UPDATE")
                    else:
                        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    yield _PostgresTx(cursor)
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
            raise StorageError(f"PostgreSQL registry {self.description}: {exc}") from exc
        except psycopg.Error as exc:
            raise StorageError(f"PostgreSQL registry {self.description}: {exc}") from exc

    def announce(self, tx: Tx, revision: int) -> None:
        tx.run("SELECT pg_notify(?, ?)", (CHANNEL, str(revision)))

    def after_destroy(self) -> None:
        """Dead row versions holding destroyed keys are reclaimed now rather than whenever autovacuum runs."""
        try:
            with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=int(self._timeout)) as conn:
                conn.execute("VACUUM tenant_keys")
        except psycopg.Error:
            pass  # the rows are deleted and committed; reclaiming their space is best effort

    def wait_for_change(self, timeout: float) -> None:
        """Wake on NOTIFY, or after ``timeout`` (the poll fallback)."""
        deadline = time.monotonic() + timeout
        try:
            if self._listener is None or self._listener.closed:
                self._listener = psycopg.connect(self._conninfo, autocommit=True,
                                                 connect_timeout=max(1, int(timeout)))
                self._listener.execute(f"LISTEN {CHANNEL}")
            for _ in self._listener.notifies(timeout=timeout, stop_after=1):
                break
        except psycopg.Error:
            if self._listener is not None:
                self._listener.close()
            self._listener = None
            time.sleep(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        self._pool.close()


class PostgresStore(SqlRegistry):
    def __init__(self, conninfo: str, *, pool_size: int = 4, clock: Clock | None = None, create: bool = True) -> None:
        super().__init__(PostgresBackend(conninfo, pool_size=pool_size, create=create), clock=clock)


def open_postgres(url: str, *, create: bool = True, clock: Clock | None = None) -> PostgresStore:
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ConfigurationError(f"bad PostgreSQL registry URL: {exc}") from None
    return PostgresStore(url, create=create, clock=clock)


def _redacted(conninfo: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        parts = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "postgresql://…"
    host, port, dbname, user = (parts.get(k, "") for k in ("host", "port", "dbname", "user"))
    return f"postgresql://{user}@{host}{':' + str(port) if port else ''}/{dbname}"
