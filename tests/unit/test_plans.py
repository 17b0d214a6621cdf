"""The merge of a tenant over its plan (tenantgate.plans), field by field, on specs parsed from documents."""

from __future__ import annotations

from typing import Any

import pytest

from tenantgate.model import PlanSpec, TenantSpec
from tenantgate.plans import effective_spec, unknown_roles
from tenantgate.registry.manifest import ManifestError, PlanDocument, manifests_from_documents, parse_document
from tenantgate.snapshot import compile_tenant
from tests.conftest import tenant_doc


def plan_doc(plan_id: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "tenantgate/v1", "kind": "Plan", "metadata": {"id": plan_id}, "spec": spec}


def plan(plan_id: str = "pro", **spec: Any) -> PlanSpec:
    (parsed,) = manifests_from_documents([plan_doc(plan_id, **spec)])
    assert isinstance(parsed, PlanDocument)
    return parsed.plan


def tenant(**spec: Any) -> TenantSpec:
    return parse_document(tenant_doc("acme", **spec)).tenant


PRO = plan(features=["sso", "audit"], quotas={"api": {"rate": "100/minute"}, "users": {"allocation": 10}},
           access={"roles": {"viewer": {"allow": ["read:*"]}, "editor": {"allow": ["write:docs/*"]}}})


def test_quotas_merge_by_name_the_tenant_replacing_the_plans_whole() -> None:
    own = tenant(plan="pro", quotas={"users": {"allocation": 50}, "jobs": {"limit": 5, "period": "day"}})
    quotas = effective_spec(PRO, own).quotas
    assert list(quotas) == ["api", "users", "jobs"]
    assert (quotas["api"].limit, quotas["users"].limit, quotas["jobs"].limit) == (100, 50, 5)


def test_features_are_the_plans_then_the_tenants_it_does_not_list() -> None:
    assert effective_spec(PRO, tenant(plan="pro", features=["beta", "sso"])).features == ("sso", "audit", "beta")
    assert effective_spec(PRO, tenant(plan="pro")).features == ("sso", "audit")


def test_roles_merge_by_name_and_bindings_may_name_the_plans_roles() -> None:
    own = tenant(plan="pro", access={"roles": {"editor": {"allow": ["write:*"]}},
                                     "bindings": [{"subject": "user:alice", "roles": ["viewer", "editor"]}]})
    assert unknown_roles(own, PRO) == []
    effective = effective_spec(PRO, own)
    assert effective.access.roles["editor"].allow == ("write:*",)
    assert effective.access.roles["viewer"].allow == ("read:*",)
    compiled = compile_tenant(effective)  # compiles: every bound role is defined
    assert compiled.spec is effective


def test_everything_else_is_the_tenants_own() -> None:
    own = tenant(plan="pro", environments=["prod"])
    effective = effective_spec(PRO, own)
    for name in ("id", "name", "labels", "state", "plan", "profile", "isolation", "environments", "issuers", "keys",
                 "retention"):
        assert getattr(effective, name) == getattr(own, name), name
    assert effective.access.bindings == own.access.bindings and effective.access.deny == own.access.deny


def test_a_plan_named_by_no_document_leaves_the_tenant_as_it_is() -> None:
    own = tenant(plan="free", quotas={"api": {"rate": "1/second"}})
    assert effective_spec(None, own) is own


def test_a_tenant_with_nothing_of_its_own_shares_the_plans_values() -> None:
    effective = effective_spec(PRO, tenant(plan="pro"))
    assert effective.quotas is PRO.quotas and effective.access.roles is PRO.roles


def test_a_deleted_tenant_takes_nothing_from_its_plan_and_keeps_no_access() -> None:
    own = tenant(plan="pro", state="Deleted", access={"bindings": [{"subject": "user:a", "roles": ["viewer"]}]})
    effective = effective_spec(PRO, own)
    assert effective.quotas == {} and effective.features == () and effective.access.bindings == ()
    compile_tenant(effective_spec(None, own))  # even once its plan is gone, it compiles


def test_a_binding_to_a_role_no_one_defines_is_found() -> None:
    own = tenant(plan="pro", access={"bindings": [{"subject": "user:a", "roles": ["viewer", "admin"]}]})
    assert unknown_roles(own, PRO) == [(0, 1, "admin")]
    assert unknown_roles(own, None) == [(0, 0, "viewer"), (0, 1, "admin")]


def test_a_tenant_without_a_plan_is_still_checked_when_parsed() -> None:
    with pytest.raises(ManifestError, match=r"spec.access.bindings\[0\].roles\[0\]: unknown role 'viewer'"):
        tenant(access={"bindings": [{"subject": "user:a", "roles": ["viewer"]}]})
