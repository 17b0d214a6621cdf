"""Which tenants a subject may use: one tenant (check_tenant) and all of them, a page at a time (list_tenants),
which always agree, and agree with CheckAccess on isolation."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantgate.engines import tenancy
from tenantgate.engines.access import AccessEngine, AccessRequest, Reason, Undecided
from tenantgate.engines.tenancy import TenantAccess, TenantPage, check_tenant, list_tenants
from tenantgate.engines.tokens import TokenVerifier
from tenantgate.membership import HeldRole
from tenantgate.model import TenantState
from tenantgate.registry.manifest import parse_document
from tenantgate.snapshot import Snapshot, build_snapshot, build_tenant
from tests.conftest import snapshot_of, tenant_doc

ROLES = {"admin": {"allow": ["*"]}, "viewer": {"allow": ["read:*"]}}


def grant(home: str, subject: str) -> dict[str, Any]:
    return {"tenant": home, "subject": subject, "allow": ["read:*"]}


def registry() -> Snapshot:
    return snapshot_of(
        tenant_doc("acme", environments=["dev", "prod"], access={
            "roles": ROLES, "groups": {"support": ["user:carol"]},
            "bindings": [{"subject": "user:alice", "roles": ["admin"]},
                         {"subject": "user:bob", "roles": ["viewer"], "environments": ["dev"]},
                         {"subject": "group:support", "roles": ["viewer"]}]}),
        tenant_doc("globex", environments=["prod"], access={"grants": [grant("acme", "user:alice")]}),
        tenant_doc("hooli", state="Suspended", access={"grants": [grant("acme", "user:alice")]}),
        tenant_doc("initech", state="Draft", access={"grants": [grant("acme", "user:alice")]}),
        tenant_doc("umbrella", state="Deleted", access={"grants": [grant("acme", "user:alice")]}),
        tenant_doc("wayne", environments=["dev"], access={"grants": [grant("acme", "user:bob"),
                                                                     grant("acme", "user:alice"),
                                                                     grant("acme", "user:alice")]}),
        tenant_doc("zeta", state="Suspended", access={"roles": ROLES,
                                                      "bindings": [{"subject": "user:zed", "roles": ["admin"]}]}),
        tenant_doc("yoyo", access={"grants": [grant("zeta", "user:zed")]}),
    )


def page(snapshot: Snapshot, home: str, subject: str, environment: str = "", **options: Any) -> TenantPage:
    found = list_tenants(snapshot, home, subject, environment, **options)
    assert isinstance(found, TenantPage)
    return found


def test_alice_uses_her_home_and_the_tenants_that_grant_her_something() -> None:
    listed = page(registry(), "acme", "user:alice")
    assert [(t.tenant_id, t.allowed, t.reason) for t in listed.tenants] == [
        ("acme", True, Reason.ALLOWED), ("globex", True, Reason.ALLOWED),
        ("hooli", False, Reason.TENANT_NOT_ACTIVE), ("wayne", True, Reason.ALLOWED)]
    assert listed.tenants[0].roles == (HeldRole("admin", "", None),) and listed.tenants[0].grants == ()
    assert listed.tenants[3].grants == ("wayne/grants/1", "wayne/grants/2")
    assert listed.resume_after == ""
    with_inactive = page(registry(), "acme", "user:alice", include_inactive=True)
    assert [t.tenant_id for t in with_inactive.tenants] == ["acme", "globex", "hooli", "initech", "wayne"]
    assert with_inactive.tenants[3].state is TenantState.DRAFT and with_inactive.tenants[3].reason is \
        Reason.TENANT_NOT_ACTIVE


def test_an_environment_counts_only_what_applies_in_it() -> None:
    snapshot = registry()
    assert [t.tenant_id for t in page(snapshot, "acme", "user:alice", "prod").tenants] == ["acme", "globex"]
    assert [t.tenant_id for t in page(snapshot, "acme", "user:alice", "dev").tenants] == ["acme", "wayne"]
    assert [t.tenant_id for t in page(snapshot, "acme", "user:bob", "dev").tenants] == ["acme", "wayne"]
    assert [t.tenant_id for t in page(snapshot, "acme", "user:bob", "prod").tenants] == []
    assert [(t.tenant_id, t.roles) for t in page(snapshot, "acme", "user:bob").tenants] == [
        ("acme", (HeldRole("viewer", "", frozenset({"dev"})),)), ("wayne", ())]
    assert check_tenant(snapshot, "acme", "acme", "user:bob", "prod") == TenantAccess(
        "acme", TenantState.ACTIVE, False, Reason.NO_MATCHING_GRANT)
    assert check_tenant(snapshot, "globex", "acme", "user:alice", "dev") == TenantAccess(
        "globex", TenantState.ACTIVE, False, Reason.UNKNOWN_ENVIRONMENT, (), ("globex/grants/0",))


def test_groups_give_their_members_roles_and_are_never_subjects() -> None:
    snapshot = registry()
    assert [(t.tenant_id, t.roles) for t in page(snapshot, "acme", "user:carol").tenants] == [
        ("acme", (HeldRole("viewer", "group:support", None),))]
    assert page(snapshot, "acme", "group:support").tenants == []
    assert check_tenant(snapshot, "acme", "acme", "group:support").reason is Reason.NO_MATCHING_GRANT


def test_isolation_nothing_crosses_without_a_grant_and_only_from_an_active_home() -> None:
    snapshot = registry()
    assert check_tenant(snapshot, "globex", "acme", "user:bob").reason is Reason.CROSS_TENANT_DENIED
    assert check_tenant(snapshot, "globex", "globex", "user:alice").reason is Reason.NO_MATCHING_GRANT
    assert check_tenant(snapshot, "acme", "globex", "user:alice").reason is Reason.CROSS_TENANT_DENIED
    # zeta is Suspended: its subjects may use no other tenant, though yoyo grants them; the listing says why.
    assert check_tenant(snapshot, "yoyo", "zeta", "user:zed").reason is Reason.CROSS_TENANT_DENIED
    assert [(t.tenant_id, t.reason) for t in page(snapshot, "zeta", "user:zed").tenants] == [
        ("yoyo", Reason.CROSS_TENANT_DENIED), ("zeta", Reason.TENANT_NOT_ACTIVE)]
    assert check_tenant(snapshot, "nowhere", "acme", "user:alice").reason is Reason.TENANT_NOT_FOUND
    assert check_tenant(snapshot, "umbrella", "acme", "user:alice") == TenantAccess(
        "umbrella", TenantState.DELETED, False, Reason.TENANT_NOT_ACTIVE)


def test_pages_follow_one_another_and_each_examines_a_bounded_number(monkeypatch: Any) -> None:
    snapshot = registry()
    first = page(snapshot, "acme", "user:alice", limit=2)
    assert [t.tenant_id for t in first.tenants] == ["acme", "globex"] and first.resume_after == "globex"
    second = page(snapshot, "acme", "user:alice", after="globex", limit=2)
    assert [t.tenant_id for t in second.tenants] == ["hooli", "wayne"] and second.resume_after == ""
    monkeypatch.setattr(tenancy, "MAX_EXAMINED", 2)
    bounded = page(snapshot, "acme", "user:alice", after="acme", limit=10)
    # globex listed; hooli listed; initech (Draft) would be examined next: the page ends, saying where.
    assert [t.tenant_id for t in bounded.tenants] == ["globex", "hooli"] and bounded.resume_after == "hooli"
    short = page(snapshot, "acme", "user:alice", after="globex", limit=10)
    # hooli listed, initech examined and left out (Draft): a short page, and where the next one starts.
    assert [t.tenant_id for t in short.tenants] == ["hooli"] and short.resume_after == "initech"
    rest = page(snapshot, "acme", "user:alice", after="initech", limit=10)
    assert [t.tenant_id for t in rest.tenants] == ["wayne"] and rest.resume_after == ""


def test_a_home_tenant_not_compiled_gives_no_answer_never_a_wrong_one() -> None:
    view = build_tenant(parse_document(tenant_doc("acme")).tenant, 1, compiled=False)
    snapshot = build_snapshot(1, [view], 0.0)
    assert tenancy.to_compile(snapshot, "acme") == [view]
    assert isinstance(list_tenants(snapshot, "acme", "user:alice"), Undecided)
    assert isinstance(check_tenant(snapshot, "acme", "acme", "user:alice"), Undecided)
    view.compile()
    assert tenancy.to_compile(snapshot, "acme") == []
    assert check_tenant(snapshot, "acme", "acme", "user:alice").reason is Reason.NO_MATCHING_GRANT


TENANTS = ["acme", "globex", "initech", "umbrella"]
SUBJECTS = ["user:alice", "user:bob", "service:auditor"]


@st.composite
def documents(draw: Any, tenant_id: str) -> dict[str, Any]:
    environments = draw(st.lists(st.sampled_from(["dev", "prod"]), unique=True))
    bindings = [{"subject": s, "roles": ["viewer"], **({"environments": draw(st.lists(
                    st.sampled_from(environments), min_size=1, unique=True))} if environments and draw(
                    st.booleans()) else {})}
                for s in draw(st.lists(st.sampled_from([*SUBJECTS, "group:team"]), unique=True))]
    grants = [grant(home, subject) for home, subject in draw(st.lists(st.tuples(
        st.sampled_from(TENANTS), st.sampled_from(SUBJECTS)), max_size=3))]
    return tenant_doc(tenant_id, state=draw(st.sampled_from(["Active", "Active", "Suspended", "Draft", "Deleted"])),
                      environments=environments,
                      access={"roles": ROLES, "bindings": bindings, "grants": grants,
                              "groups": {"team": draw(st.lists(st.sampled_from(SUBJECTS), unique=True))}})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_listing_agrees_with_check_tenant_and_check_access_for_every_tenant(data: st.DataObject) -> None:
    snapshot = snapshot_of(*[data.draw(documents(t)) for t in TENANTS])
    access = AccessEngine(TokenVerifier())
    home, subject = data.draw(st.sampled_from(TENANTS)), data.draw(st.sampled_from([*SUBJECTS, "group:team"]))
    environment = data.draw(st.sampled_from(["", "dev", "prod"]))
    include_inactive = data.draw(st.booleans())
    listed, after = [], ""
    while True:  # a page of one at a time: pages join to the whole listing
        found = page(snapshot, home, subject, environment, after=after, limit=1, include_inactive=include_inactive)
        listed += found.tenants
        if not found.resume_after:
            break
        after = found.resume_after
    assert listed == page(snapshot, home, subject, environment, limit=100, include_inactive=include_inactive).tenants
    by_id = {entry.tenant_id: entry for entry in listed}
    assert list(by_id) == sorted(by_id)
    for tenant_id in TENANTS:
        checked = check_tenant(snapshot, tenant_id, home, subject, environment)
        assert isinstance(checked, TenantAccess)
        if tenant_id in by_id:
            assert by_id[tenant_id] == checked
        else:
            assert not checked.allowed, (tenant_id, checked)
        # Allowed to use a tenant: CheckAccess allows something there, and never what the grant or roles lack.
        decision = access.check(snapshot, AccessRequest(tenant_id, "read", "x", subject, home, "", environment))
        if checked.allowed and (environment or tenant_id != home or any(
                r.environments is None for r in checked.roles)):
            assert decision.allowed, (tenant_id, checked, decision)
        if decision.allowed:
            assert checked.allowed
