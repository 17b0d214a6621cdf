"""One contract for every registry store: each test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenantgate.clock import FakeClock
from tenantgate.errors import FailedPrecondition, NotFound, ResourceExhausted
from tenantgate.keywrap import MasterKey, tenant_key_factory
from tenantgate.registry.backends import open_store
from tenantgate.registry.records import RegistrySettings, RegistryStore
from tests.conftest import manifests, race_with_follower, tenant_doc

KEYS = {"purposes": ["data"], "readers": ["service:storage"]}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def timed_store(registry_url: str, clock: FakeClock) -> Iterator[RegistryStore]:
    """The store on a fake clock, for retention periods and scheduled rotation."""
    store = open_store(registry_url, clock=clock)
    yield store
    store.close()


def test_apply_creates_then_is_idempotent(store: RegistryStore) -> None:
    docs = {"acme": tenant_doc("acme"), "globex": tenant_doc("globex")}
    first = store.apply(manifests(docs))
    assert first.revision == 1
    assert [(c.tenant_id, c.action) for c in first.changes] == [("acme", "create"), ("globex", "create")]
    again = store.apply(manifests(docs))
    assert (again.revision, again.changes) == (1, ())
    assert store.current_revision() == 1


def test_update_reports_field_differences_and_bumps_one_revision(store: RegistryStore) -> None:
    store.apply(manifests({"acme": tenant_doc("acme", plan="free")}))
    result = store.apply(manifests({"acme": tenant_doc("acme", plan="pro", features=["sso"])}))
    assert result.revision == 2
    (change,) = result.changes
    assert change.action == "update"
    assert "~ spec.plan: free -> pro" in change.differences
    assert "+ spec.features: ['sso']" in change.differences


def test_dry_run_changes_nothing(store: RegistryStore) -> None:
    result = store.apply(manifests({"acme": tenant_doc("acme")}), dry_run=True)
    assert result.dry_run and result.changes
    assert store.current_revision() == 0
    assert store.load().tenants == {}
    assert store.audit_entries() == []


def test_changes_since_names_every_tenant_changed_after_a_revision(store: RegistryStore) -> None:
    store.apply(manifests({"a1": tenant_doc("a1"), "b1": tenant_doc("b1")}))
    store.apply(manifests({"a1": tenant_doc("a1", plan="x"), "b1": tenant_doc("b1")}))
    store.apply(manifests({"a1": tenant_doc("a1", plan="x"), "b1": tenant_doc("b1", state="Suspended")}))
    changes = store.changes_since(1)
    assert changes.revision == 3
    assert set(changes.tenants) == {"a1", "b1"}
    a1, b1 = changes.tenants["a1"], changes.tenants["b1"]
    assert a1 is not None and a1.document["spec"]["plan"] == "x" and a1.revision == 2
    assert b1 is not None and b1.state == "Suspended" and b1.revision == 3
    assert [(c.revision, c.tenant_id) for c in store.changes(1)] == [(2, "a1"), (3, "b1")]


def test_keys_are_generated_once_and_stored_only_wrapped(store: RegistryStore, master_key: MasterKey) -> None:
    doc = tenant_doc("acme", keys=KEYS)
    with pytest.raises(FailedPrecondition, match="no master key"):
        store.apply(manifests({"acme": doc}))
    assert store.current_revision() == 0
    store.apply(manifests({"acme": doc}), key_factory=tenant_key_factory(master_key))
    (key,) = store.load().keys["acme"]
    material = master_key.unwrap(key.wrapped, tenant_id="acme", purpose="data", version=1)
    assert len(material) == 32 and material not in key.wrapped
    assert store.apply(manifests({"acme": doc}), key_factory=tenant_key_factory(master_key)).changes == ()
    assert store.load().keys["acme"] == (key,)


def test_key_rotation_adds_a_version_and_keeps_the_old(store: RegistryStore, master_key: MasterKey) -> None:
    store.apply(manifests({"acme": tenant_doc("acme", keys=KEYS)}), key_factory=tenant_key_factory(master_key))
    rotated = store.rotate_key("acme", "data", key_factory=tenant_key_factory(master_key))
    assert (rotated.revision, rotated.key.version) == (2, 2)
    assert [k.version for k in store.load().keys["acme"]] == [1, 2]
    assert [k.version for k in store.get_tenant("acme").keys] == [1, 2]
    with pytest.raises(NotFound, match="no key purpose 'logs'"):
        store.rotate_key("acme", "logs", key_factory=tenant_key_factory(master_key))
    with pytest.raises(FailedPrecondition, match="master key"):
        store.rotate_key("acme", "data")
    assert store.audit_entries(tenant_id="acme")[-1].action == "key.rotate"


@pytest.mark.parametrize(("start", "target"), [("Draft", "Archived"), ("Draft", "Suspended"), ("Active", "Archived"),
                                               ("Active", "Deleted"), ("Suspended", "Draft"), ("Archived", "Active")])
def test_illegal_transitions_name_both_states(store: RegistryStore, start: str, target: str) -> None:
    store.apply(manifests({"acme": tenant_doc("acme", state=start)}))
    with pytest.raises(FailedPrecondition, match=f"cannot go from {start} to {target}"):
        store.transition("acme", target)
    with pytest.raises(FailedPrecondition, match=f"cannot go from {start} to {target}"):
        store.apply(manifests({"acme": tenant_doc("acme", state=target)}))
    assert store.current_revision() == 1


def test_the_whole_lifecycle_with_retention(timed_store: RegistryStore, clock: FakeClock,
                                            master_key: MasterKey) -> None:
    store = timed_store
    store.apply(manifests({"acme": tenant_doc("acme", state="Draft", retention="7d", keys=KEYS)}),
                key_factory=tenant_key_factory(master_key))
    for target in ("Active", "Suspended", "Active", "Suspended", "Archived"):
        assert store.transition("acme", target, actor="ops").after == target
    clock.advance(6 * 86400)
    with pytest.raises(FailedPrecondition, match=r"Archived to Deleted for another 1\.0 days"):
        store.transition("acme", "Deleted")
    clock.advance(86400)
    store.transition("acme", "Deleted", actor="ops")
    assert store.get_tenant("acme").record.state == "Deleted"
    assert store.load().keys.get("acme") is None
    actions = [entry.action for entry in store.audit_entries(tenant_id="acme")]
    assert actions == ["tenant.create", "key.create"] + ["tenant.transition"] * 5 + ["tenant.delete"]
    assert "keys destroyed: data v1" in store.audit_entries(tenant_id="acme")[-1].detail


def test_forced_deletion_is_audited_and_the_id_is_never_reused(store: RegistryStore) -> None:
    store.apply(manifests({"acme": tenant_doc("acme", state="Suspended")}))
    store.transition("acme", "Archived")
    with pytest.raises(FailedPrecondition, match="retention"):
        store.transition("acme", "Deleted")
    store.transition("acme", "Deleted", force=True, reason="customer asked for erasure", actor="ops")
    entries = store.audit_entries(tenant_id="acme")
    assert [e.action for e in entries[-2:]] == ["tenant.delete", "tenant.force"]
    assert "customer asked for erasure" in entries[-1].detail and entries[-1].actor == "ops"
    for target in ("Active", "Archived", "Draft"):
        with pytest.raises(FailedPrecondition, match="from Deleted"):
            store.transition("acme", target)
    with pytest.raises(FailedPrecondition, match="can never be used again"):
        store.apply(manifests({"acme": tenant_doc("acme")}))


def test_prune_deletes_only_archived_tenants_past_retention(store: RegistryStore) -> None:
    store.apply(manifests({"acme": tenant_doc("acme"), "old": tenant_doc("old", state="Archived", retention="0s")}))
    assert store.apply(manifests({"acme": tenant_doc("acme")})).changes == ()  # absent tenants are kept without --prune
    pruned = store.apply(manifests({"acme": tenant_doc("acme")}), prune=True)
    assert [(c.tenant_id, c.action) for c in pruned.changes] == [("old", "delete")]
    assert store.get_tenant("old").record.state == "Deleted"
    with pytest.raises(FailedPrecondition, match="cannot go from Active to Deleted"):
        store.apply(manifests({}), prune=True)


def test_max_tenants(store: RegistryStore) -> None:
    store.update_settings(RegistrySettings(max_tenants=2))
    store.apply(manifests({"a1": tenant_doc("a1"), "b1": tenant_doc("b1", state="Archived", retention="0s")}))
    with pytest.raises(ResourceExhausted, match="allows 2"):
        store.apply(manifests({"a1": tenant_doc("a1"), "b1": tenant_doc("b1", state="Archived", retention="0s"),
                     "c1": tenant_doc("c1")}))
    store.transition("b1", "Deleted")  # deleted tenants do not count
    store.apply(manifests({"a1": tenant_doc("a1"), "c1": tenant_doc("c1")}))
    assert store.settings().max_tenants == 2
    assert any(e.action == "settings.update" for e in store.audit_entries())


def test_every_change_is_audited_in_a_verifiable_chain(store: RegistryStore, master_key: MasterKey) -> None:
    factory = tenant_key_factory(master_key)
    store.apply(manifests({"acme": tenant_doc("acme", keys=KEYS), "globex": tenant_doc("globex")}), key_factory=factory,
                actor="alice")
    store.apply(manifests({"acme": tenant_doc("acme", keys=KEYS, plan="gold"), "globex": tenant_doc("globex")}),
                key_factory=factory, actor="bob")
    store.rotate_key("acme", "data", key_factory=factory, actor="carol")
    entries = store.audit_entries()
    assert [(e.actor, e.action, e.tenant_id) for e in entries] == [
        ("alice", "tenant.create", "acme"), ("alice", "key.create", "acme"), ("alice", "tenant.create", "globex"),
        ("alice", "apply", ""), ("bob", "tenant.update", "acme"), ("bob", "apply", ""),
        ("carol", "key.rotate", "acme")]
    update = entries[4]
    assert update.before_digest == entries[0].after_digest and update.after_digest != update.before_digest
    assert all(e.prev_hash == p.hash for p, e in itertools.pairwise(entries))
    verification = store.verify_audit()
    assert verification.ok and verification.checked == 7
    assert [e.seq for e in store.audit_entries(tenant_id="acme", after_seq=2)] == [5, 7]
    assert master_key.unwrap(store.load().keys["acme"][0].wrapped, tenant_id="acme", purpose="data",
                             version=1).hex() not in str(entries)


def test_list_and_get_tenants(store: RegistryStore) -> None:
    docs = {f"t{i:02d}": tenant_doc(f"t{i:02d}", state="Active" if i % 2 else "Suspended") for i in range(12)}
    docs["t05"]["metadata"]["labels"] = {"tier": "gold"}
    store.apply(manifests(docs))
    first = store.list_tenants(limit=5)
    assert [t.record.id for t in first] == ["t00", "t01", "t02", "t03", "t04"]
    rest = store.list_tenants(after=first[-1].record.id, limit=100)
    assert len(rest) == 7
    assert [t.record.id for t in store.list_tenants(state="Active", limit=3)] == ["t01", "t03", "t05"]
    assert [t.record.id for t in store.list_tenants(labels={"tier": "gold"})] == ["t05"]
    assert store.get_tenant("t05").record.document["metadata"]["labels"] == {"tier": "gold"}
    with pytest.raises(NotFound):
        store.get_tenant("nope")


def test_concurrent_writers_are_gap_free_and_a_syncer_ends_with_every_change(
        registry_url: str, store: RegistryStore) -> None:
    writers, per_writer = 4, 8
    errors: list[BaseException] = []
    seen_revisions: list[int] = []
    writing_over = threading.Event()
    # Bounded whatever happens: a failed writer ends the follow at once, and nothing waits past the deadline.
    deadline = time.monotonic() + 60

    def write(worker: int) -> None:
        own = open_store(registry_url)
        try:
            for n in range(per_writer):
                own.apply(manifests({f"w{worker}": tenant_doc(f"w{worker}", plan=str(n))}))
        except BaseException as exc:  # reported below
            errors.append(exc)
            writing_over.set()
        finally:
            own.close()

    def follow() -> None:
        # A follower reading change sets must never see a revision whose predecessor it cannot see.
        reader = open_store(registry_url)
        revision = 0
        try:
            while ((not writing_over.is_set() or revision < writers * per_writer) and not errors
                   and time.monotonic() < deadline):
                changes = reader.changes(revision)
                for change in changes:
                    assert change.revision in (revision, revision + 1), (revision, change.revision)
                    revision = change.revision
                seen_revisions.append(revision)
        except BaseException as exc:
            errors.append(exc)
        finally:
            reader.close()

    threads = [threading.Thread(target=write, args=(w,), daemon=True) for w in range(writers)]
    follower = threading.Thread(target=follow, daemon=True)
    race_with_follower(threads, follower, writing_over, deadline)
    assert not errors, errors
    assert not any(t.is_alive() for t in [*threads, follower]), "writers or follower still running at the deadline"
    assert [c.revision for c in store.changes(0)] == list(range(1, writers * per_writer + 1))
    final = store.load()
    assert {t: r.document["spec"]["plan"] for t, r in final.tenants.items()} == {
        f"w{w}": str(per_writer - 1) for w in range(writers)}
    assert seen_revisions[-1] == writers * per_writer


def test_a_new_registry_opened_by_several_at_once_is_read_by_all(registry_url: str, tmp_path: Path) -> None:
    """A server and an apply started together on a registry that does not exist yet: each waits for the
    other (within the busy timeout), none fails with "database is locked". SQLite: many new files, since
    the race lasts only while a file is new."""
    if registry_url.startswith("sqlite://"):
        urls = [f"sqlite://{tmp_path / f'new-{n}.db'}" for n in range(60)]
    else:
        urls = [registry_url]
    for url in urls:
        stores = [open_store(url) for _ in range(4)]
        together = threading.Barrier(len(stores))
        errors: list[BaseException] = []
        threads = [threading.Thread(target=_read_at_once, args=(opened, together, errors), daemon=True)
                   for opened in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        for opened in stores:
            opened.close()
        assert not errors, (url, errors)
        assert not any(thread.is_alive() for thread in threads)


def _read_at_once(store: RegistryStore, together: threading.Barrier, errors: list[BaseException]) -> None:
    try:
        together.wait(10)
        store.current_revision()
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def test_registry_urls() -> None:
    from tenantgate.errors import ConfigurationError

    for url, message in [("mysql://x", "unsupported registry URL scheme 'mysql'"), ("registry.db", "no scheme"),
                         ("grpc://127.0.0.1:50052", "Admin API address")]:
        with pytest.raises(ConfigurationError, match=message):
            open_store(url)


def raw_execute(registry_url: str, sql: str) -> None:
    """Change the database behind the registry's back."""
    if registry_url.startswith("sqlite://"):
        import sqlite3

        db = sqlite3.connect(registry_url.removeprefix("sqlite://"))
        db.execute(sql)
        db.commit()
        db.close()
    else:
        import psycopg

        with psycopg.connect(registry_url, autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[call-overload]


@pytest.mark.parametrize(("tampering", "broken", "problem"), [
    ("UPDATE audit SET actor = 'mallory' WHERE seq = 2", 2, "content does not match"),
    ("DELETE FROM audit WHERE seq = 3", 3, "entry 3 is missing"),
    ("UPDATE audit SET detail = 'nothing to see', hash = 'f' WHERE seq = 4", 4, "content does not match"),
    # Only the link: entry 3 now claims entry 1 as its predecessor, its own content and hash untouched.
    ("UPDATE audit SET prev_hash = (SELECT hash FROM audit WHERE seq = 1) WHERE seq = 3", 3,
     "link to the previous entry does not match"),
])
def test_audit_verify_names_the_first_entry_edited_behind_the_registrys_back(
        registry_url: str, store: RegistryStore, tampering: str, broken: int, problem: str) -> None:
    for plan in ("a", "b", "c"):
        store.apply(manifests({"acme": tenant_doc("acme", plan=plan)}))
    assert store.verify_audit().ok
    raw_execute(registry_url, tampering)
    verification = store.verify_audit()
    assert (verification.ok, verification.first_broken) == (False, broken)
    assert problem in verification.problem


def test_scheduled_rotation_rotates_each_due_key_once(timed_store: RegistryStore, clock: FakeClock,
                                                      master_key: MasterKey) -> None:
    keys = {"purposes": ["data", "backups"], "readers": ["service:storage"], "rotate_every": "30d"}
    timed_store.apply(manifests({"acme": tenant_doc("acme", keys=keys), "globex": tenant_doc("globex", keys=KEYS)}),
                      key_factory=tenant_key_factory(master_key))
    assert timed_store.rotate_due_keys(tenant_key_factory(master_key)) == []
    clock.advance(30 * 86400 - 1)
    assert timed_store.rotate_due_keys(tenant_key_factory(master_key)) == []  # due in a second
    clock.advance(1)
    rotated = timed_store.rotate_due_keys(tenant_key_factory(master_key))
    assert sorted((r.key.tenant_id, r.key.purpose, r.key.version) for r in rotated) == [
        ("acme", "backups", 2), ("acme", "data", 2)]
    assert timed_store.rotate_due_keys(tenant_key_factory(master_key)) == []  # a second server finds nothing due
    assert [e.actor for e in timed_store.audit_entries(tenant_id="acme")][-2:] == ["rotation", "rotation"]


def test_rewrapping_under_a_new_master_key_loses_nothing(store: RegistryStore, master_key: MasterKey) -> None:
    store.apply(manifests({t: tenant_doc(t, keys=KEYS) for t in ("acme", "globex")}),
                key_factory=tenant_key_factory(master_key))
    store.rotate_key("acme", "data", key_factory=tenant_key_factory(master_key))
    before = {(k.tenant_id, k.version): master_key.unwrap(k.wrapped, tenant_id=k.tenant_id, purpose=k.purpose,
                                                          version=k.version)
              for keys in store.load().keys.values() for k in keys}
    new_master = MasterKey(os.urandom(32))

    def rewrap(tenant_id: str, purpose: str, version: int, wrapped: bytes) -> bytes:
        material = master_key.unwrap(wrapped, tenant_id=tenant_id, purpose=purpose, version=version)
        return new_master.wrap(material, tenant_id=tenant_id, purpose=purpose, version=version)

    assert store.rewrap_keys(rewrap) == 3
    after = {(k.tenant_id, k.version): new_master.unwrap(k.wrapped, tenant_id=k.tenant_id, purpose=k.purpose,
                                                         version=k.version)
             for keys in store.load().keys.values() for k in keys}
    assert after == before
    assert store.audit_entries()[-1].action == "master_key.rewrap"
