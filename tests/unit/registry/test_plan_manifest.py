"""Plan documents (kind: Plan) read from YAML beside tenants: every problem with its file, document and path."""

from __future__ import annotations

import json

import pytest

from tenantgate.model import QuotaKind
from tenantgate.registry.manifest import (
    ManifestDocument,
    ManifestError,
    PlanDocument,
    document_plan,
    parse_manifest_texts,
)

PLANS = """
apiVersion: tenantgate/v1
kind: Plan
metadata: {id: professional, name: Professional}
spec:
  features: [sso]
  quotas:
    api-requests: {rate: 1000/minute, burst: 100}
    storage-bytes: {allocation: 100Gi}
  access:
    roles:
      viewer: {allow: ["read:*"], deny: ["read:secrets/*"]}
---
apiVersion: tenantgate/v1
kind: Tenant
metadata: {id: acme}
spec:
  plan: professional
  access:
    bindings: [{subject: "user:alice", roles: [viewer]}]
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        parse_manifest_texts([("p.yaml", text)])
    return caught.value.problems


def test_a_plan_and_a_tenant_naming_its_role_parse_together() -> None:
    plan, tenant = parse_manifest_texts([("p.yaml", PLANS)])
    assert isinstance(plan, PlanDocument) and isinstance(tenant, ManifestDocument)
    assert (plan.plan.id, plan.plan.name, plan.plan.features) == ("professional", "Professional", ("sso",))
    assert plan.plan.quotas["api-requests"].kind is QuotaKind.RATE
    assert plan.plan.quotas["storage-bytes"].kind is QuotaKind.VOLUME
    assert plan.plan.roles["viewer"].deny == ("read:secrets/*",)
    assert plan.document["metadata"] == {"id": "professional", "name": "Professional"}
    assert tenant.tenant.plan == "professional"


@pytest.mark.parametrize(("spec", "path", "message"), [
    ("{bindings: []}", "spec.bindings", "unknown field"),
    ("{access: {bindings: []}}", "spec.access.bindings", "unknown field"),
    ("{quotas: {api: {rate: 10/fortnight}}}", "spec.quotas.api.rate", "bad rate"),
    ("{access: {roles: {a: {allow: [read]}}}}", "spec.access.roles.a.allow[0]", "not a rule"),
    ("{features: sso}", "spec.features", "expected a list"),
    ("{state: Active}", "spec.state", "unknown field"),
])
def test_a_bad_plan_field_is_reported_with_its_path(spec: str, path: str, message: str) -> None:
    problems = problems_of(f"apiVersion: tenantgate/v1\nkind: Plan\nmetadata: {{id: pro}}\nspec: {spec}\n")
    assert any(p.startswith(f"p.yaml: document 1: {path}: ") and message in p for p in problems), problems


@pytest.mark.parametrize("plan_id", ["", "-pro", "pro\n", "a" * 64, "pro plan", "ünï", 7])
def test_a_plan_id_that_spec_plan_could_not_name_is_refused(plan_id: object) -> None:
    text = f"apiVersion: tenantgate/v1\nkind: Plan\nmetadata: {{id: {json.dumps(plan_id)}}}\n"
    assert any(p.startswith("p.yaml: document 1: metadata.id: ") for p in problems_of(text))


def test_a_plan_defined_twice_is_refused_but_a_tenant_may_share_its_id() -> None:
    plan = "apiVersion: tenantgate/v1\nkind: Plan\nmetadata: {id: pro}\n"
    tenant = "apiVersion: tenantgate/v1\nkind: Tenant\nmetadata: {id: pro}\n"
    with pytest.raises(ManifestError, match=r"b.yaml: document 1: metadata.id: plan 'pro' is also defined in "
                                            r"a.yaml: document 1"):
        parse_manifest_texts([("a.yaml", plan), ("b.yaml", plan)])
    assert len(parse_manifest_texts([("a.yaml", plan), ("b.yaml", tenant)])) == 2


def test_an_unknown_kind_names_both_kinds() -> None:
    assert problems_of("apiVersion: tenantgate/v1\nkind: Template\nmetadata: {id: pro}\n") == [
        "p.yaml: document 1: kind: expected 'Tenant' or 'Plan', got 'Template'"]


def test_a_plan_document_is_bounded_like_a_tenant_document() -> None:
    bomb = "apiVersion: tenantgate/v1\nkind: Plan\nmetadata: {id: pro}\nspec:\n  features: &a [" + \
        ", ".join(["xxxxxxxxxxxxxxxx"] * 64) + "]\n"
    for level in range(8):  # each level multiplies the alias expansion by ten: 64 * 10**8 entries, never materialised
        bomb += f"x{level}: &b{level} [" + ", ".join([f"*{'a' if level == 0 else f'b{level - 1}'}"] * 10) + "]\n"
    problems = problems_of(bomb)
    assert any("larger than" in p for p in problems), problems


@pytest.mark.parametrize(("plan", "key"), [("professional", "professional"), ("Gold (annual)", ""), ("", ""),
                                           ("a" * 64, ""), (5, "")])
def test_the_plan_a_stored_tenant_names_is_read_without_parsing_it(plan: object, key: str) -> None:
    assert document_plan({"spec": {"plan": plan}}) == key
