"""Plan documents in the registry, on SQLite and PostgreSQL: a plan change is one revision for every tenant on it
(one audit entry that lists them), a dry run names every tenant whose effective quotas change, a plan still named
is never deleted, and concurrent writers never leave a tenant behind its plan."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tenantgate.errors import FailedPrecondition
from tenantgate.registry.backends import open_store
from tenantgate.registry.manifest import Manifest, ManifestError, manifests_from_documents
from tenantgate.registry.records import NAMED_TENANTS, RegistryStore
from tenantgate.registry.sqlite import SQLiteStore
from tenantgate.snapshot import SnapshotHolder
from tenantgate.sync import lastgood
from tenantgate.sync.syncer import Syncer
from tests.conftest import race_with_follower, tenant_doc

VIEWER = {"viewer": {"allow": ["read:*"]}}


def plan_doc(plan_id: str, rate: str = "100/minute", roles: dict[str, Any] | None = None,
             **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "tenantgate/v1", "kind": "Plan", "metadata": {"id": plan_id},
            "spec": {"quotas": {"api": {"rate": rate}}, "access": {"roles": VIEWER if roles is None else roles},
                     **spec}}


def docs(*documents: dict[str, Any]) -> list[Manifest]:
    return manifests_from_documents(documents)


def bound(tenant_id: str, plan: str, **spec: Any) -> dict[str, Any]:
    """A tenant on ``plan`` whose binding names the plan's role."""
    return tenant_doc(tenant_id, plan=plan, access={"bindings": [{"subject": "user:a", "roles": ["viewer"]}]}, **spec)


def effective_rate(store: RegistryStore, tenant_id: str) -> int:
    """What a server would serve: the tenant's api quota in a snapshot built from the store."""
    view = Syncer(store, SnapshotHolder(), None).build_full().tenants[tenant_id]
    compiled = view.compile()
    assert compiled is not None, view.problem
    return compiled.spec.quotas["api"].limit


def test_a_plan_change_moves_every_tenant_on_it_to_one_revision_with_one_audit_entry(store: RegistryStore) -> None:
    tenants = [bound("acme", "pro"), bound("globex", "pro", quotas={"api": {"rate": "7/minute"}}),
               tenant_doc("initech", plan="starter")]
    created = store.apply(docs(plan_doc("pro"), plan_doc("starter"), *tenants))
    assert [(p.plan_id, p.action, p.tenants) for p in created.plans] == [
        ("pro", "create", ("acme", "globex")), ("starter", "create", ("initech",))]
    assert effective_rate(store, "acme") == 100 and effective_rate(store, "globex") == 7
    entries_before = len(store.audit_entries())

    changed = store.apply(docs(plan_doc("pro", rate="500/minute"), plan_doc("starter"), *tenants))
    assert changed.revision == created.revision + 1 == store.current_revision()
    assert changed.changes == () and [(p.plan_id, p.action, p.tenants) for p in changed.plans] == [
        ("pro", "update", ("acme", "globex"))]
    assert changed.plans[0].differences == ("~ spec.quotas.api.rate: 100/minute -> 500/minute",)
    assert changed.quota_changes == ("acme",)  # globex's own api quota replaces the plan's
    assert [(c.revision, c.tenant_id, c.action) for c in store.changes(created.revision)] == [
        (changed.revision, "acme", "update"), (changed.revision, "globex", "update")]
    state = store.load()
    assert {t: r.revision for t, r in state.tenants.items()} == {
        "acme": changed.revision, "globex": changed.revision, "initech": created.revision}
    assert state.plans["pro"].revision == changed.revision and state.plans["starter"].revision == created.revision
    (entry,) = store.audit_entries()[entries_before:]
    assert (entry.action, entry.tenant_id) == ("plan.update", "")
    assert entry.detail == "plan pro; tenants on it (2): acme, globex"
    assert entry.before_digest and entry.after_digest != entry.before_digest
    assert store.verify_audit().ok
    assert effective_rate(store, "acme") == 500 and effective_rate(store, "globex") == 7
    changes = store.changes_since(created.revision)
    assert set(changes.tenants) == {"acme", "globex"} and set(changes.plans) == {"pro"}


def test_a_dry_run_names_every_tenant_whose_effective_quotas_change_and_changes_nothing(store: RegistryStore) -> None:
    tenants = [tenant_doc(f"t{i}", plan="pro") for i in range(5)] + [tenant_doc("own", plan="pro", quotas={
        "api": {"rate": "1/second"}}), tenant_doc("other", plan="free")]
    store.apply(docs(plan_doc("pro"), plan_doc("free"), *tenants))
    revision, entries = store.current_revision(), len(store.audit_entries())
    moved = [tenant_doc("other", plan="pro") if d["metadata"]["id"] == "other" else d for d in tenants]
    dry = store.apply(docs(plan_doc("pro", rate="9/second"), plan_doc("free"), *moved), dry_run=True)
    assert dry.dry_run and dry.changed
    assert dry.quota_changes == ("other", "t0", "t1", "t2", "t3", "t4")
    assert dry.plans[0].tenants == ("other", "own", "t0", "t1", "t2", "t3", "t4")
    assert [(c.tenant_id, c.differences) for c in dry.changes] == [("other", ("~ spec.plan: free -> pro",))]
    assert store.current_revision() == revision and len(store.audit_entries()) == entries
    assert store.load().plans["pro"].document["spec"]["quotas"]["api"]["rate"] == "100/minute"


def test_a_plan_still_named_is_not_deleted_and_nothing_changes(store: RegistryStore) -> None:
    store.apply(docs(plan_doc("pro"), plan_doc("old"), bound("acme", "pro"), tenant_doc("globex", plan="old")))
    revision = store.current_revision()
    with pytest.raises(FailedPrecondition, match=r"plan 'old' cannot be deleted: tenant globex still name"):
        store.apply(docs(plan_doc("pro"), bound("acme", "pro"), tenant_doc("globex", plan="old")), prune=True)
    assert store.current_revision() == revision and set(store.load().plans) == {"pro", "old"}
    # Moving the last tenant off it in the same apply lets it go.
    gone = store.apply(docs(plan_doc("pro"), bound("acme", "pro"), tenant_doc("globex", plan="pro")), prune=True)
    assert [(p.plan_id, p.action) for p in gone.plans] == [("old", "delete")]
    assert set(store.load().plans) == {"pro"}
    assert [e.action for e in store.audit_entries()[-3:]] == ["tenant.update", "plan.delete", "apply"]


def test_a_deleted_tenant_does_not_hold_its_plan(store: RegistryStore) -> None:
    store.apply(docs(plan_doc("pro"), bound("gone", "pro", state="Archived", retention="0s")))
    store.transition("gone", "Deleted")
    result = store.apply(docs(plan_doc("pro", rate="5/minute")))
    assert result.plans[0].tenants == ()
    deleted = store.apply(docs(), prune=True)
    assert [(p.plan_id, p.action) for p in deleted.plans] == [("pro", "delete")]
    view = Syncer(store, SnapshotHolder(), None).build_full().tenants["gone"]
    assert view.compile() is not None, view.problem  # its binding named the plan's role: it still loads


def test_bindings_must_name_a_role_of_the_tenant_or_its_plan(store: RegistryStore) -> None:
    with pytest.raises(ManifestError, match=r"document 1: spec.access.bindings\[0\].roles\[0\]: unknown role "
                                            r"'viewer' \(the tenant defines no such role, and no Plan document "
                                            r"defines its plan 'pro'\)"):
        store.apply(docs(bound("acme", "pro")))
    store.apply(docs(plan_doc("pro"), bound("acme", "pro")))
    with pytest.raises(FailedPrecondition, match=r"tenant 'acme' binds role 'viewer' \(spec.access.bindings\[0\]\), "
                                                 r"which plan 'pro' would no longer define"):
        store.apply(docs(plan_doc("pro", roles={})))
    with pytest.raises(ManifestError, match="neither the tenant nor its plan 'pro' defines it"):
        store.apply(docs(plan_doc("pro", roles={}), bound("acme", "pro")))
    assert store.current_revision() == 1


def test_a_plan_name_no_document_defines_is_a_label_until_one_does(store: RegistryStore) -> None:
    quiet = store.apply(docs(tenant_doc("acme", plan="pro"), tenant_doc("legacy", plan="Gold (annual)")))
    assert quiet.warnings == ()  # a registry without Plan documents: plans are labels, as they always were
    created = store.apply(docs(plan_doc("pro", rate="3/second")))
    assert created.plans[0].tenants == ("acme",) and created.quota_changes == ("acme",)
    assert effective_rate(store, "acme") == 3
    warned = store.apply(docs(tenant_doc("globex", plan="enterprise")))
    assert warned.warnings == ("tenant globex names plan 'enterprise', which no Plan document defines: it keeps its "
                               "own fields only",)


def test_a_spec_plan_of_any_length_is_stored_and_never_names_a_plan(store: RegistryStore) -> None:
    """spec.plan is free text a caller chooses: one too long to index (PostgreSQL refuses index rows over ~2.7 kB)
    is stored as a label, not as a plan id."""
    long = "x" * 20_000
    store.apply(docs(plan_doc("pro"), tenant_doc("acme", plan=long)))
    assert store.load().tenants["acme"].document["spec"]["plan"] == long
    assert set(store.changes_since(0).plans) == {"pro"}  # the plan that changed; the tenant's label names none


def test_an_existing_registry_finds_its_tenants_plans_when_upgraded(registry_url: str, store: RegistryStore) -> None:
    """A registry made before Plan documents: its tenants' spec.plan is read into the new column by the migration."""
    store.apply(docs(tenant_doc("acme", plan="pro"), tenant_doc("free-text", plan="Gold (annual)")))
    with store._backend.transaction(write=True) as tx:  # type: ignore[attr-defined]
        tx.run("DROP INDEX tenants_by_plan")
        tx.run("ALTER TABLE tenants DROP COLUMN plan")
        tx.run("DROP TABLE plans")
        tx.run("DELETE FROM schema_migrations WHERE version = 4")
    upgraded = open_store(registry_url)
    try:
        result = upgraded.apply(docs(plan_doc("pro"), plan_doc("Gold")))
        assert [(p.plan_id, p.tenants) for p in result.plans] == [("Gold", ()), ("pro", ("acme",))]
    finally:
        upgraded.close()


def test_concurrent_plan_changes_and_tenant_applies_never_leave_a_tenant_behind(registry_url: str,
                                                                               store: RegistryStore) -> None:
    """Plan updates race tenant creations on other connections, while a syncer follows: every plan change moves
    exactly the tenants created before it, and no snapshot ever shows two tenants on the plan at different rates."""
    store.apply(docs(plan_doc("pro", rate="1/minute")))
    rounds, creators = 12, 3
    errors: list[BaseException] = []
    plan_results: list[tuple[int, tuple[str, ...]]] = []
    created_at: dict[str, int] = {}
    done = threading.Event()
    progress = threading.Condition()  # plan changes keep pace with creations, so that they interleave
    deadline = time.monotonic() + 60

    def change_plan() -> None:
        own = open_store(registry_url)
        try:
            for n in range(2, rounds + 2):
                with progress:
                    progress.wait_for(lambda n=n: len(created_at) >= n or bool(errors),
                                      deadline - time.monotonic())
                result = own.apply(docs(plan_doc("pro", rate=f"{n}/minute")))
                plan_results.append((result.revision, result.plans[0].tenants))
        except BaseException as exc:
            errors.append(exc)
        finally:
            own.close()

    def create(worker: int) -> None:
        own = open_store(registry_url)
        try:
            for n in range(rounds):
                tenant_id = f"w{worker}-{n}"
                revision = own.apply(docs(tenant_doc(tenant_id, plan="pro"))).revision
                with progress:
                    created_at[tenant_id] = revision
                    progress.notify_all()
        except BaseException as exc:
            errors.append(exc)
            with progress:
                progress.notify_all()
        finally:
            own.close()

    def follow() -> None:
        reader = open_store(registry_url)
        syncer = Syncer(reader, SnapshotHolder(), None)
        try:
            snapshot = syncer.build_full()
            while not errors and time.monotonic() < deadline:
                last = done.is_set()
                snapshot = syncer.build_next(snapshot)
                rates = set()
                for view in snapshot.tenants.values():
                    compiled = view.compile()
                    assert compiled is not None, view.problem
                    rates.add(compiled.spec.quotas["api"].limit)
                assert len(rates) <= 1, (snapshot.revision, rates)
                if last:
                    return
        except BaseException as exc:
            errors.append(exc)
        finally:
            reader.close()

    threads = [threading.Thread(target=change_plan, daemon=True),
               *(threading.Thread(target=create, args=(w,), daemon=True) for w in range(creators))]
    follower = threading.Thread(target=follow, daemon=True)
    race_with_follower(threads, follower, done, deadline)
    assert not errors, errors
    assert not any(t.is_alive() for t in [*threads, follower])
    assert sum(1 for _, tenants in plan_results if tenants) >= rounds - 1  # the race was run, not avoided
    for revision, tenants in plan_results:
        assert tenants == tuple(sorted(t for t, at in created_at.items() if at < revision))
        assert {c.tenant_id for c in store.changes(revision - 1) if c.revision == revision} == set(tenants)
    last_plan = max(revision for revision, _ in plan_results)
    assert {t: r.revision for t, r in store.load().tenants.items()} == {
        t: max(at, last_plan) for t, at in created_at.items()}


def test_a_plan_on_many_tenants_names_the_first_of_them_and_counts_them_all(store: RegistryStore) -> None:
    """What one apply reports and audits is bounded however many tenants it changes: a plan on 100,000 tenants
    once made an audit entry and an apply answer of megabytes, past what one Admin API message may hold."""
    many = NAMED_TENANTS + 5
    tenants = [tenant_doc(f"t{i:04d}", plan="pro") for i in range(many)]
    created = store.apply(docs(plan_doc("pro"), *tenants))
    (plan,) = created.plans
    assert plan.tenant_count == many and plan.tenants == tuple(f"t{i:04d}" for i in range(NAMED_TENANTS))
    assert plan.describe().endswith(f"tenants on it ({many}): t0000, t0001, " + ", ".join(
        f"t{i:04d}" for i in range(2, NAMED_TENANTS)) + " and 5 more")
    apply_entry = store.audit_entries(limit=1000)[-1]
    assert apply_entry.action == "apply" and apply_entry.detail.endswith("; and 5 more (each has its own entry)")
    assert apply_entry.detail.count("create t") == NAMED_TENANTS

    changed = store.apply(docs(plan_doc("pro", rate="9/second"), *tenants))
    assert (changed.plans[0].tenant_count, len(changed.plans[0].tenants)) == (many, NAMED_TENANTS)
    assert (changed.quota_change_count, len(changed.quota_changes)) == (many, NAMED_TENANTS)
    entry = store.audit_entries(limit=1000)[-1]
    assert entry.action == "plan.update" and entry.detail == (
        f"plan pro; tenants on it ({many}): {', '.join(plan.tenants)} and 5 more (the change feed at revision "
        f"{changed.revision} names every one)")
    # The change feed names every one.
    assert {c.tenant_id for c in store.changes(created.revision, limit=1000)} == {f"t{i:04d}" for i in range(many)}
    assert store.verify_audit().ok


def test_quotas_written_differently_but_meaning_the_same_are_no_quota_change(store: RegistryStore) -> None:
    """A dry run compares what quotas mean, not how they are written: an omitted burst is the rate, a lease_ttl
    of 1m is 60s, an omitted shadow is false."""
    store.apply(docs(plan_doc("pro", rate="100/minute"),
                     tenant_doc("acme", plan="pro", quotas={"jobs": {"concurrency": 3, "lease_ttl": "1m"}})))
    same = store.apply(docs({"apiVersion": "tenantgate/v1", "kind": "Plan", "metadata": {"id": "pro"},
                             "spec": {"quotas": {"api": {"rate": "100/minute", "burst": 100, "shadow": False}},
                                      "access": {"roles": VIEWER}}},
                            tenant_doc("acme", plan="pro", quotas={"jobs": {"concurrency": 3, "lease_ttl": "60s"}})),
                       dry_run=True)
    assert same.changed and (same.quota_changes, same.quota_change_count) == ((), 0)
    burst = store.apply(docs(plan_doc("pro", rate="100/minute", quotas={"api": {"rate": "100/minute", "burst": 5}})),
                        dry_run=True)
    assert burst.quota_changes == ("acme",)


def test_changes_since_reads_many_changed_tenants_in_a_few_queries(sqlite_store: SQLiteStore) -> None:
    """A plan change lists every tenant on it among the changes: they are read in chunks, not two queries each
    (200,000 round trips for a plan on 100,000 tenants)."""
    keys = {"purposes": ["data", "backups"], "readers": ["service:storage"]}
    tenants = [tenant_doc(f"t{i:04d}", plan="pro", keys=keys) for i in range(1200)]
    sqlite_store.apply(docs(plan_doc("pro"), *tenants), key_factory=lambda t, p, v: (f"{t}/{p}".encode(), "test"))
    revision = sqlite_store.current_revision()
    sqlite_store.apply(docs(plan_doc("pro", rate="9/second")))
    statements: list[str] = []
    sqlite_store._backend._connection().set_trace_callback(statements.append)  # type: ignore[attr-defined]
    changes = sqlite_store.changes_since(revision)
    assert len(statements) < 20, len(statements)
    assert len(changes.tenants) == 1200 and all(record is not None for record in changes.tenants.values())
    assert [(k.purpose, k.version) for k in changes.keys["t0777"]] == [("backups", 1), ("data", 1)]
    assert set(changes.plans) == {"pro"} and changes.plan_ids == {"pro"}


def test_a_plan_change_compiles_only_the_tenants_that_were_compiled_or_changed_themselves(store: RegistryStore) -> None:
    """Compiling every tenant on a plan at once undid the lazy start (100,000 tenants: seconds, and memory as if
    every tenant had been asked for): a tenant changed only through its plan compiles on first use."""
    store.apply(docs(plan_doc("pro"), *(bound(f"t{i}", "pro") for i in range(4))))
    syncer = Syncer(store, SnapshotHolder(), None)
    first = syncer.build_full()
    assert first.tenants["t0"].compile() is not None  # asked for since the start
    store.apply(docs(plan_doc("pro", rate="7/minute"), bound("t1", "pro", features=["beta"]),
                     bound("t9", "pro")))
    second = syncer.build_next(first)
    compiled_now = {tenant_id for tenant_id, view in second.tenants.items() if view.built is not None}
    assert compiled_now == {"t0", "t1", "t9"}  # compiled before, its own document changed, new
    assert second.tenants["t2"].revision == second.revision and second.tenants["t2"].pending
    compiled = second.tenants["t2"].compile()  # first use: against the new plan
    assert compiled is not None and compiled.spec.quotas["api"].limit == 7
    assert {view.spec.quotas["api"].limit for view in second.tenants.values() if view.compile()} == {7}


def test_tenants_on_a_plan_this_server_cannot_read_keep_their_last_revision_that_compiles(
        sqlite_store: SQLiteStore, registry_path: Path) -> None:
    """Laziness never loses the guarantee for a plan that cannot be read: its tenants are compiled before the swap
    and served at their last revision that compiles, whether a call needed them before or not."""
    sqlite_store.apply(docs(plan_doc("pro"), bound("acme", "pro"), bound("globex", "pro")))
    syncer = Syncer(sqlite_store, SnapshotHolder(), None)
    first = syncer.build_full()
    with sqlite3.connect(registry_path) as db:  # a plan revision of a newer tenantgate
        (text,) = db.execute("SELECT document FROM plans WHERE id = 'pro'").fetchone()
        newer = json.loads(text)
        newer["spec"]["quotas"]["api"]["rate"] = "5/fortnight"
        db.execute("UPDATE plans SET document = ?, revision = 2 WHERE id = 'pro'", (json.dumps(newer),))
        db.execute("UPDATE tenants SET revision = 2")
        db.executemany("INSERT INTO changes (revision, tenant_id, action, digest, actor, committed_at)"
                       " VALUES (2, ?, 'update', '', 'test', 0)", [("acme",), ("globex",)])
        db.execute("UPDATE meta SET value = '2' WHERE key = 'revision'")
    db.close()
    second = syncer.build_next(first)
    assert second.revision == 2
    for tenant_id in ("acme", "globex"):
        assert second.tenants[tenant_id] is first.tenants[tenant_id] and second.tenants[tenant_id].revision == 1
        assert second.tenants[tenant_id].built is not None


async def test_the_last_known_good_copy_holds_exactly_the_stored_plans(store: RegistryStore, tmp_path: Path) -> None:
    """A plan created on no tenant, changed with no tenant on it, or deleted reaches the last-known-good file too
    (it used to refresh only the plans a changed tenant names)."""
    store.apply(docs(plan_doc("pro"), plan_doc("old"), bound("acme", "pro")))
    path = tmp_path / "last-good.json"
    syncer = Syncer(store, SnapshotHolder(), None, snapshot_file=path, snapshot_file_interval=0)
    await syncer.sync_once()
    store.apply(docs(plan_doc("pro"), plan_doc("new", rate="3/second"), bound("acme", "pro")), prune=True)
    store.apply(docs(plan_doc("pro"), plan_doc("new", rate="4/second"), bound("acme", "pro")))
    await syncer.sync_once()
    saved, _ = lastgood.load(path)
    assert saved.revision == store.current_revision()
    assert saved.plans == store.load().plans and set(saved.plans) == {"pro", "new"}
