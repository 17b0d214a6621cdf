"""The membership index: roles by subject in a tenant, what a stored document grants, and the snapshot's grant
index kept up to date change by change, always equal to one built from scratch."""

from __future__ import annotations

import json
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantgate import membership
from tenantgate.membership import NO_REACH, HeldRole, build_grant_index, members_of, reach_of, with_grant_changes
from tenantgate.model import TenantState
from tenantgate.registry.manifest import parse_document, stored_grants
from tenantgate.snapshot import Snapshot, TenantView, build_snapshot, build_tenant, with_changes
from tests.conftest import tenant_doc

TENANTS = ["acme", "globex", "initech", "umbrella"]
SUBJECTS = ["user:alice", "user:bob", "service:auditor"]
STATES = ["Active", "Active", "Suspended", "Draft", "Archived", "Deleted"]
ROLES = {"admin": {"allow": ["*"]}, "viewer": {"allow": ["read:*"]}}


def test_members_are_bound_directly_or_through_groups_never_as_groups() -> None:
    spec = parse_document(tenant_doc("acme", environments=["dev", "prod"], access={
        "roles": ROLES, "groups": {"support": ["user:carol", "user:alice"]},
        "bindings": [{"subject": "user:alice", "roles": ["admin"]},
                     {"subject": "user:bob", "roles": ["viewer"], "environments": ["dev"]},
                     {"subject": "group:support", "roles": ["viewer"]},
                     {"subject": "user:alice", "roles": ["admin"]}]})).tenant
    members = members_of(spec.access)
    assert members["user:alice"] == (HeldRole("admin", "", None), HeldRole("viewer", "group:support", None))
    assert members["user:bob"] == (HeldRole("viewer", "", frozenset({"dev"})),)
    assert members["user:carol"] == (HeldRole("viewer", "group:support", None),)
    assert "group:support" not in members
    assert members["user:bob"][0].applies_in("dev") and not members["user:bob"][0].applies_in("prod")
    assert members["user:bob"][0].applies_in("")  # no environment named: any environment


def test_grants_to_groups_or_to_the_tenants_own_subjects_reach_no_one() -> None:
    reach = reach_of("acme", [("globex", "user:a"), ("acme", "user:b"), ("globex", "group:x"), ("initech", "u:c")],
                     ["prod"])
    assert reach.grants == (("globex", "user:a", 0), ("initech", "u:c", 3))
    assert reach.environments == {"prod"}
    assert reach_of("acme", [("acme", "user:b")], ["prod"]) is NO_REACH


def test_a_stored_document_that_cannot_be_read_grants_nothing() -> None:
    assert stored_grants("not json {\"grants\"") == ([], [])
    assert stored_grants(json.dumps({"spec": {"access": {"grants": [{"tenant": 1, "subject": "x"}]}}})) == ([], [])
    assert stored_grants(json.dumps({"spec": {"access": {"grants": [["acme"]]}}})) == ([], [])
    assert stored_grants(json.dumps({"spec": {"access": {"grants": "x"}}, "grants": 1})) == ([], [])


@st.composite
def documents(draw: Any, tenant_id: str) -> dict[str, Any]:
    grants = [{"tenant": home, "subject": subject, "allow": ["read:*"]}
              for home, subject in draw(st.lists(st.tuples(st.sampled_from(TENANTS), st.sampled_from(SUBJECTS)),
                                                 max_size=4))]
    return tenant_doc(tenant_id, state=draw(st.sampled_from(STATES)),
                      environments=draw(st.lists(st.sampled_from(["dev", "prod"]), unique=True)),
                      access={"roles": ROLES, "grants": grants,
                              "bindings": [{"subject": s, "roles": ["viewer"]}
                                           for s in draw(st.lists(st.sampled_from(SUBJECTS), unique=True))]})


def _view(document: dict[str, Any], revision: int) -> TenantView:
    return build_tenant(parse_document(document).tenant, revision, compiled=False)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_what_the_stored_document_grants_is_what_the_compiled_policy_grants(data: st.DataObject) -> None:
    tenant_id = data.draw(st.sampled_from(TENANTS))
    document = data.draw(documents(tenant_id))
    view = build_tenant(parse_document(document).tenant, 1)
    from_text = reach_of(tenant_id, *stored_grants(json.dumps(document)))
    assert from_text == view.reach
    assert {(home, subject) for home, subject, _ in view.reach.grants} == \
        {key for key in view.policy.grants if key[0] != tenant_id}
    if view.reach.grants:
        assert view.reach.environments == view.policy.environments


def _scratch(snapshot: Snapshot) -> dict[tuple[str, str], Any]:
    return build_snapshot(snapshot.revision, snapshot.tenants.values(), 0.0).grants.as_dict()


def _expected(snapshot: Snapshot) -> dict[tuple[str, str], Any]:
    """The index by its definition: each live grant, straight from the tenants' specs."""
    found: dict[tuple[str, str], dict[str, list[int]]] = {}
    for tenant_id, view in snapshot.tenants.items():
        if view.state is TenantState.DELETED:
            continue
        for index, grant in enumerate(view.compile().spec.access.grants):  # type: ignore[union-attr]
            if grant.tenant != tenant_id and not grant.subject.startswith("group:"):
                found.setdefault((grant.tenant, grant.subject), {}).setdefault(tenant_id, []).append(index)
    return {key: tuple((t, tuple(indexes)) for t, indexes in sorted(by_tenant.items()))
            for key, by_tenant in found.items()}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_index_kept_change_by_change_equals_one_built_from_scratch(data: st.DataObject) -> None:
    first = data.draw(st.lists(st.sampled_from(TENANTS), unique=True))
    snapshot = build_snapshot(1, [_view(data.draw(documents(t)), 1) for t in first], time.time())
    assert snapshot.grants.as_dict() == _expected(snapshot)
    for revision in range(2, data.draw(st.integers(1, 6)) + 2):
        changed: dict[str, TenantView | None] = {}
        for tenant_id in data.draw(st.lists(st.sampled_from(TENANTS), unique=True, min_size=1)):
            removed = data.draw(st.booleans()) and data.draw(st.booleans())
            changed[tenant_id] = None if removed else _view(data.draw(documents(tenant_id)), revision)
        snapshot = with_changes(snapshot, revision, changed, time.time())
        assert snapshot.grants.as_dict() == _scratch(snapshot) == _expected(snapshot)


def test_an_unchanged_index_is_shared_not_copied() -> None:
    base = build_snapshot(1, [_view(tenant_doc("acme", access={"grants": [
        {"tenant": "globex", "subject": "user:a", "allow": ["read:*"]}]}), 1)], time.time())
    unrelated = with_changes(base, 2, {"initech": _view(tenant_doc("initech"), 2)}, time.time())
    assert unrelated.grants is base.grants
    deleted = with_changes(base, 3, {"acme": _view(tenant_doc("acme", state="Deleted", access={"grants": [
        {"tenant": "globex", "subject": "user:a", "allow": ["read:*"]}]}), 3)}, time.time())
    assert deleted.grants.as_dict() == {} and base.grants.grants("globex", "user:a", "acme") == (0,)


def test_an_apply_of_many_tenants_granting_one_subject_rebuilds_its_list_once(monkeypatch: Any) -> None:
    """Work, counted as the entries the index code copies into lists and tuples: in proportion to the entries
    touched, never to their product (one copy of the grantee's list per changed tenant was quadratic)."""
    copied = [0]

    def counting(kind: Any) -> Any:
        def copy(iterable: Any = (), **options: Any) -> Any:
            copied[0] += len(iterable) if hasattr(iterable, "__len__") else 0
            return kind(iterable, **options)
        return copy

    for kind in (list, tuple, sorted):
        monkeypatch.setattr(membership, kind.__name__, counting(kind), raising=False)
    support = [("platform", "service:support")]
    existing = [(f"a{i:05d}", reach_of(f"a{i:05d}", support, ["prod"])) for i in range(1000)]
    index = build_grant_index(existing)
    applied = [(f"t{i:05d}", NO_REACH, reach_of(f"t{i:05d}", support, ["prod"])) for i in range(2000)]
    # Half the existing grantors stop granting in the same apply.
    applied += [(tenant_id, reach, NO_REACH) for tenant_id, reach in existing[::2]]
    copied[0] = 0
    changed = with_grant_changes(index, applied)
    assert copied[0] <= 4 * (len(existing) + len(applied)), copied[0]
    expected = build_grant_index([*existing[1::2], *((t, after) for t, _, after in applied[:2000])])
    assert changed.as_dict() == expected.as_dict()
    assert len(changed.granting("platform", "service:support")) == 2500
