from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from tenantgate.clock import FakeClock
from tenantgate.engines.keys import KeyEngine
from tenantgate.errors import FailedPrecondition
from tenantgate.keywrap import MasterKey, tenant_key_factory
from tenantgate.registry.records import RegistryStore
from tenantgate.registry.sqlite import SQLiteStore
from tenantgate.snapshot import Snapshot, SnapshotHolder, compile_all
from tenantgate.sync import lastgood
from tenantgate.sync.syncer import Syncer
from tests.conftest import manifests, tenant_doc


def compiled(snapshot: Snapshot) -> Snapshot:
    """``snapshot`` with every tenant compiled, as a server compiles the ones a call needs before deciding."""
    compile_all(snapshot.tenants.values())
    return snapshot


async def test_incremental_sync_reuses_unchanged_tenants(store: RegistryStore, master_key: MasterKey) -> None:
    store.apply(manifests({"acme": tenant_doc("acme"), "globex": tenant_doc("globex")}))
    holder = SnapshotHolder()
    syncer = Syncer(store, holder, master_key)
    first = compiled(await syncer.sync_once())
    assert first.revision == 1 and set(first.tenants) == {"acme", "globex"}
    assert await syncer.sync_once() is first  # nothing changed, nothing rebuilt

    store.apply(manifests({"acme": tenant_doc("acme", plan="gold"), "globex": tenant_doc("globex")}))
    second = await syncer.sync_once()
    assert second.revision == 2 and holder.current is second
    assert second.tenants["acme"].spec.plan == "gold"
    assert second.tenants["globex"] is first.tenants["globex"]
    assert first.tenants["acme"].spec.plan == ""  # the old snapshot is untouched

    store.apply(manifests({"acme": tenant_doc("acme", plan="gold"), "globex": tenant_doc("globex", state="Suspended")}))
    third = await syncer.sync_once()
    assert third.tenants["acme"] is second.tenants["acme"]
    assert third.tenants["globex"].state.value == "Suspended"


async def test_keys_are_unwrapped_into_the_snapshot(store: RegistryStore, master_key: MasterKey) -> None:
    keys = {"purposes": ["data"], "readers": ["service:storage"]}
    store.apply(manifests({"acme": tenant_doc("acme", keys=keys)}), key_factory=tenant_key_factory(master_key))
    snapshot = compiled(await Syncer(store, SnapshotHolder(), master_key).sync_once())
    (key,) = snapshot.tenants["acme"].keys["data"]
    assert len(key.material) == 32 and not key.unavailable
    assert key.material.hex() not in repr(key)
    without = compiled(await Syncer(store, SnapshotHolder(), None).sync_once())
    assert without.tenants["acme"].keys["data"][0].unavailable


async def test_waiting_for_a_revision(store: RegistryStore) -> None:
    holder = SnapshotHolder()
    syncer = Syncer(store, holder, None, interval=0.01)
    store.apply(manifests({"acme": tenant_doc("acme")}))
    task = asyncio.create_task(syncer.run())
    try:
        assert (await holder.wait_for_revision(1, 2.0)) is not None
        assert await holder.wait_for_revision(5, 0.05) is None
        store.apply(manifests({"acme": tenant_doc("acme", plan="x")}))
        waited = await holder.wait_for_revision(2, 2.0)
        assert waited is not None and waited.tenants["acme"].spec.plan == "x"
    finally:
        task.cancel()


# -- the last-known-good file ------------------------------------------------------------------------------


def registry_at(path: Path, revision: int, tenant_id: str = "acme") -> SQLiteStore:
    """A SQLite registry at ``revision``, one apply per revision."""
    store = SQLiteStore(path)
    for plan in range(revision):
        store.apply(manifests({tenant_id: tenant_doc(tenant_id, plan=f"p{plan + 1}")}))
    assert store.current_revision() == revision
    return store


async def save_from(store: SQLiteStore, snapshot_file: Path, *, replace: bool = False) -> None:
    """A syncer's first sync from ``store`` with ``snapshot_file``, which it saves to when it may."""
    syncer = Syncer(store, SnapshotHolder(), None, clock=FakeClock(), snapshot_file=snapshot_file,
                    replace_snapshot_file=replace)
    await syncer.sync_once()


def holds(snapshot_file: Path) -> lastgood.Held | None:
    return lastgood.identify(snapshot_file)


async def test_the_file_follows_its_registry_forward(tmp_path: Path) -> None:
    snapshot_file = tmp_path / "last-known-good.json"
    store = registry_at(tmp_path / "registry.db", 1)
    registry_id = store.load().registry_id
    await save_from(store, snapshot_file)
    assert holds(snapshot_file) == lastgood.Held(registry_id, 1)
    store.apply(manifests({"acme": tenant_doc("acme", plan="later")}))
    await save_from(store, snapshot_file)
    assert holds(snapshot_file) == lastgood.Held(registry_id, 2)


async def test_an_older_revision_replaces_the_file_only_when_told(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    snapshot_file = tmp_path / "last-known-good.json"
    live = registry_at(tmp_path / "registry.db", 1)
    live.close()  # checkpointed into the file: a complete backup is a copy of it
    shutil.copy(tmp_path / "registry.db", tmp_path / "backup.db")
    live.apply(manifests({"acme": tenant_doc("acme", plan="after the backup")}))
    registry_id = live.load().registry_id
    await save_from(live, snapshot_file)
    saved = snapshot_file.read_bytes()

    restored = SQLiteStore(tmp_path / "backup.db")  # the same registry, back at revision 1
    assert restored.load().registry_id == registry_id
    await save_from(restored, snapshot_file)
    assert snapshot_file.read_bytes() == saved
    assert "behind the file's revision 2: was it restored from a backup?" in caplog.text
    assert "--replace-snapshot-file" in caplog.text

    await save_from(restored, snapshot_file, replace=True)
    assert holds(snapshot_file) == lastgood.Held(registry_id, 1)


async def test_another_registry_replaces_the_file_only_when_told(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    snapshot_file = tmp_path / "last-known-good.json"
    first = registry_at(tmp_path / "first.db", 1)
    await save_from(first, snapshot_file)
    saved = snapshot_file.read_bytes()

    other = registry_at(tmp_path / "other.db", 3, tenant_id="globex")  # ahead, but another registry
    other_id = other.load().registry_id
    assert other_id != first.load().registry_id
    await save_from(other, snapshot_file)
    assert snapshot_file.read_bytes() == saved
    assert f"this server follows another registry, {other_id}" in caplog.text

    await save_from(other, snapshot_file, replace=True)
    assert holds(snapshot_file) == lastgood.Held(other_id, 3)


async def test_a_kept_file_removed_as_the_log_advises_is_written_again(tmp_path: Path) -> None:
    snapshot_file = tmp_path / "last-known-good.json"
    await save_from(registry_at(tmp_path / "first.db", 1), snapshot_file)
    other = registry_at(tmp_path / "other.db", 1)
    clock = FakeClock()
    syncer = Syncer(other, SnapshotHolder(), None, clock=clock, snapshot_file=snapshot_file)
    await syncer.sync_once()
    assert holds(snapshot_file) != lastgood.Held(other.load().registry_id, 1)
    snapshot_file.unlink()
    clock.advance(5.0)
    await syncer.sync_once()
    assert holds(snapshot_file) == lastgood.Held(other.load().registry_id, 1)


async def test_a_file_of_an_older_format_is_replaced(tmp_path: Path) -> None:
    snapshot_file = tmp_path / "last-known-good.json"
    snapshot_file.write_text(json.dumps({"format": 2, "revision": 9, "saved_at": 1.0, "tenants": [], "keys": []}))
    store = registry_at(tmp_path / "registry.db", 1)
    await save_from(store, snapshot_file)
    assert holds(snapshot_file) == lastgood.Held(store.load().registry_id, 1)


async def test_a_cold_start_keeps_the_key_version_floor(tmp_path: Path, master_key: MasterKey) -> None:
    snapshot_file = tmp_path / "last-known-good.json"
    store = SQLiteStore(tmp_path / "registry.db")
    keys = {"purposes": ["data"], "readers": ["service:storage"]}
    store.apply(manifests({"acme": tenant_doc("acme", keys=keys)}), key_factory=tenant_key_factory(master_key))
    store.rotate_key("acme", "data", key_factory=tenant_key_factory(master_key))
    store.update_key("acme", "data", min_decryption_version=2)
    await Syncer(store, SnapshotHolder(), master_key, clock=FakeClock(), snapshot_file=snapshot_file).sync_once()

    # Cold, with no registry to read: the snapshot comes from the file alone.
    holder = SnapshotHolder()
    missing = SQLiteStore(tmp_path / "missing.db", create=False)
    task = asyncio.create_task(Syncer(missing, holder, master_key, interval=0.01, clock=FakeClock(),
                                      snapshot_file=snapshot_file).run())
    try:
        snapshot = await holder.wait_for_revision(3, 5.0)
    finally:
        task.cancel()
    assert snapshot is not None and snapshot.stale
    compiled(snapshot)
    engine = KeyEngine()
    with pytest.raises(FailedPrecondition, match="below the min_decryption_version"):
        engine.get(snapshot, "service:storage", "acme", "data", version=1)
    assert engine.get(snapshot, "service:storage", "acme", "data").version == 2
    assert not (tmp_path / "missing.db").exists()


async def test_a_registry_replaced_under_its_address_is_read_afresh(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    registry_at(path, 1, tenant_id="acme").close()
    holder = SnapshotHolder()
    syncer = Syncer(SQLiteStore(path), holder, None, clock=FakeClock())
    assert set((await syncer.sync_once()).tenants) == {"acme"}
    registry_at(tmp_path / "other.db", 3, tenant_id="globex").close()
    os.replace(tmp_path / "other.db", path)  # another registry, further on, at the same address
    assert set((await syncer.sync_once()).tenants) == {"globex"}


@pytest.mark.parametrize("stored", ["[]", "{\"spec\": 1}", "not json", "null"])
async def test_a_stored_document_of_any_shape_makes_its_tenant_unloadable_not_an_error(
        sqlite_store: SQLiteStore, registry_path: Path, stored: str) -> None:
    import sqlite3

    sqlite_store.apply(manifests({"acme": tenant_doc("acme"), "globex": tenant_doc("globex")}))
    with sqlite3.connect(registry_path) as db:
        db.execute("UPDATE tenants SET document = ? WHERE id = 'acme'", (stored,))
    db.close()
    snapshot = await Syncer(sqlite_store, SnapshotHolder(), None).sync_once()
    acme = snapshot.tenants["acme"]
    assert acme.compile() is None and "cannot be loaded" in acme.problem
    with pytest.raises(FailedPrecondition):
        acme.compiled  # noqa: B018
    assert snapshot.tenants["globex"].compile() is not None


def commit_unreadable_revision(registry_path: Path, tenant_id: str, revision: int, state: str = "") -> None:
    """A revision of ``tenant_id`` this version cannot read (as a newer tenantgate or a hand edit writes one)."""
    import sqlite3

    with sqlite3.connect(registry_path) as db:
        (text,) = db.execute("SELECT document FROM tenants WHERE id = ?", (tenant_id,)).fetchone()
        broken = json.loads(text)
        broken["spec"]["quotas"] = {"api": {"rate": "5/fortnight"}}
        broken["spec"]["state"] = state or broken["spec"]["state"]
        db.execute("UPDATE tenants SET document = ?, revision = ?, state = ? WHERE id = ?",
                   (json.dumps(broken), revision, broken["spec"]["state"], tenant_id))
        db.execute("INSERT INTO changes (revision, tenant_id, action, digest, actor, committed_at)"
                   " VALUES (?, ?, 'update', '', 'test', 0)", (revision, tenant_id))
        db.execute("UPDATE meta SET value = ? WHERE key = 'revision'", (str(revision),))
    db.close()


@pytest.mark.parametrize("asked_before", [True, False], ids=["compiled", "never asked for"])
async def test_a_revision_that_does_not_compile_leaves_the_last_one_that_does_served(
        sqlite_store: SQLiteStore, registry_path: Path, caplog: pytest.LogCaptureFixture, asked_before: bool) -> None:
    sqlite_store.apply(manifests({"acme": tenant_doc("acme", plan="v1")}))
    holder = SnapshotHolder()
    syncer = Syncer(sqlite_store, holder, None)
    first = await syncer.sync_once()
    served = compiled(first).tenants["acme"] if asked_before else first.tenants["acme"]
    commit_unreadable_revision(registry_path, "acme", 2)
    failures = REGISTRY.get_sample_value("tenantgate_tenant_compile_failures_total") or 0.0

    second = await syncer.sync_once()
    assert second.revision == 2 and second.tenants["acme"] is served and served.spec.plan == "v1"
    assert REGISTRY.get_sample_value("tenantgate_tenant_compile_failures_total") == failures + 1
    assert "bad rate '5/fortnight'" in caplog.text
    assert "serving tenant acme at revision 1, its last revision that compiles, instead of revision 2" in caplog.text

    # The next revision that compiles replaces it.
    sqlite_store.apply(manifests({"acme": tenant_doc("acme", plan="v3")}))
    third = await syncer.sync_once()
    assert third.tenants["acme"].revision == 3 and third.tenants["acme"].spec.plan == "v3"


@pytest.mark.parametrize("state", ["Suspended", "Archived"])
async def test_a_change_of_state_takes_effect_even_when_its_revision_does_not_compile(
        sqlite_store: SQLiteStore, registry_path: Path, master_key: MasterKey, state: str) -> None:
    keys = {"purposes": ["data"], "readers": ["service:storage"]}
    sqlite_store.apply(manifests({"acme": tenant_doc("acme", keys=keys)}), key_factory=tenant_key_factory(master_key))
    syncer = Syncer(sqlite_store, SnapshotHolder(), master_key)
    compiled(await syncer.sync_once())
    commit_unreadable_revision(registry_path, "acme", 3, state)
    snapshot = await syncer.sync_once()
    acme = snapshot.tenants["acme"]
    assert acme.revision == 3 and acme.state.value == state and acme.built is None and acme.problem
    with pytest.raises(FailedPrecondition, match="cannot be loaded"):
        KeyEngine().get(snapshot, "service:storage", "acme", "data")  # no key served past the change
