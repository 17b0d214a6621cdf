"""Follows the registry's change feed and keeps the snapshot holder current.

Polls the revision (cheap: one indexed read), and on a change reads every changed tenant in one
transaction, builds their views beside the current snapshot and swaps one reference.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from tenantgate.clock import Clock, SystemClock
from tenantgate.errors import TenantgateError
from tenantgate.keywrap import MasterKey
from tenantgate.model import KeyState
from tenantgate.registry.manifest import tenant_from_document
from tenantgate.registry.store import KeyRecord, RegistryStore, TenantRecord
from tenantgate.snapshot import (
    KeyVersion,
    Snapshot,
    SnapshotHolder,
    TenantView,
    build_snapshot,
    build_tenant,
    with_changes,
)

log = logging.getLogger("tenantgate.sync")


class Syncer:
    def __init__(
        self,
        store: RegistryStore,
        holder: SnapshotHolder,
        master_key: MasterKey | None,
        *,
        interval: float = 0.2,
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self._holder = holder
        self._master_key = master_key
        self._interval = interval
        self._clock = clock or SystemClock()

    def build_full(self) -> Snapshot:
        """Read the whole registry and build a snapshot of it (blocking)."""
        state = self._store.load()
        views = (self._view(record, state.keys.get(tenant_id, ())) for tenant_id, record in state.tenants.items())
        return build_snapshot(state.revision, [view for view in views if view is not None], self._clock.now())

    def build_next(self, base: Snapshot) -> Snapshot:
        """``base`` brought up to the registry's revision (blocking); ``base`` itself when nothing changed."""
        if self._store.current_revision() == base.revision:
            return base
        changes = self._store.changes_since(base.revision)
        if changes.revision < base.revision:
            log.warning("registry revision went back from %d to %d; rebuilding the snapshot",
                        base.revision, changes.revision)
            return self.build_full()
        changed: dict[str, TenantView | None] = {}
        for tenant_id, record in changes.tenants.items():
            if record is None:
                changed[tenant_id] = None
                continue
            view = self._view(record, changes.keys.get(tenant_id, ()))
            if view is not None:
                changed[tenant_id] = view
        return with_changes(base, changes.revision, changed, self._clock.now())

    async def sync_once(self) -> Snapshot:
        current = self._holder.current
        if current is None:
            snapshot = await asyncio.to_thread(self.build_full)
        else:
            snapshot = await asyncio.to_thread(self.build_next, current)
        if snapshot is not current:
            self._holder.swap(snapshot)
            log.info("snapshot at revision %d (%d tenants)", snapshot.revision, len(snapshot.tenants))
        return snapshot

    async def run(self) -> None:
        """Sync until cancelled; registry errors are logged and retried, the last snapshot stays served."""
        failing = False
        while True:
            try:
                await self.sync_once()
                if failing:
                    log.warning("registry readable again at revision %d", self._holder.current.revision
                                if self._holder.current else 0)
                failing = False
            except TenantgateError as exc:
                if not failing:
                    log.error("cannot read the registry: %s", exc.message)
                failing = True
            await asyncio.sleep(self._interval)

    def _view(self, record: TenantRecord, keys: Iterable[KeyRecord]) -> TenantView | None:
        try:
            spec = tenant_from_document(record.document)
        except TenantgateError as exc:
            # A stored document this version cannot read: leave the tenant out rather than guess.
            log.error("tenant %s at revision %d is not loadable: %s", record.id, record.revision, exc.message)
            return None
        return build_tenant(spec, record.revision, [self._unwrap(key) for key in keys])

    def _unwrap(self, key: KeyRecord) -> KeyVersion:
        material, unavailable = b"", ""
        if self._master_key is None:
            unavailable = "no master key is configured on this server"
        else:
            try:
                material = self._master_key.unwrap(key.wrapped, tenant_id=key.tenant_id, purpose=key.purpose,
                                                   version=key.version)
            except TenantgateError as exc:
                unavailable = exc.message
                log.error("%s", exc.message)
        return KeyVersion(key.tenant_id, key.purpose, key.version, key.algorithm, KeyState(key.state),
                          key.created_at, material, unavailable)
