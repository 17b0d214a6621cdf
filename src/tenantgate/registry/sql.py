"""The registry's logic over SQL, written once for every SQL backend.

A backend supplies transactions (a write transaction is serialised with every other writer before its
first read, so revisions are gap-free in commit order), its schema, and its way of announcing a commit.
Every write appends its change-feed rows and its audit entries in the same transaction.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, Protocol

from tenantgate.clock import Clock, SystemClock
from tenantgate.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from tenantgate.model import KeyState, TenantState
from tenantgate.registry.audit import GENESIS, AuditEntry, AuditVerification, entry_hash, verify_chain
from tenantgate.registry.canonical import canonical_json
from tenantgate.registry.lifecycle import check_creation, check_transition
from tenantgate.registry.plan import document_state, plan_changes
from tenantgate.registry.records import (
    ApplyResult,
    ChangeEntry,
    ChangeSet,
    KeyFactory,
    KeyInfo,
    KeyRecord,
    RegistrySettings,
    RegistryState,
    Rewrapper,
    RotationResult,
    TenantChange,
    TenantInfo,
    TenantRecord,
    TransitionResult,
)
from tenantgate.units import parse_duration

DEFAULT_RETENTION = "30d"
_TENANT_COLUMNS = "id, document, digest, revision, state, state_since"
_KEY_COLUMNS = "tenant_id, purpose, version, wrapped, algorithm, state, created_at"
_KEY_SELECT = ("SELECT k.tenant_id, k.purpose, k.version, k.wrapped, k.algorithm, k.state, k.created_at,"
               " COALESCE(p.min_decryption_version, 0) FROM tenant_keys k LEFT JOIN key_policies p"
               " ON p.tenant_id = k.tenant_id AND p.purpose = k.purpose")
_AUDIT_COLUMNS = "seq, at, actor, action, tenant_id, before_digest, after_digest, detail, prev_hash, hash"


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


def digest(document: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(document).encode()).hexdigest()


def _with_state(document: Mapping[str, Any], state: TenantState) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(canonical_json(document))
    copy.setdefault("spec", {})["state"] = state.value
    return copy


def _retention(document: Mapping[str, Any]) -> int:
    return parse_duration(str(document.get("spec", {}).get("retention", DEFAULT_RETENTION)))


def _state(text: str, field: str = "state") -> TenantState:
    try:
        return TenantState(text)
    except ValueError:
        raise InvalidArgument(f"{text!r} is not a tenant state ({', '.join(s.value for s in TenantState)})",
                              field=field) from None


class _Write:
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
            self.tx.run("INSERT INTO changes (revision, tenant_id, action, digest, actor, committed_at)"
                        " VALUES (?, ?, ?, ?, ?, ?)", (revision, tenant_id, action, document_digest, self.actor,
                                                     self.now))
        last = self.tx.rows("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        seq, prev_hash = (int(last[0][0]), str(last[0][1])) if last else (0, GENESIS)
        at = datetime.fromtimestamp(self.now, UTC).isoformat(timespec="microseconds")
        for action, tenant_id, before, after, detail in self._audit:
            seq += 1
            entry = entry_hash(prev_hash, seq, at, self.actor, action, tenant_id, before, after, detail)
            self.tx.run(f"INSERT INTO audit ({_AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (seq, at, self.actor, action, tenant_id, before, after, detail, prev_hash, entry))
            prev_hash = entry
        self.tx.run("UPDATE meta SET value = ? WHERE key = 'revision'", (str(revision),))
        backend.announce(self.tx, revision)
        return revision


class SqlRegistry:
    """A registry store (reader and admin) over any SQL backend."""

    def __init__(self, backend: SqlBackend, *, clock: Clock | None = None) -> None:
        self._backend = backend
        self._clock = clock or SystemClock()

    @property
    def description(self) -> str:
        return self._backend.description

    def close(self) -> None:
        self._backend.close()

    def wait_for_change(self, timeout: float) -> None:
        self._backend.wait_for_change(timeout)

    # -- reading -------------------------------------------------------------------------------------------

    def current_revision(self) -> int:
        with self._backend.transaction(write=False) as tx:
            return self._revision(tx)

    @staticmethod
    def _revision(tx: Tx) -> int:
        return int(tx.rows("SELECT value FROM meta WHERE key = 'revision'")[0][0])

    @staticmethod
    def _registry_id(tx: Tx) -> str:
        return str(tx.rows("SELECT value FROM meta WHERE key = 'registry_id'")[0][0])

    def load(self) -> RegistryState:
        with self._backend.transaction(write=False) as tx:
            revision, registry_id = self._revision(tx), self._registry_id(tx)
            tenants = {row[0]: self._tenant(row) for row in tx.rows(f"SELECT {_TENANT_COLUMNS} FROM tenants")}
            keys = self._keys(tx.rows(f"{_KEY_SELECT} ORDER BY k.tenant_id, k.purpose, k.version"))
        return RegistryState(revision, tenants, keys, registry_id)

    def changes_since(self, revision: int) -> ChangeSet:
        with self._backend.transaction(write=False) as tx:
            current, registry_id = self._revision(tx), self._registry_id(tx)
            changed = [row[0] for row in tx.rows(
                "SELECT DISTINCT tenant_id FROM changes WHERE revision > ? ORDER BY tenant_id", (revision,))]
            tenants: dict[str, TenantRecord | None] = dict.fromkeys(changed)
            keys: dict[str, tuple[KeyRecord, ...]] = {}
            for tenant_id in changed:
                rows = tx.rows(f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE id = ?", (tenant_id,))
                tenants[tenant_id] = self._tenant(rows[0]) if rows else None
                keys.update(self._keys(tx.rows(f"{_KEY_SELECT} WHERE k.tenant_id = ? ORDER BY k.purpose, k.version",
                                               (tenant_id,))))
        return ChangeSet(current, tenants, keys, registry_id)

    def changes(self, after_revision: int, limit: int = 1000) -> list[ChangeEntry]:
        with self._backend.transaction(write=False) as tx:
            rows = tx.rows("SELECT revision, tenant_id, action, digest, actor, committed_at FROM changes"
                           " WHERE revision > ? ORDER BY revision, tenant_id LIMIT ?", (after_revision, limit))
        return [ChangeEntry(int(r[0]), r[1], r[2], r[3], r[4], float(r[5])) for r in rows]

    def get_tenant(self, tenant_id: str) -> TenantInfo:
        with self._backend.transaction(write=False) as tx:
            found = self._infos(tx, tx.rows(f"SELECT {_TENANT_COLUMNS}, created_at, updated_at FROM tenants"
                                            " WHERE id = ?", (tenant_id,)))
        if not found:
            raise NotFound(f"unknown tenant {tenant_id!r}", field="tenant_id")
        return found[0]

    def list_tenants(self, *, state: str = "", labels: Mapping[str, str] | None = None, after: str = "",
                     limit: int = 100) -> list[TenantInfo]:
        if state:
            _state(state)
        wanted = dict(labels or {})
        found: list[TenantInfo] = []
        with self._backend.transaction(write=False) as tx:
            while len(found) < limit:
                query = f"SELECT {_TENANT_COLUMNS}, created_at, updated_at FROM tenants WHERE id > ?"
                params: list[Any] = [after]
                if state:
                    query += " AND state = ?"
                    params.append(state)
                rows = tx.rows(query + " ORDER BY id LIMIT 500", params)
                if not rows:
                    break
                after = rows[-1][0]
                for info in self._infos(tx, rows):
                    tenant_labels = info.record.document.get("metadata", {}).get("labels") or {}
                    if all(tenant_labels.get(k) == v for k, v in wanted.items()):
                        found.append(info)
        return found[:limit]

    def _infos(self, tx: Tx, rows: list[tuple[Any, ...]]) -> list[TenantInfo]:
        infos = []
        for row in rows:
            keys = tuple(KeyInfo(r[0], r[1], int(r[2]), r[3], int(r[4]), float(r[5])) for r in tx.rows(
                "SELECT tenant_id, purpose, version, algorithm, state, created_at FROM tenant_keys"
                " WHERE tenant_id = ? ORDER BY purpose, version", (row[0],)))
            infos.append(TenantInfo(self._tenant(row), keys, float(row[6]), float(row[7])))
        return infos

    def audit_entries(self, *, tenant_id: str = "", after_seq: int = 0, limit: int = 100) -> list[AuditEntry]:
        query = f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE seq > ?"
        params: list[Any] = [after_seq]
        if tenant_id:
            query += " AND tenant_id = ?"
            params.append(tenant_id)
        with self._backend.transaction(write=False) as tx:
            rows = tx.rows(query + " ORDER BY seq LIMIT ?", [*params, limit])
        return [self._audit_entry(row) for row in rows]

    def verify_audit(self) -> AuditVerification:
        with self._backend.transaction(write=False) as tx:
            return verify_chain(self._all_audit(tx))

    def _all_audit(self, tx: Tx) -> Iterator[AuditEntry]:
        after = 0
        while True:
            rows = tx.rows(f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE seq > ? ORDER BY seq LIMIT 1000", (after,))
            if not rows:
                return
            for row in rows:
                yield self._audit_entry(row)
            after = int(rows[-1][0])

    def settings(self) -> RegistrySettings:
        with self._backend.transaction(write=False) as tx:
            return self._settings(tx)

    @staticmethod
    def _settings(tx: Tx) -> RegistrySettings:
        rows = tx.rows("SELECT value FROM meta WHERE key = 'max_tenants'")
        return RegistrySettings(max_tenants=int(rows[0][0]) if rows and rows[0][0] != "" else None)

    @staticmethod
    def _tenant(row: tuple[Any, ...]) -> TenantRecord:
        return TenantRecord(id=row[0], document_json=row[1], digest=row[2], revision=int(row[3]),
                            state=row[4], state_since=float(row[5]))

    @staticmethod
    def _keys(rows: list[tuple[Any, ...]]) -> dict[str, tuple[KeyRecord, ...]]:
        grouped: dict[str, list[KeyRecord]] = {}
        for row in rows:
            grouped.setdefault(row[0], []).append(KeyRecord(row[0], row[1], int(row[2]), bytes(row[3]), row[4],
                                                            int(row[5]), float(row[6]), int(row[7])))
        return {tenant_id: tuple(records) for tenant_id, records in grouped.items()}

    @staticmethod
    def _audit_entry(row: tuple[Any, ...]) -> AuditEntry:
        return AuditEntry(int(row[0]), row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9])

    # -- writing -------------------------------------------------------------------------------------------

    def apply(self, documents: Mapping[str, Mapping[str, Any]], *, prune: bool = False, dry_run: bool = False,
              actor: str = "cli", key_factory: KeyFactory | None = None) -> ApplyResult:
        with self._backend.transaction(write=True) as tx:
            write = _Write(tx, actor, self._clock.now())
            current = self._current_for(tx, documents, prune=prune)
            existing_keys: dict[str, set[str]] = {}
            for tenant_id, purpose in self._select_for(tx, "SELECT DISTINCT tenant_id, purpose FROM tenant_keys",
                                                       "tenant_id", current):
                existing_keys.setdefault(tenant_id, set()).add(purpose)
            changes = plan_changes({t: r.document for t, r in current.items()}, documents, existing_keys,
                                   prune=prune)
            self._check_plan(tx, changes, current, write.now)
            if dry_run or not changes:
                return ApplyResult(write.revision, tuple(changes), dry_run)
            needing = sorted(c.tenant_id for c in changes if c.new_keys)
            if needing and key_factory is None:
                raise FailedPrecondition(f"tenants {', '.join(needing)} declare keys.purposes but no master key is "
                                         "configured (set TENANTGATE_MASTER_KEY_FILE or --master-key-file)")
            for change in changes:
                before = current.get(change.tenant_id)
                if change.action == "delete":
                    assert before is not None
                    self._store_tenant(write, change.tenant_id, _with_state(before.document, TenantState.DELETED),
                                       before)
                    continue
                self._store_tenant(write, change.tenant_id, documents[change.tenant_id], before)
                for purpose in change.new_keys:
                    assert key_factory is not None
                    self._add_key(write, change.tenant_id, purpose, 1, key_factory, "key.create")
            write.audit("apply", detail="; ".join(f"{c.action} {c.tenant_id}" for c in changes))
            revision = write.commit(self._backend)
        if write.destroyed_keys:
            self._backend.after_destroy()
        return ApplyResult(revision, tuple(changes), dry_run)

    def _current_for(self, tx: Tx, documents: Mapping[str, Mapping[str, Any]], *,
                      prune: bool) -> dict[str, TenantRecord]:
        """The stored tenants an apply compares against: those the manifests name, and with ``prune`` the
        live ones they do not name (an apply of one tenant does not read a registry of thousands)."""
        query = f"SELECT {_TENANT_COLUMNS} FROM tenants"
        current = {row[0]: self._tenant(row) for row in self._select_for(tx, query, "id", documents)}
        if prune:
            for row in tx.rows(f"{query} WHERE state <> ?", (TenantState.DELETED.value,)):
                current.setdefault(row[0], self._tenant(row))
        return current

    @staticmethod
    def _select_for(tx: Tx, query: str, column: str, ids: Iterable[str]) -> list[tuple[Any, ...]]:
        wanted = sorted(ids)
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            rows.extend(tx.rows(f"{query} WHERE {column} IN ({', '.join('?' * len(chunk))})", chunk))
        return rows

    def _check_plan(self, tx: Tx, changes: list[TenantChange], current: Mapping[str, TenantRecord],
                    now: float) -> None:
        live_delta = 0
        for change in changes:
            after = _state(change.after_state, "spec.state")
            before = current.get(change.tenant_id)
            if before is None:
                check_creation(change.tenant_id, after)
                live_delta += 1
                continue
            if before.state == TenantState.DELETED.value:
                raise FailedPrecondition(f"tenant {change.tenant_id!r} is Deleted; its id can never be used again",
                                         field="metadata.id")
            check_transition(change.tenant_id, _state(before.state), after, state_since=before.state_since,
                             retention=_retention(before.document), now=now)
            if after is TenantState.DELETED:
                live_delta -= 1
        if live_delta > 0:
            self._check_capacity(tx, live_delta)

    def _check_capacity(self, tx: Tx, adding: int) -> None:
        limit = self._settings(tx).max_tenants
        if limit is None:
            return
        live = int(tx.rows("SELECT COUNT(*) FROM tenants WHERE state <> ?", (TenantState.DELETED.value,))[0][0])
        if live + adding > limit:
            raise ResourceExhausted(f"the registry holds {live} tenants and allows {limit} (max_tenants); "
                                    f"creating {adding} more is refused")

    def _store_tenant(self, write: _Write, tenant_id: str, document: Mapping[str, Any],
                      before: TenantRecord | None) -> None:
        state = document_state(document)
        document_digest = digest(document)
        state_since = write.now if before is None or before.state != state else before.state_since
        write.tx.run(
            "INSERT INTO tenants (id, document, digest, state, state_since, revision, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET document = excluded.document,"
            " digest = excluded.digest, state = excluded.state, state_since = excluded.state_since,"
            " revision = excluded.revision, updated_at = excluded.updated_at",
            (tenant_id, canonical_json(document), document_digest, state, state_since, write.next_revision,
             write.now, write.now))
        before_digest = before.digest if before else ""
        if before is None:
            write.audit("tenant.create", tenant_id, "", document_digest, f"state {state}")
        elif state == TenantState.DELETED.value:
            destroyed = write.tx.rows("SELECT purpose, version FROM tenant_keys WHERE tenant_id = ?"
                                      " ORDER BY purpose, version", (tenant_id,))
            write.tx.run("DELETE FROM tenant_keys WHERE tenant_id = ?", (tenant_id,))
            write.destroyed_keys = write.destroyed_keys or bool(destroyed)
            keys = ", ".join(f"{p} v{v}" for p, v in destroyed) or "none"
            write.audit("tenant.delete", tenant_id, before_digest, document_digest,
                        f"{before.state} -> Deleted; keys destroyed: {keys}")
        elif before.state != state:
            write.audit("tenant.transition", tenant_id, before_digest, document_digest, f"{before.state} -> {state}")
        else:
            write.audit("tenant.update", tenant_id, before_digest, document_digest)
        write.changed(tenant_id, "delete" if state == TenantState.DELETED.value else
                      ("create" if before is None else "update"), document_digest)

    def _add_key(self, write: _Write, tenant_id: str, purpose: str, version: int, key_factory: KeyFactory,
                 action: str) -> KeyInfo:
        wrapped, algorithm = key_factory(tenant_id, purpose, version)
        write.tx.run(f"INSERT INTO tenant_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, 1, ?)",
                     (tenant_id, purpose, version, wrapped, algorithm, write.now))
        write.audit(action, tenant_id, detail=f"{tenant_id}/{purpose}/v{version} ({algorithm})")
        current = write.tx.rows("SELECT digest FROM tenants WHERE id = ?", (tenant_id,))
        write.changed(tenant_id, "update", current[0][0] if current else "")
        return KeyInfo(tenant_id, purpose, version, algorithm, 1, write.now)

    def _stored_tenant(self, tx: Tx, tenant_id: str) -> TenantRecord:
        rows = tx.rows(f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE id = ?", (tenant_id,))
        if not rows:
            raise NotFound(f"unknown tenant {tenant_id!r}", field="tenant_id")
        return self._tenant(rows[0])

    def transition(self, tenant_id: str, state: str, *, actor: str = "cli", force: bool = False,
                   reason: str = "") -> TransitionResult:
        target = _state(state)
        with self._backend.transaction(write=True) as tx:
            write = _Write(tx, actor, self._clock.now())
            before = self._stored_tenant(tx, tenant_id)
            current = _state(before.state)
            if current is target:
                return TransitionResult(write.revision, tenant_id, before.state, target.value)
            retention = _retention(before.document)
            check_transition(tenant_id, current, target, state_since=before.state_since, retention=retention,
                             now=write.now, force=force)
            self._store_tenant(write, tenant_id, _with_state(before.document, target), before)
            if force and target is TenantState.DELETED and write.now < before.state_since + retention:
                write.audit("tenant.force", tenant_id, detail=f"deleted before its retention period ended: "
                            f"{reason or 'no reason given'}")
            revision = write.commit(self._backend)
        if write.destroyed_keys:
            self._backend.after_destroy()
        return TransitionResult(revision, tenant_id, before.state, target.value)

    def rotate_key(self, tenant_id: str, purpose: str, *, actor: str = "cli",
                   key_factory: KeyFactory | None = None) -> RotationResult:
        with self._backend.transaction(write=True) as tx:
            write = _Write(tx, actor, self._clock.now())
            tenant = self._stored_tenant(tx, tenant_id)
            if tenant.state == TenantState.DELETED.value:
                raise FailedPrecondition(f"tenant {tenant_id!r} is Deleted; its keys are destroyed")
            purposes = tenant.document.get("spec", {}).get("keys", {}).get("purposes") or []
            if purpose not in purposes:
                raise NotFound(f"tenant {tenant_id!r} declares no key purpose {purpose!r}", field="purpose")
            if key_factory is None:
                raise FailedPrecondition("rotating a key needs the master key (set TENANTGATE_MASTER_KEY_FILE)")
            latest = tx.rows("SELECT MAX(version) FROM tenant_keys WHERE tenant_id = ? AND purpose = ?",
                             (tenant_id, purpose))[0][0]
            key = self._add_key(write, tenant_id, purpose, int(latest or 0) + 1, key_factory, "key.rotate")
            revision = write.commit(self._backend)
        return RotationResult(revision, key)

    def update_key(self, tenant_id: str, purpose: str, *, version: int = 0, state: int = 0,
                   min_decryption_version: int | None = None, actor: str = "cli") -> int:
        if not state and min_decryption_version is None:
            raise InvalidArgument("nothing to change: give a state or a min_decryption_version", field="state")
        if state and state not in (KeyState.ENABLED, KeyState.DISABLED, KeyState.DESTROYED):
            raise InvalidArgument(f"{state} is not a key state", field="state")
        with self._backend.transaction(write=True) as tx:
            write = _Write(tx, actor, self._clock.now())
            versions = {int(row[0]): int(row[1]) for row in tx.rows(
                "SELECT version, state FROM tenant_keys WHERE tenant_id = ? AND purpose = ?", (tenant_id, purpose))}
            if not versions:
                raise NotFound(f"tenant {tenant_id!r} has no key for purpose {purpose!r}", field="purpose")
            if state:
                current = versions.get(version)
                if current is None:
                    raise NotFound(f"tenant {tenant_id!r} has no version {version} of key {purpose!r}",
                                   field="version")
                key_id = f"{tenant_id}/{purpose}/v{version}"
                if current == KeyState.DESTROYED and state != KeyState.DESTROYED:
                    raise FailedPrecondition(f"key {key_id} is destroyed; it can never be used again",
                                             field="state")
                if current != state:
                    erase = ", wrapped = ?" if state == KeyState.DESTROYED else ""
                    params: list[Any] = [state, *([b""] if erase else []), tenant_id, purpose, version]
                    tx.run(f"UPDATE tenant_keys SET state = ?{erase} WHERE tenant_id = ? AND purpose = ?"
                           " AND version = ?", params)
                    write.destroyed_keys = state == KeyState.DESTROYED
                    write.audit(f"key.{KeyState(state).name.lower()}", tenant_id,
                                detail=f"{key_id}: {KeyState(current).name.lower()} -> {KeyState(state).name.lower()}")
                    write.changed(tenant_id, "update", self._digest_of(tx, tenant_id))
            if min_decryption_version is not None:
                if min_decryption_version > max(versions):
                    raise FailedPrecondition(f"min_decryption_version {min_decryption_version} is above the newest "
                                             f"version of {tenant_id}/{purpose} ({max(versions)})",
                                             field="min_decryption_version")
                before = tx.rows("SELECT min_decryption_version FROM key_policies WHERE tenant_id = ? AND purpose = ?",
                                 (tenant_id, purpose))
                if not before or int(before[0][0]) != min_decryption_version:
                    tx.run("DELETE FROM key_policies WHERE tenant_id = ? AND purpose = ?", (tenant_id, purpose))
                    tx.run("INSERT INTO key_policies (tenant_id, purpose, min_decryption_version) VALUES (?, ?, ?)",
                           (tenant_id, purpose, min_decryption_version))
                    write.audit("key.min_decryption_version", tenant_id,
                                detail=f"{tenant_id}/{purpose}: min_decryption_version "
                                       f"{int(before[0][0]) if before else 0} -> {min_decryption_version}")
                    write.changed(tenant_id, "update", self._digest_of(tx, tenant_id))
            revision = write.commit(self._backend)
        if write.destroyed_keys:
            self._backend.after_destroy()
        return revision

    @staticmethod
    def _digest_of(tx: Tx, tenant_id: str) -> str:
        rows = tx.rows("SELECT digest FROM tenants WHERE id = ?", (tenant_id,))
        return str(rows[0][0]) if rows else ""

    def rotate_due_keys(self, key_factory: KeyFactory, *, actor: str = "rotation") -> list[RotationResult]:
        with self._backend.transaction(write=True) as tx:
            write = _Write(tx, actor, self._clock.now())
            newest = {(row[0], row[1]): (int(row[2]), float(row[3])) for row in tx.rows(
                "SELECT tenant_id, purpose, MAX(version), MAX(created_at) FROM tenant_keys"
                " GROUP BY tenant_id, purpose")}
            rotated = []
            # Only documents that mention rotate_every are parsed: most registries rotate few tenants.
            for row in tx.rows(f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE state <> ? AND document LIKE ?",
                               (TenantState.DELETED.value, "%rotate_every%")):
                tenant = self._tenant(row)
                keys = tenant.document.get("spec", {}).get("keys", {})
                if not keys.get("rotate_every"):
                    continue
                period = parse_duration(str(keys["rotate_every"]))
                for purpose in keys.get("purposes") or []:
                    latest = newest.get((tenant.id, purpose))
                    if latest is not None and latest[1] + period <= write.now:
                        key = self._add_key(write, tenant.id, purpose, latest[0] + 1, key_factory, "key.rotate")
                        rotated.append(key)
            revision = write.commit(self._backend)
        return [RotationResult(revision, key) for key in rotated]

    def rewrap_keys(self, rewrap: Rewrapper, *, actor: str = "cli") -> int:
        with self._backend.transaction(write=True) as tx:
            write = _Write(tx, actor, self._clock.now())
            rows = tx.rows("SELECT tenant_id, purpose, version, wrapped FROM tenant_keys WHERE state <> ?",
                           (int(KeyState.DESTROYED),))
            for tenant_id, purpose, version, wrapped in rows:
                tx.run("UPDATE tenant_keys SET wrapped = ? WHERE tenant_id = ? AND purpose = ? AND version = ?",
                       (rewrap(tenant_id, purpose, int(version), bytes(wrapped)), tenant_id, purpose, version))
                write.changed(tenant_id, "update", self._digest_of(tx, tenant_id))
            write.audit("master_key.rewrap", detail=f"{len(rows)} keys rewrapped under a new master key")
            write.commit(self._backend)
        return len(rows)

    def update_settings(self, settings: RegistrySettings, *, actor: str = "cli") -> RegistrySettings:
        if settings.max_tenants is not None and settings.max_tenants < 0:
            raise InvalidArgument("max_tenants must not be negative", field="max_tenants")
        with self._backend.transaction(write=True) as tx:
            write = _Write(tx, actor, self._clock.now())
            if self._settings(tx) == settings:
                return settings
            value = "" if settings.max_tenants is None else str(settings.max_tenants)
            tx.run("DELETE FROM meta WHERE key = 'max_tenants'")
            tx.run("INSERT INTO meta (key, value) VALUES ('max_tenants', ?)", (value,))
            write.audit("settings.update", detail=f"max_tenants={value or 'unlimited'}")
            write.commit(self._backend)
        return settings
