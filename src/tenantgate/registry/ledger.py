"""The SQL registry's transactions and their bookkeeping, shared by its readers and writers.

A backend supplies transactions (a write transaction is serialised with every other writer before its
first read, so revisions are gap-free in commit order), its schema, and its way of announcing a commit.
Every write appends its change-feed rows and its audit entries in the same transaction (``Write``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, Protocol

from tenantgate.registry.audit import GENESIS, AuditEntry, entry_hash
from tenantgate.registry.canonical import canonical_json
from tenantgate.registry.records import ChangeEntry
from tenantgate.registry.rows import AUDIT_COLUMNS, CHANGE_COLUMNS, audit_row, change_row


class Tx(Protocol):
    """One open transaction; SQL uses ``?`` placeholders whatever the backend."""

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def run(self, sql: str, params: Sequence[Any] = ()) -> None: ...


class SqlBackend(Protocol):
    description: str

    def transaction(self, *, write: bool) -> AbstractContextManager[Tx]:
        """Read transactions see one consistent snapshot; write transactions hold the writer lock."""
        ...

    def announce(self, tx: Tx, revision: int) -> None:
        """Inside a write transaction: tell followers a new revision is committing."""
        ...

    def after_destroy(self) -> None:
        """After a commit that deleted key material: make the deleted bytes unrecoverable where possible."""
        ...

    def wait_for_change(self, timeout: float) -> None: ...

    def close(self) -> None: ...


class Write:
    """The bookkeeping of one write transaction: change-feed rows and audit entries, committed together
    under the next revision only if something changed."""

    def __init__(self, tx: Tx, actor: str, now: float) -> None:
        self.tx = tx
        self.actor = actor
        self.now = now
        self.revision = int(tx.rows("SELECT value FROM meta WHERE key = 'revision'")[0][0])
        self._feed: dict[str, tuple[str, str]] = {}
        self._audit: list[tuple[str, str, str, str, str]] = []
        self.destroyed_keys = False

    @property
    def next_revision(self) -> int:
        return self.revision + 1

    def changed(self, tenant_id: str, action: str, document_digest: str) -> None:
        self._feed[tenant_id] = (action, document_digest)

    def audit(self, action: str, tenant_id: str = "", before: str = "", after: str = "", detail: str = "") -> None:
        self._audit.append((action, tenant_id, before, after, detail))

    def commit(self, backend: SqlBackend) -> int:
        if not self._feed and not self._audit:
            return self.revision
        revision = self.next_revision
        for tenant_id, (action, document_digest) in self._feed.items():
            change = ChangeEntry(revision, tenant_id, action, document_digest, self.actor, self.now)
            self.tx.run(f"INSERT INTO changes ({CHANGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", change_row(change))
        last = self.tx.rows("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        seq, prev_hash = (int(last[0][0]), str(last[0][1])) if last else (0, GENESIS)
        at = datetime.fromtimestamp(self.now, UTC).isoformat(timespec="microseconds")
        for action, tenant_id, before, after, detail in self._audit:
            seq += 1
            entry = AuditEntry(seq, at, self.actor, action, tenant_id, before, after, detail, prev_hash,
                               entry_hash(prev_hash, seq, at, self.actor, action, tenant_id, before, after, detail))
            self.tx.run(f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", audit_row(entry))
            prev_hash = entry.hash
        self.tx.run("UPDATE meta SET value = ? WHERE key = 'revision'", (str(revision),))
        backend.announce(self.tx, revision)
        return revision


def digest(document: Mapping[str, Any]) -> str:
    """A stored document's digest: of its canonical JSON, so equal documents have equal digests."""
    return hashlib.sha256(canonical_json(document).encode()).hexdigest()
