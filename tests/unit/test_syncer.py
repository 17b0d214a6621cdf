from __future__ import annotations

import asyncio

from tenantgate.keywrap import MasterKey, tenant_key_factory
from tenantgate.registry.store import RegistryStore
from tenantgate.snapshot import SnapshotHolder
from tenantgate.sync.syncer import Syncer
from tests.conftest import tenant_doc


async def test_incremental_sync_reuses_unchanged_tenants(store: RegistryStore, master_key: MasterKey) -> None:
    store.apply({"acme": tenant_doc("acme"), "globex": tenant_doc("globex")})
    holder = SnapshotHolder()
    syncer = Syncer(store, holder, master_key)
    first = await syncer.sync_once()
    assert first.revision == 1 and set(first.tenants) == {"acme", "globex"}
    assert await syncer.sync_once() is first  # nothing changed, nothing rebuilt

    store.apply({"acme": tenant_doc("acme", plan="gold"), "globex": tenant_doc("globex")})
    second = await syncer.sync_once()
    assert second.revision == 2 and holder.current is second
    assert second.tenants["acme"].spec.plan == "gold"
    assert second.tenants["globex"] is first.tenants["globex"]
    assert first.tenants["acme"].spec.plan == ""  # the old snapshot is untouched

    store.apply({"acme": tenant_doc("acme", plan="gold"), "globex": tenant_doc("globex", state="Suspended")})
    third = await syncer.sync_once()
    assert third.tenants["acme"] is second.tenants["acme"]
    assert third.tenants["globex"].state.value == "Suspended"


async def test_keys_are_unwrapped_into_the_snapshot(store: RegistryStore, master_key: MasterKey) -> None:
    keys = {"purposes": ["data"], "readers": ["service:storage"]}
    store.apply({"acme": tenant_doc("acme", keys=keys)}, key_factory=tenant_key_factory(master_key))
    snapshot = await Syncer(store, SnapshotHolder(), master_key).sync_once()
    (key,) = snapshot.tenants["acme"].keys["data"]
    assert len(key.material) == 32 and not key.unavailable
    assert key.material.hex() not in repr(key)
    without = await Syncer(store, SnapshotHolder(), None).sync_once()
    assert without.tenants["acme"].keys["data"][0].unavailable


async def test_waiting_for_a_revision(store: RegistryStore) -> None:
    holder = SnapshotHolder()
    syncer = Syncer(store, holder, None, interval=0.01)
    store.apply({"acme": tenant_doc("acme")})
    task = asyncio.create_task(syncer.run())
    try:
        assert (await holder.wait_for_revision(1, 2.0)) is not None
        assert await holder.wait_for_revision(5, 0.05) is None
        store.apply({"acme": tenant_doc("acme", plan="x")})
        waited = await holder.wait_for_revision(2, 2.0)
        assert waited is not None and waited.tenants["acme"].spec.plan == "x"
    finally:
        task.cancel()
