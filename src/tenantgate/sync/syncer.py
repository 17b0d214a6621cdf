"""Follows the registry's change feed and keeps the snapshot holder current.

Waits for a change (NOTIFY where the store has it, else the poll interval), reads every changed tenant
in one transaction, builds their views beside the current snapshot and swaps one reference. When the
registry cannot be read it keeps serving what it has and says so (``stale``); started cold while the
registry is down, it serves the last-known-good file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Iterable
from pathlib import Path

from tenantgate import metrics
from tenantgate.clock import Clock, SystemClock
from tenantgate.errors import FailedPrecondition, TenantgateError
from tenantgate.keywrap import KeyProvider
from tenantgate.model import KeyState, TenantState
from tenantgate.registry.manifest import tenant_from_document
from tenantgate.registry.store import KeyRecord, RegistryReader, RegistryState, TenantRecord
from tenantgate.snapshot import (
    CompiledTenant,
    KeyVersion,
    Snapshot,
    SnapshotHolder,
    TenantView,
    build_snapshot,
    compile_tenant,
    with_changes,
)
from tenantgate.sync import lastgood

log = logging.getLogger("tenantgate.sync")


def issuer_urls(document_json: str) -> tuple[str, ...]:
    """The token issuers a stored document trusts, without building the rest of the tenant."""
    if '"tokens"' not in document_json:
        return ()
    issuers = json.loads(document_json).get("spec", {}).get("tokens", {}).get("issuers") or []
    return tuple(i["issuer"] for i in issuers if isinstance(i, dict) and isinstance(i.get("issuer"), str))


class Syncer:
    def __init__(
        self,
        store: RegistryReader,
        holder: SnapshotHolder,
        master_key: KeyProvider | None,
        *,
        interval: float = 0.2,
        clock: Clock | None = None,
        snapshot_file: Path | None = None,
        snapshot_file_interval: float = 5.0,
    ) -> None:
        self._store = store
        self._holder = holder
        self._master_key = master_key
        self._interval = interval
        self._clock = clock or SystemClock()
        self._snapshot_file = snapshot_file
        self._snapshot_file_interval = snapshot_file_interval
        # What the registry holds, mirrored for the last-known-good file (only kept when there is one).
        self._mirror: RegistryState | None = None
        self._from_file = False
        self._saved_revision = -1
        self._saved_at = 0.0

    def build_full(self) -> Snapshot:
        """Read the whole registry and build a snapshot of it (blocking)."""
        state = self._store.load()
        if self._snapshot_file is not None:
            self._mirror = state
        return self._build(state, stale=False)

    def _build(self, state: RegistryState, *, stale: bool) -> Snapshot:
        views = [self._view(record, state.keys.get(tenant_id, ())) for tenant_id, record in state.tenants.items()]
        snapshot = build_snapshot(state.revision, views, self._clock.now())
        return dataclasses.replace(snapshot, stale=True) if stale else snapshot

    def build_next(self, base: Snapshot) -> Snapshot:
        """``base`` brought up to the registry's revision (blocking); ``base`` itself when nothing changed."""
        if self._store.current_revision() == base.revision:
            return base
        changes = self._store.changes_since(base.revision)
        if changes.revision < base.revision:
            log.warning("registry revision went back from %d to %d; rebuilding the snapshot",
                        base.revision, changes.revision)
            return self.build_full()
        changed = {tenant_id: None if record is None else self._view(record, changes.keys.get(tenant_id, ()))
                   for tenant_id, record in changes.tenants.items()}
        if self._mirror is not None:
            tenants = dict(self._mirror.tenants)
            keys = dict(self._mirror.keys)
            for tenant_id, record in changes.tenants.items():
                if record is None:
                    tenants.pop(tenant_id, None)
                else:
                    tenants[tenant_id] = record
                keys.pop(tenant_id, None)
                if changes.keys.get(tenant_id):
                    keys[tenant_id] = changes.keys[tenant_id]
            self._mirror = RegistryState(changes.revision, tenants, keys)
        return with_changes(base, changes.revision, changed, self._clock.now())

    async def sync_once(self) -> Snapshot:
        """One read of the registry; raises when it cannot be read."""
        current = self._holder.current
        if current is None or self._from_file:
            snapshot = await asyncio.to_thread(self.build_full)
            self._from_file = False
        else:
            snapshot = await asyncio.to_thread(self.build_next, current)
            if snapshot is current and current.stale:
                snapshot = dataclasses.replace(current, stale=False)
        self._holder.confirmed_at = self._clock.now()
        if snapshot is not current:
            self._swap(snapshot)
            log.info("snapshot at revision %d (%d tenants)", snapshot.revision, len(snapshot.tenants))
        await self._save_last_good()
        return snapshot

    def _swap(self, snapshot: Snapshot) -> None:
        self._holder.swap(snapshot)
        metrics.SNAPSHOT_REVISION.set(snapshot.revision)
        metrics.SNAPSHOT_STALE.set(1 if snapshot.stale else 0)

    async def _save_last_good(self, *, force: bool = False) -> None:
        if self._snapshot_file is None or self._mirror is None or self._mirror.revision == self._saved_revision:
            return
        now = self._clock.now()
        if not force and now - self._saved_at < self._snapshot_file_interval and self._saved_revision >= 0:
            return
        state = self._mirror
        try:
            await asyncio.to_thread(lastgood.save, self._snapshot_file, state, now)
            self._saved_revision, self._saved_at = state.revision, now
        except OSError as exc:
            log.error("cannot write the last-known-good snapshot %s: %s", self._snapshot_file, exc)

    def _fall_back(self) -> None:
        """The registry cannot be read: keep serving, and say so."""
        current = self._holder.current
        if current is not None:
            if not current.stale:
                self._swap(dataclasses.replace(current, stale=True))
            return
        if self._snapshot_file is None or not self._snapshot_file.exists():
            return
        try:
            state, saved_at = lastgood.load(self._snapshot_file)
        except TenantgateError as exc:
            log.error("%s", exc.message)
            return
        self._mirror = state
        self._saved_revision = state.revision
        self._from_file = True
        self._holder.confirmed_at = saved_at
        self._swap(self._build(state, stale=True))
        log.warning("registry unreachable: serving the last-known-good snapshot at revision %d from %s",
                    state.revision, self._snapshot_file)

    async def run(self) -> None:
        """Sync until cancelled; registry errors are logged and retried, the last snapshot stays served."""
        failing = False
        try:
            while True:
                try:
                    await self.sync_once()
                    if failing:
                        log.warning("registry readable again at revision %d", self._holder.current.revision
                                    if self._holder.current else 0)
                    failing = False
                except TenantgateError as exc:
                    metrics.REGISTRY_ERRORS.inc()
                    if not failing:
                        log.error("cannot read the registry: %s", exc.message)
                    failing = True
                    self._fall_back()
                await asyncio.to_thread(self._store.wait_for_change, self._interval)
        finally:
            await self._save_last_good(force=True)

    def _view(self, record: TenantRecord, keys: Iterable[KeyRecord]) -> TenantView:
        """A view that parses and compiles the tenant when a request first needs it."""
        tenant_id, revision, text, wrapped = record.id, record.revision, record.document_json, tuple(keys)

        def load() -> CompiledTenant:
            try:
                spec = tenant_from_document(json.loads(text))
            except (TenantgateError, ValueError) as exc:
                # A stored document this version cannot read: refuse to decide rather than guess.
                detail = exc.message if isinstance(exc, TenantgateError) else str(exc)
                log.error("tenant %s at revision %d is not loadable: %s", tenant_id, revision, detail)
                raise FailedPrecondition(f"tenant {tenant_id!r} at revision {revision} cannot be loaded by this "
                                         "server; see its log") from None
            return compile_tenant(spec, [self._unwrap(key) for key in wrapped])

        return TenantView(tenant_id, revision, TenantState(record.state), issuer_urls(text), load)

    def _unwrap(self, key: KeyRecord) -> KeyVersion:
        material, unavailable = b"", ""
        if key.state == KeyState.DESTROYED:
            unavailable = "destroyed"
        elif self._master_key is None:
            unavailable = "no master key is configured on this server"
        else:
            try:
                material = self._master_key.unwrap(key.wrapped, tenant_id=key.tenant_id, purpose=key.purpose,
                                                   version=key.version)
            except TenantgateError as exc:
                unavailable = exc.message
                log.error("%s", exc.message)
        return KeyVersion(key.tenant_id, key.purpose, key.version, key.algorithm, KeyState(key.state),
                          key.created_at, material, unavailable, key.min_decryption_version)
