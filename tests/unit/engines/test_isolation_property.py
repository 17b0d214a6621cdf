"""Property: over random tenants, subjects and rules, no subject of one tenant is ever allowed anything
on another tenant unless that tenant's manifest grants it explicitly."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantgate.engines.access import AccessEngine, AccessRequest, Reason
from tenantgate.engines.tokens import TokenVerifier
from tenantgate.policy import compile_glob
from tests.conftest import snapshot_of, tenant_doc

TENANTS = ["acme", "globex", "initech"]
SUBJECTS = ["user:alice", "user:bob", "service:auditor", "service:billing"]
ACTIONS = ["read", "write", "delete"]
RESOURCES = ["docs/1", "reports/q3", "secrets/k", "billing/inv"]
RULES = ["*", "read:*", "write:docs/*", "*:reports/*", "delete:secrets/?", "read:billing/*"]

rules = st.lists(st.sampled_from(RULES), max_size=3)


@st.composite
def tenant_documents(draw: Any, tenant_id: str) -> dict[str, Any]:
    roles = {f"r{i}": {"allow": draw(rules), "deny": draw(st.lists(st.sampled_from(RULES), max_size=1))}
             for i in range(draw(st.integers(1, 3)))}
    bindings = [{"subject": subject, "roles": draw(st.lists(st.sampled_from(sorted(roles)), min_size=1,
                                                            max_size=2, unique=True))}
                for subject in draw(st.lists(st.sampled_from(SUBJECTS), unique=True, max_size=4))]
    grants = [{"tenant": home, "subject": subject, "allow": draw(rules)}
              for home, subject in draw(st.lists(st.tuples(st.sampled_from(TENANTS), st.sampled_from(SUBJECTS)),
                                                 unique=True, max_size=3))
              if home != tenant_id]
    state = draw(st.sampled_from(["Active", "Active", "Active", "Suspended"]))
    return tenant_doc(tenant_id, state=state, access={
        "roles": roles, "bindings": bindings, "grants": grants,
        "deny": draw(st.lists(st.sampled_from(RULES), max_size=1)),
        "suspended_allow": draw(rules)})


@st.composite
def registries(draw: Any) -> list[dict[str, Any]]:
    return [draw(tenant_documents(tenant_id)) for tenant_id in TENANTS]


def _granted(document: dict[str, Any], home: str, subject: str, action: str, resource: str) -> bool:
    for grant in document["spec"]["access"]["grants"]:
        if (grant["tenant"], grant["subject"]) != (home, subject):
            continue
        for rule in grant["allow"]:
            rule_action, _, glob = ("*", "", "*") if rule == "*" else rule.partition(":")
            if rule_action in ("*", action) and compile_glob(glob)(resource):
                return True
    return False


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(registry=registries(),
       requests=st.lists(st.tuples(st.sampled_from(TENANTS), st.sampled_from(TENANTS), st.sampled_from(SUBJECTS),
                                   st.sampled_from(ACTIONS), st.sampled_from(RESOURCES)), min_size=1, max_size=40))
def test_no_cross_tenant_access_without_an_explicit_grant(
        registry: list[dict[str, Any]], requests: list[tuple[str, str, str, str, str]]) -> None:
    snapshot = snapshot_of(*registry)
    documents = {doc["metadata"]["id"]: doc for doc in registry}
    engine = AccessEngine(TokenVerifier())
    for tenant_id, home, subject, action, resource in requests:
        decision = engine.check(snapshot, AccessRequest(tenant_id, action, resource, subject, home))
        if home == tenant_id:
            continue
        if decision.allowed:
            assert _granted(documents[tenant_id], home, subject, action, resource), (tenant_id, home, subject)
            assert decision.rule.startswith(f"{tenant_id}/grants/")
        else:
            assert decision.reason in (Reason.CROSS_TENANT_DENIED, Reason.EXPLICIT_DENY, Reason.TENANT_NOT_ACTIVE)
