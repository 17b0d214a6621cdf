from __future__ import annotations

import dataclasses
import time

import pytest

from tenantgate.engines.access import AccessEngine, AccessRequest, Reason
from tenantgate.engines.tokens import TokenVerifier
from tenantgate.model import Binding, CrossTenantGrant
from tenantgate.registry.manifest import ManifestError, parse_document
from tenantgate.snapshot import Snapshot, build_snapshot, build_tenant
from tenantgate.v1 import decision_pb2 as pb
from tests.conftest import Issuer, snapshot_of, tenant_doc

ACME_ACCESS = {
    "roles": {
        "admin": {"allow": ["*"]},
        "editor": {"allow": ["read:docs/*", "write:docs/*"]},
        "viewer": {"allow": ["read:*"], "deny": ["read:secrets/*"]},
    },
    "bindings": [
        {"subject": "user:alice", "roles": ["admin"]},
        {"subject": "user:bob", "roles": ["editor"], "environments": ["dev", "staging"]},
        {"subject": "group:support", "roles": ["viewer"]},
    ],
    "groups": {"support": ["user:carol"]},
    "deny": ["delete:audit/*"],
    "grants": [{"tenant": "globex", "subject": "service:auditor", "allow": ["read:reports/*"]}],
    "suspended_allow": ["read:billing/*"],
}


@pytest.fixture
def engine() -> AccessEngine:
    return AccessEngine(TokenVerifier())


@pytest.fixture
def snapshot() -> Snapshot:
    return snapshot_of(
        tenant_doc("acme", environments=["dev", "staging", "prod"], access=ACME_ACCESS),
        tenant_doc("globex", access={"roles": {"a": {"allow": ["*"]}},
                                     "bindings": [{"subject": "service:auditor", "roles": ["a"]}]}),
        tenant_doc("initech", state="Suspended", environments=["dev", "staging"], access=ACME_ACCESS),
        tenant_doc("hooli", state="Suspended"),
        tenant_doc("draftco", state="Draft", environments=["dev", "staging"], access=ACME_ACCESS),
    )


def check(engine: AccessEngine, snapshot: Snapshot, **fields: str) -> tuple[bool, Reason, str]:
    decision = engine.check(snapshot, AccessRequest(**{"tenant_id": "acme", **fields}))  # type: ignore[arg-type]
    return decision.allowed, decision.reason, decision.rule


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"subject": "user:alice", "action": "write", "resource": "x"}, (True, Reason.ALLOWED,
                                                                         "acme/roles/admin/allow/0")),
        ({"subject": "user:alice", "action": "delete", "resource": "audit/1"},
         (False, Reason.EXPLICIT_DENY, "acme/deny/0")),
        ({"subject": "user:bob", "action": "write", "resource": "docs/1", "environment": "dev"},
         (True, Reason.ALLOWED, "acme/roles/editor/allow/1")),
        ({"subject": "user:bob", "action": "write", "resource": "docs/1", "environment": "prod"},
         (False, Reason.NO_MATCHING_GRANT, "")),
        ({"subject": "user:bob", "action": "write", "resource": "docs/1"}, (False, Reason.NO_MATCHING_GRANT, "")),
        ({"subject": "user:bob", "action": "write", "resource": "docs/1", "environment": "qa"},
         (False, Reason.UNKNOWN_ENVIRONMENT, "")),
        ({"subject": "user:carol", "action": "read", "resource": "wiki/1"},
         (True, Reason.ALLOWED, "acme/roles/viewer/allow/0")),
        ({"subject": "user:carol", "action": "read", "resource": "secrets/k"},
         (False, Reason.EXPLICIT_DENY, "acme/roles/viewer/deny/0")),
        ({"subject": "group:support", "action": "read", "resource": "wiki/1"},
         (False, Reason.NO_MATCHING_GRANT, "")),
        ({"subject": "user:nobody", "action": "read", "resource": "x"}, (False, Reason.NO_MATCHING_GRANT, "")),
        ({"subject": "user:alice", "action": "read", "resource": "x", "tenant_id": "nope"},
         (False, Reason.TENANT_NOT_FOUND, "")),
    ],
)
def test_rbac_inside_a_tenant(engine: AccessEngine, snapshot: Snapshot, fields: dict[str, str],
                              expected: tuple[bool, Reason, str]) -> None:
    assert check(engine, snapshot, **fields) == expected


def test_cross_tenant_only_by_explicit_grant(engine: AccessEngine, snapshot: Snapshot) -> None:
    auditor = {"subject": "service:auditor", "subject_tenant_id": "globex"}
    assert check(engine, snapshot, action="read", resource="reports/q3", **auditor) == (
        True, Reason.ALLOWED, "acme/grants/0/allow/0")
    assert check(engine, snapshot, action="read", resource="docs/1", **auditor)[:2] == (
        False, Reason.CROSS_TENANT_DENIED)
    # The same name from another home tenant is another identity.
    assert check(engine, snapshot, action="read", resource="reports/q3", subject="service:auditor",
                 subject_tenant_id="initech")[:2] == (False, Reason.CROSS_TENANT_DENIED)
    # acme's own admin is nobody on globex.
    assert check(engine, snapshot, tenant_id="globex", subject_tenant_id="acme", subject="user:alice",
                 action="read", resource="x")[:2] == (False, Reason.CROSS_TENANT_DENIED)


def test_tenant_wide_deny_applies_to_grantees(engine: AccessEngine) -> None:
    access = {"deny": ["read:reports/secret*"],
              "grants": [{"tenant": "globex", "subject": "service:auditor", "allow": ["read:reports/*"]}]}
    snapshot = snapshot_of(tenant_doc("acme", access=access), tenant_doc("globex"))
    decision = engine.check(snapshot, AccessRequest("acme", "read", "reports/secret-q3", "service:auditor", "globex"))
    assert (decision.allowed, decision.reason, decision.rule) == (False, Reason.EXPLICIT_DENY, "acme/deny/0")


def test_grantee_home_tenant_must_be_active(engine: AccessEngine) -> None:
    grants = [{"tenant": "globex", "subject": "service:auditor", "allow": ["*"]}]
    snapshot = snapshot_of(tenant_doc("acme", access={"grants": grants}), tenant_doc("globex", state="Suspended"))
    decision = engine.check(snapshot, AccessRequest("acme", "read", "x", "service:auditor", "globex"))
    assert decision.reason is Reason.CROSS_TENANT_DENIED


def test_lifecycle_gate(engine: AccessEngine, snapshot: Snapshot) -> None:
    # Suspended: only what suspended_allow lists, and only for subjects allowed it anyway.
    assert check(engine, snapshot, tenant_id="initech", subject="user:alice", action="read",
                 resource="billing/1")[:2] == (True, Reason.ALLOWED)
    assert check(engine, snapshot, tenant_id="initech", subject="user:alice", action="write",
                 resource="docs/1")[:2] == (False, Reason.TENANT_NOT_ACTIVE)
    assert check(engine, snapshot, tenant_id="initech", subject="user:nobody", action="read",
                 resource="billing/1")[:2] == (False, Reason.NO_MATCHING_GRANT)
    assert check(engine, snapshot, tenant_id="hooli", subject="user:alice", action="read",
                 resource="billing/1")[:2] == (False, Reason.TENANT_NOT_ACTIVE)
    assert check(engine, snapshot, tenant_id="draftco", subject="user:alice", action="read",
                 resource="x")[:2] == (False, Reason.TENANT_NOT_ACTIVE)


def test_token_identity(engine: AccessEngine, issuer: Issuer) -> None:
    access = {"roles": {"r": {"allow": ["read:*"]}}, "bindings": [{"subject": "user:alice", "roles": ["r"]}]}
    snapshot = snapshot_of(tenant_doc("acme", access=access, tokens={"issuers": [issuer.issuer_spec()]}))
    good = engine.check(snapshot, AccessRequest("acme", "read", "x", token=issuer.token("acme", "alice")))
    assert (good.allowed, good.subject, good.subject_tenant_id) == (True, "user:alice", "acme")
    expired = engine.check(snapshot, AccessRequest("acme", "read", "x",
                                                   token=issuer.token("acme", "alice", expires_in=-60)))
    assert expired.reason is Reason.TOKEN_EXPIRED
    forged = engine.check(snapshot, AccessRequest("acme", "read", "x", token=Issuer().token("acme", "alice")))
    assert forged.reason is Reason.TOKEN_INVALID
    garbage = engine.check(snapshot, AccessRequest("acme", "read", "x", token="not.a.jwt"))
    assert garbage.reason is Reason.TOKEN_INVALID


def test_reason_values_match_the_protocol() -> None:
    for reason in Reason:
        assert pb.DecisionReason.Value(f"DECISION_REASON_{reason.name}") == reason.value
    assert len(pb.DecisionReason.keys()) == len(Reason) + 1


def test_a_token_of_another_tenant_is_a_cross_tenant_caller_even_without_naming_its_home(
        engine: AccessEngine, issuer: Issuer) -> None:
    # acme's own user:alice is an admin; globex's user:alice holds only a grant to read reports. A globex
    # token presented on acme without subject_tenant_id must be globex's alice, judged by the grant alone.
    access = {"roles": {"admin": {"allow": ["*"]}}, "bindings": [{"subject": "user:alice", "roles": ["admin"]}],
              "grants": [{"tenant": "globex", "subject": "user:alice", "allow": ["read:reports/*"]}]}
    tokens = {"issuers": [issuer.issuer_spec()]}
    snapshot = snapshot_of(tenant_doc("acme", access=access, tokens=tokens), tenant_doc("globex", tokens=tokens))
    token = issuer.token("globex", "alice")
    for _ in range(2):  # verified, then from the token cache
        granted = engine.check(snapshot, AccessRequest("acme", "read", "reports/q3", token=token))
        assert (granted.allowed, granted.reason, granted.rule) == (True, Reason.ALLOWED, "acme/grants/0/allow/0")
        assert (granted.subject, granted.subject_tenant_id) == ("user:alice", "globex")
        beyond = engine.check(snapshot, AccessRequest("acme", "delete", "docs/1", token=token))
        assert (beyond.allowed, beyond.reason, beyond.subject_tenant_id) == (False, Reason.CROSS_TENANT_DENIED,
                                                                              "globex")
    # Naming a home tenant the token does not belong to makes it invalid, never acme's alice.
    claimed = engine.check(snapshot, AccessRequest("acme", "delete", "docs/1", subject_tenant_id="acme", token=token))
    assert (claimed.allowed, claimed.reason) == (False, Reason.TOKEN_INVALID)


@pytest.mark.parametrize(
    ("fields", "reason", "who"),
    [
        ({"tenant_id": "draftco", "subject": "user:alice", "action": "read", "resource": "x"},
         Reason.TENANT_NOT_ACTIVE, ("user:alice", "draftco")),
        ({"tenant_id": "initech", "subject": "user:alice", "action": "write", "resource": "docs/1"},
         Reason.TENANT_NOT_ACTIVE, ("user:alice", "initech")),
        ({"subject": "user:bob", "action": "write", "resource": "docs/1", "environment": "qa"},
         Reason.UNKNOWN_ENVIRONMENT, ("user:bob", "acme")),
        ({"subject": "user:alice", "action": "delete", "resource": "audit/1"},
         Reason.EXPLICIT_DENY, ("user:alice", "acme")),
        ({"subject": "user:carol", "action": "read", "resource": "secrets/k"},
         Reason.EXPLICIT_DENY, ("user:carol", "acme")),
        ({"subject": "user:nobody", "action": "read", "resource": "x"},
         Reason.NO_MATCHING_GRANT, ("user:nobody", "acme")),
        ({"subject": "service:auditor", "subject_tenant_id": "globex", "action": "read", "resource": "docs/1"},
         Reason.CROSS_TENANT_DENIED, ("service:auditor", "globex")),
        ({"subject": "user:peter", "subject_tenant_id": "hooli", "action": "read", "resource": "reports/1"},
         Reason.CROSS_TENANT_DENIED, ("user:peter", "hooli")),
        ({"subject": "service:auditor", "subject_tenant_id": "globex", "action": "read", "resource": "reports/1"},
         Reason.ALLOWED, ("service:auditor", "globex")),
        # An unverified token names nobody: its claims are not written down as the subject.
        ({"token": "not.a.jwt", "action": "read", "resource": "x"}, Reason.TOKEN_INVALID, ("", "")),
    ],
)
def test_every_decision_names_who_asked(engine: AccessEngine, snapshot: Snapshot, fields: dict[str, str],
                                        reason: Reason, who: tuple[str, str]) -> None:
    """The decision log records each deny with the subject and home tenant the decision names."""
    decision = engine.check(snapshot, AccessRequest(**{"tenant_id": "acme", **fields}))  # type: ignore[arg-type]
    assert (decision.reason, decision.subject, decision.subject_tenant_id) == (reason, *who)


def test_a_caller_presenting_a_group_name_is_never_allowed_as_that_group(engine: AccessEngine) -> None:
    """Groups hold subjects. A group named inside a group, or granted across tenants, is refused when the
    manifest is read; and a spec that skipped that check still never makes the group name a caller."""
    access = {"roles": {"admin": {"allow": ["*"]}},
              "groups": {"ops": ["user:carol", "group:admins"], "admins": ["user:alice"]},
              "bindings": [{"subject": "group:ops", "roles": ["admin"]}],
              "grants": [{"tenant": "globex", "subject": "group:auditors", "allow": ["*"]}]}
    with pytest.raises(ManifestError):
        snapshot_of(tenant_doc("acme", access=access), tenant_doc("globex"))

    parsed = parse_document(tenant_doc("acme", access={"roles": access["roles"]})).tenant
    unchecked = dataclasses.replace(parsed, access=dataclasses.replace(
        parsed.access, groups={"ops": ("user:carol", "group:admins"), "admins": ("user:alice",)},
        bindings=(Binding("group:ops", ("admin",)),),
        grants=(CrossTenantGrant("globex", "group:auditors", ("*",)),)))
    globex = parse_document(tenant_doc("globex")).tenant
    snapshot = build_snapshot(1, [build_tenant(unchecked, 1), build_tenant(globex, 1)], time.time())

    def decide(subject: str, home: str = "") -> tuple[bool, Reason]:
        decision = engine.check(snapshot, AccessRequest("acme", "write", "x", subject, home))
        return decision.allowed, decision.reason

    assert decide("user:carol") == (True, Reason.ALLOWED)
    assert decide("group:admins") == (False, Reason.NO_MATCHING_GRANT)
    assert decide("group:ops") == (False, Reason.NO_MATCHING_GRANT)
    assert decide("user:alice") == (False, Reason.NO_MATCHING_GRANT)  # admins is not bound; nesting is not expanded
    assert decide("group:auditors", "globex") == (False, Reason.CROSS_TENANT_DENIED)


@pytest.mark.parametrize(
    ("glob", "resource", "allowed"),
    [
        ("a*b*c*bc", "abc", False),  # the middle parts may not reach into the suffix
        ("a*b*c*bc", "abcbc", True),
        ("ab*ba", "aba", False),  # nor may prefix and suffix overlap
        ("*report*", "report-q3", True),
        ("docs/*/v?/*.pdf", "docs/x/v1/a.pdf", True),
        ("docs/*/v?/*.pdf", "docs/x/v12/a.pdf", False),
        ("a?*b*bc", "axbc", False),  # with "?" too, a middle part may not reach into the suffix
        ("a?*b*bc", "axbbc", True),
    ],
)
def test_rule_globs_at_their_edges(engine: AccessEngine, glob: str, resource: str, allowed: bool) -> None:
    access = {"roles": {"r": {"allow": [f"read:{glob}"]}}, "bindings": [{"subject": "user:a", "roles": ["r"]}]}
    snapshot = snapshot_of(tenant_doc("acme", access=access))
    assert engine.check(snapshot, AccessRequest("acme", "read", resource, "user:a")).allowed is allowed
