"""The registry on SQLite: the embedded default.

WAL mode lets decision servers read while `apply` writes from another process; `BEGIN IMMEDIATE`
serialises writers, so the revision counter is read and bumped inside the one transaction that writes
the change, and a reader never sees revision N+1 before N.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tenantgate.errors import ConfigurationError, FailedPrecondition, StorageError
from tenantgate.registry.manifest import canonical_json
from tenantgate.registry.plan import plan_changes
from tenantgate.registry.store import (
    ApplyResult,
    ChangeSet,
    KeyFactory,
    KeyRecord,
    RegistryState,
    TenantRecord,
)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tenants (
    id TEXT PRIMARY KEY,
    document TEXT NOT NULL,
    digest TEXT NOT NULL,
    revision INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tenant_keys (
    tenant_id TEXT NOT NULL,
    purpose TEXT NOT NULL,
    version INTEGER NOT NULL,
    wrapped BLOB NOT NULL,
    algorithm TEXT NOT NULL,
    state INTEGER NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (tenant_id, purpose, version)
);
CREATE TABLE IF NOT EXISTS changes (
    revision INTEGER NOT NULL,
    tenant_id TEXT NOT NULL,
    action TEXT NOT NULL,
    digest TEXT NOT NULL,
    actor TEXT NOT NULL,
    committed_at REAL NOT NULL,
    PRIMARY KEY (revision, tenant_id)
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('revision', '0');
"""


def _digest(document: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(document).encode()).hexdigest()


class SQLiteStore:
    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000) -> None:
        """Connects on first use, and again after a failure, so a server can start (NOT_SERVING) while
        the file is unreadable and recover when it is back."""
        self.path = str(path)
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                db.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
                db.execute("PRAGMA journal_mode = WAL")
                # FULL: an acknowledged apply survives a power cut, not only a process crash.
                db.execute("PRAGMA synchronous = FULL")
                db.executescript(_SCHEMA)
                self._check_schema(db)
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        """``sqlite:///abs/path.db`` (absolute) or ``sqlite://relative/path.db``."""
        path = url.removeprefix("sqlite://")
        if not path:
            raise ConfigurationError(f"registry URL {url!r} names no file; expected sqlite:///path/registry.db")
        return cls(path)

    def _check_schema(self, db: sqlite3.Connection) -> None:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                             (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise ConfigurationError(f"the registry at {self.path} has schema version {row[0]}, newer than "
                                     f"this tenantgate understands ({SCHEMA_VERSION}); upgrade tenantgate")

    @contextmanager
    def _transaction(self, mode: str = "DEFERRED") -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                db = self._connection()
                db.execute(f"BEGIN {mode}")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._disconnect()
                raise StorageError(f"SQLite registry {self.path}: {exc}") from exc

    def _disconnect(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def close(self) -> None:
        with self._lock:
            self._disconnect()

    def current_revision(self) -> int:
        with self._transaction() as db:
            return self._revision(db)

    @staticmethod
    def _revision(db: sqlite3.Connection) -> int:
        return int(db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])

    def load(self) -> RegistryState:
        with self._transaction() as db:
            revision = self._revision(db)
            tenants = {row[0]: self._tenant(row) for row in db.execute(
                "SELECT id, document, digest, revision FROM tenants")}
            keys = self._keys(db, None)
        return RegistryState(revision, tenants, keys)

    def changes_since(self, revision: int) -> ChangeSet:
        with self._transaction() as db:
            current = self._revision(db)
            changed = [row[0] for row in db.execute(
                "SELECT DISTINCT tenant_id FROM changes WHERE revision > ?", (revision,))]
            tenants: dict[str, TenantRecord | None] = dict.fromkeys(changed)
            for tenant_id in changed:
                row = db.execute("SELECT id, document, digest, revision FROM tenants WHERE id = ?",
                                 (tenant_id,)).fetchone()
                tenants[tenant_id] = self._tenant(row) if row else None
            keys = self._keys(db, changed)
        return ChangeSet(current, tenants, keys)

    @staticmethod
    def _tenant(row: tuple[Any, ...]) -> TenantRecord:
        return TenantRecord(id=row[0], document=json.loads(row[1]), digest=row[2], revision=int(row[3]))

    @staticmethod
    def _keys(db: sqlite3.Connection, tenant_ids: list[str] | None) -> dict[str, tuple[KeyRecord, ...]]:
        query = ("SELECT tenant_id, purpose, version, wrapped, algorithm, state, created_at FROM tenant_keys"
                 " ORDER BY tenant_id, purpose, version")
        grouped: dict[str, list[KeyRecord]] = {}
        wanted = set(tenant_ids) if tenant_ids is not None else None
        for row in db.execute(query):
            if wanted is not None and row[0] not in wanted:
                continue
            grouped.setdefault(row[0], []).append(KeyRecord(row[0], row[1], int(row[2]), bytes(row[3]),
                                                            row[4], int(row[5]), float(row[6])))
        return {tenant_id: tuple(records) for tenant_id, records in grouped.items()}

    def apply(
        self,
        documents: Mapping[str, Mapping[str, Any]],
        *,
        prune: bool = False,
        dry_run: bool = False,
        actor: str = "cli",
        key_factory: KeyFactory | None = None,
    ) -> ApplyResult:
        # IMMEDIATE takes the write lock before reading, so the plan is made against what it commits over.
        with self._transaction("IMMEDIATE") as db:
            revision = self._revision(db)
            current = {row[0]: json.loads(row[1]) for row in db.execute("SELECT id, document FROM tenants")}
            existing_keys: dict[str, set[str]] = {}
            for tenant_id, purpose in db.execute("SELECT DISTINCT tenant_id, purpose FROM tenant_keys"):
                existing_keys.setdefault(tenant_id, set()).add(purpose)
            changes = plan_changes(current, documents, existing_keys, prune=prune)
            if dry_run or not changes:
                return ApplyResult(revision, tuple(changes), dry_run)
            if key_factory is None and any(change.new_keys for change in changes):
                needing = sorted({c.tenant_id for c in changes if c.new_keys})
                raise FailedPrecondition(
                    f"tenants {', '.join(needing)} declare keys.purposes but no master key is configured "
                    "(set TENANTGATE_MASTER_KEY_FILE or --master-key-file)")
            revision += 1
            now = time.time()
            for change in changes:
                if change.action == "delete":
                    db.execute("DELETE FROM tenants WHERE id = ?", (change.tenant_id,))
                    db.execute("DELETE FROM tenant_keys WHERE tenant_id = ?", (change.tenant_id,))
                    digest = ""
                else:
                    document = documents[change.tenant_id]
                    digest = _digest(document)
                    db.execute(
                        "INSERT INTO tenants (id, document, digest, revision, updated_at) VALUES (?, ?, ?, ?, ?)"
                        " ON CONFLICT (id) DO UPDATE SET document = excluded.document,"
                        " digest = excluded.digest, revision = excluded.revision, updated_at = excluded.updated_at",
                        (change.tenant_id, canonical_json(document), digest, revision, now))
                    for purpose in change.new_keys:
                        assert key_factory is not None
                        wrapped, algorithm = key_factory(change.tenant_id, purpose, 1)
                        db.execute(
                            "INSERT INTO tenant_keys (tenant_id, purpose, version, wrapped, algorithm, state,"
                            " created_at) VALUES (?, ?, 1, ?, ?, 1, ?)",
                            (change.tenant_id, purpose, wrapped, algorithm, now))
                db.execute(
                    "INSERT INTO changes (revision, tenant_id, action, digest, actor, committed_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)", (revision, change.tenant_id, change.action, digest, actor, now))
            db.execute("UPDATE meta SET value = ? WHERE key = 'revision'", (str(revision),))
        return ApplyResult(revision, tuple(changes), dry_run)
