"""Plan documents in the registry, on SQLite and PostgreSQL: a plan change is one revision for every tenant on it
(one audit entry that lists them), a dry run names every tenant whose effective quotas change, a plan still named
is never deleted, and concurrent writers never leave a tenant behind its plan."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tenantgate.errors import FailedPrecondition
from tenantgate.registry.backends import open_store
from tenantgate.registry.manifest import Manifest, ManifestError, manifests_from_documents
from tenantgate.registry.records import RegistryStore
from tenantgate.snapshot import SnapshotHolder
from tenantgate.sync.syncer import Syncer
from tests.conftest import tenant_doc

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
    assert store.changes_since(0).plans == {}  # the tenants changed name no plan


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
    follower.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    done.set()
    follower.join(max(0.0, deadline - time.monotonic()))
    assert not errors, errors
    assert not any(t.is_alive() for t in [*threads, follower])
    assert sum(1 for _, tenants in plan_results if tenants) >= rounds - 1  # the race was run, not avoided
    for revision, tenants in plan_results:
        assert tenants == tuple(sorted(t for t, at in created_at.items() if at < revision))
        assert {c.tenant_id for c in store.changes(revision - 1) if c.revision == revision} == set(tenants)
    last_plan = max(revision for revision, _ in plan_results)
    assert {t: r.revision for t, r in store.load().tenants.items()} == {
        t: max(at, last_plan) for t, at in created_at.items()}
