"""Tenant writes of the SQL registry: apply manifests, and lifecycle transitions."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tenantgate.clock import Clock
from tenantgate.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from tenantgate.model import KeyState, TenantState
from tenantgate.registry.canonical import canonical_json
from tenantgate.registry.ledger import SqlBackend, Tx, Write, digest
from tenantgate.registry.lifecycle import check_creation, check_transition
from tenantgate.registry.manifest import Manifest, PlanDocument, document_plan, stored_retention, with_state
from tenantgate.registry.plan import plan_changes
from tenantgate.registry.plan_writes import plan_effects, write_plans
from tenantgate.registry.records import (
    NAMED_TENANTS,
    ApplyResult,
    KeyFactory,
    KeyInfo,
    KeyRecord,
    RegistrySettings,
    TenantChange,
    TenantRecord,
    TransitionResult,
)
from tenantgate.registry.rows import KEY_COLUMNS, TENANT_COLUMNS, key_row, tenant_from_row, tenant_row


def tenant_state(text: str, field: str = "state") -> TenantState:
    try:
        return TenantState(text)
    except ValueError:
        raise InvalidArgument(f"{text!r} is not a tenant state ({', '.join(s.value for s in TenantState)})",
                              field=field) from None


def stored_tenant(tx: Tx, tenant_id: str) -> TenantRecord:
    rows = tx.rows(f"SELECT {TENANT_COLUMNS} FROM tenants WHERE id = ?", (tenant_id,))
    if not rows:
        raise NotFound(f"unknown tenant {tenant_id!r}", field="tenant_id")
    return tenant_from_row(rows[0])


def stored_digest(tx: Tx, tenant_id: str) -> str:
    """The digest of the tenant's stored document, which a key change's change-feed row names."""
    rows = tx.rows("SELECT digest FROM tenants WHERE id = ?", (tenant_id,))
    return str(rows[0][0]) if rows else ""


def registry_settings(tx: Tx) -> RegistrySettings:
    rows = tx.rows("SELECT value FROM meta WHERE key = 'max_tenants'")
    return RegistrySettings(max_tenants=int(rows[0][0]) if rows and rows[0][0] != "" else None)


def select_for(tx: Tx, query: str, column: str, ids: Iterable[str], order: str = "") -> list[tuple[Any, ...]]:
    """``query`` for the rows whose ``column`` is one of ``ids``, in chunks a backend accepts; with ``order``
    (``ORDER BY`` columns that start with ``column``), in that order."""
    wanted = sorted(ids)
    rows: list[tuple[Any, ...]] = []
    ordered = f" ORDER BY {order}" if order else ""
    for start in range(0, len(wanted), 500):
        chunk = wanted[start:start + 500]
        rows.extend(tx.rows(f"{query} WHERE {column} IN ({', '.join('?' * len(chunk))}){ordered}", chunk))
    return rows


def add_key(write: Write, tenant_id: str, purpose: str, version: int, key_factory: KeyFactory,
            action: str) -> KeyInfo:
    wrapped, algorithm = key_factory(tenant_id, purpose, version)
    key = KeyRecord(tenant_id, purpose, version, wrapped, algorithm, KeyState.ENABLED, write.now)
    write.tx.run(f"INSERT INTO tenant_keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", key_row(key))
    write.audit(action, tenant_id, detail=f"{key.key_id} ({algorithm})")
    write.changed(tenant_id, "update", stored_digest(write.tx, tenant_id))
    return KeyInfo(tenant_id, purpose, version, algorithm, key.state, key.created_at)


class TenantWrites:
    """Mixed into ``SqlRegistry``: its backend and clock."""

    _backend: SqlBackend
    _clock: Clock

    def apply(self, manifests: Sequence[Manifest], *, prune: bool = False, dry_run: bool = False,
              actor: str = "cli", key_factory: KeyFactory | None = None) -> ApplyResult:
        desired = {doc.tenant.id: doc for doc in manifests if not isinstance(doc, PlanDocument)}
        desired_plans = {doc.plan.id: doc for doc in manifests if isinstance(doc, PlanDocument)}
        with self._backend.transaction(write=True) as tx:
            write = Write(tx, actor, self._clock.now())
            current = self._current_for(tx, desired, prune=prune)
            existing_keys: dict[str, set[str]] = {}
            for tenant_id, purpose in select_for(tx, "SELECT DISTINCT tenant_id, purpose FROM tenant_keys",
                                                 "tenant_id", current):
                existing_keys.setdefault(tenant_id, set()).add(purpose)
            changes = plan_changes(current, desired, existing_keys, prune=prune)
            self._check_plan(tx, changes, current, write.now)
            effects = plan_effects(tx, changes, current, desired, desired_plans, prune=prune)
            planned = effects.result(write.revision, tuple(changes), dry_run=dry_run)
            if dry_run or not planned.changed:
                return planned
            needing = sorted(c.tenant_id for c in changes if c.new_keys)
            if needing and key_factory is None:
                raise FailedPrecondition(f"tenants {', '.join(needing)} declare keys.purposes but no master key is "
                                         "configured (set TENANTGATE_MASTER_KEY_FILE or --master-key-file)")
            for change in changes:
                before = current.get(change.tenant_id)
                if change.action == "delete":
                    assert before is not None
                    self._store_tenant(write, change.tenant_id, with_state(before.document, TenantState.DELETED),
                                       TenantState.DELETED, before)
                    continue
                wanted = desired[change.tenant_id]
                self._store_tenant(write, change.tenant_id, wanted.document, wanted.tenant.state, before)
                for purpose in change.new_keys:
                    assert key_factory is not None
                    add_key(write, change.tenant_id, purpose, 1, key_factory, "key.create")
            write_plans(write, effects, desired_plans, {c.tenant_id for c in changes})
            if changes:  # a plan change has its own entry, which names the tenants it changes
                write.audit("apply", detail=_apply_detail(changes))
            revision = write.commit(self._backend)
        if write.destroyed_keys:
            self._backend.after_destroy()
        return dataclasses.replace(planned, revision=revision)

    @staticmethod
    def _current_for(tx: Tx, tenant_ids: Iterable[str], *, prune: bool) -> dict[str, TenantRecord]:
        """The stored tenants an apply compares against: those the manifests name, and with ``prune`` the
        live ones they do not name (an apply of one tenant does not read a registry of thousands)."""
        query = f"SELECT {TENANT_COLUMNS} FROM tenants"
        current = {row[0]: tenant_from_row(row) for row in select_for(tx, query, "id", tenant_ids)}
        if prune:
            for row in tx.rows(f"{query} WHERE state <> ?", (TenantState.DELETED.value,)):
                current.setdefault(row[0], tenant_from_row(row))
        return current

    def _check_plan(self, tx: Tx, changes: list[TenantChange], current: Mapping[str, TenantRecord],
                    now: float) -> None:
        live_delta = 0
        for change in changes:
            after = tenant_state(change.after_state, "spec.state")
            before = current.get(change.tenant_id)
            if before is None:
                check_creation(change.tenant_id, after)
                live_delta += 1
                continue
            if before.state == TenantState.DELETED.value:
                raise FailedPrecondition(f"tenant {change.tenant_id!r} is Deleted; its id can never be used again",
                                         field="metadata.id")
            check_transition(change.tenant_id, tenant_state(before.state), after, state_since=before.state_since,
                             retention=_retention(before, after), now=now)
            if after is TenantState.DELETED:
                live_delta -= 1
        if live_delta > 0:
            self._check_capacity(tx, live_delta)

    @staticmethod
    def _check_capacity(tx: Tx, adding: int) -> None:
        limit = registry_settings(tx).max_tenants
        if limit is None:
            return
        live = int(tx.rows("SELECT COUNT(*) FROM tenants WHERE state <> ?", (TenantState.DELETED.value,))[0][0])
        if live + adding > limit:
            raise ResourceExhausted(f"the registry holds {live} tenants and allows {limit} (max_tenants); "
                                    f"creating {adding} more is refused")

    @staticmethod
    def _store_tenant(write: Write, tenant_id: str, document: Mapping[str, Any], state: TenantState,
                      before: TenantRecord | None) -> None:
        document_digest = digest(document)
        state_since = write.now if before is None or before.state != state.value else before.state_since
        record = TenantRecord(tenant_id, canonical_json(document), document_digest, write.next_revision, state.value,
                              state_since)
        write.tx.run(
            f"INSERT INTO tenants ({TENANT_COLUMNS}, plan, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET document = excluded.document, digest = excluded.digest,"
            " state = excluded.state, state_since = excluded.state_since, revision = excluded.revision,"
            " plan = excluded.plan, updated_at = excluded.updated_at",
            (*tenant_row(record), document_plan(document), write.now, write.now))
        before_digest = before.digest if before else ""
        if before is None:
            write.audit("tenant.create", tenant_id, "", document_digest, f"state {state.value}")
        elif state is TenantState.DELETED:
            destroyed = write.tx.rows("SELECT purpose, version FROM tenant_keys WHERE tenant_id = ?"
                                      " ORDER BY purpose, version", (tenant_id,))
            write.tx.run("DELETE FROM tenant_keys WHERE tenant_id = ?", (tenant_id,))
            write.destroyed_keys = write.destroyed_keys or bool(destroyed)
            keys = ", ".join(f"{p} v{v}" for p, v in destroyed) or "none"
            write.audit("tenant.delete", tenant_id, before_digest, document_digest,
                        f"{before.state} -> Deleted; keys destroyed: {keys}")
        elif before.state != state.value:
            write.audit("tenant.transition", tenant_id, before_digest, document_digest,
                        f"{before.state} -> {state.value}")
        else:
            write.audit("tenant.update", tenant_id, before_digest, document_digest)
        write.changed(tenant_id, "delete" if state is TenantState.DELETED else
                      ("create" if before is None else "update"), document_digest)

    def transition(self, tenant_id: str, state: str, *, actor: str = "cli", force: bool = False,
                   reason: str = "") -> TransitionResult:
        target = tenant_state(state)
        with self._backend.transaction(write=True) as tx:
            write = Write(tx, actor, self._clock.now())
            before = stored_tenant(tx, tenant_id)
            current = tenant_state(before.state)
            if current is target:
                return TransitionResult(write.revision, tenant_id, before.state, target.value)
            retention = _retention(before, target)
            check_transition(tenant_id, current, target, state_since=before.state_since, retention=retention,
                             now=write.now, force=force)
            self._store_tenant(write, tenant_id, with_state(before.document, target), target, before)
            if force and target is TenantState.DELETED and write.now < before.state_since + retention:
                write.audit("tenant.force", tenant_id, detail=f"deleted before its retention period ended: "
                            f"{reason or 'no reason given'}")
            revision = write.commit(self._backend)
        if write.destroyed_keys:
            self._backend.after_destroy()
        return TransitionResult(revision, tenant_id, before.state, target.value)


def _apply_detail(changes: Sequence[TenantChange]) -> str:
    """The apply's audit detail: the first NAMED_TENANTS changes (each tenant's change has its own entry too),
    so that one entry stays far below an Admin API message however many tenants one apply changes."""
    shown = "; ".join(f"{c.action} {c.tenant_id}" for c in changes[:NAMED_TENANTS])
    more = len(changes) - NAMED_TENANTS
    return f"{shown}; and {more} more (each has its own entry)" if more > 0 else shown


def _retention(before: TenantRecord, after: TenantState) -> int:
    """The stored tenant's retention period, which only a deletion reads (parsed only then)."""
    return stored_retention(before.document) if after is TenantState.DELETED else 0
