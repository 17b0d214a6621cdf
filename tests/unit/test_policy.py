from __future__ import annotations

import pytest

from tenantgate.model import AccessSpec, Binding, CrossTenantGrant, Role
from tenantgate.policy import RuleSet, compile_glob, compile_policy, compile_rules
from tenantgate.registry.manifest import ManifestError, parse_document
from tests.conftest import tenant_doc


@pytest.mark.parametrize(
    ("glob", "resource", "matches"),
    [
        ("*", "anything/at/all", True),
        ("docs/*", "docs/a/b.txt", True),  # * crosses "/"
        ("docs/*", "docs", False),
        ("docs/*", "secrets/docs/x", False),
        ("docs/readme", "docs/readme", True),
        ("docs/readme", "docs/readme2", False),
        ("docs/?.txt", "docs/a.txt", True),
        ("docs/?.txt", "docs/ab.txt", False),
        ("*/reports/*", "eu/reports/q3", True),
        ("a.b+c(d)", "a.b+c(d)", True),  # regex characters are literal
        ("a.*", "aX", False),
        ("*.pdf", "x\ny.pdf", True),
    ],
)
def test_globs(glob: str, resource: str, matches: bool) -> None:
    assert compile_glob(glob)(resource) is matches


def test_rule_set_prefers_the_actions_own_rules_then_wildcards() -> None:
    rules = RuleSet(compile_rules(("*", "read:docs/*"), "t/r"))
    match = rules.first_match("read", "docs/1")
    assert match is not None and match.id == "t/r/1"
    wildcard = rules.first_match("write", "x")
    assert wildcard is not None and wildcard.id == "t/r/0"
    assert RuleSet(compile_rules(("read:docs/*",), "t")).first_match("write", "docs/1") is None


NESTED_GROUPS = {
    "roles": {"admin": {"allow": ["*"]}, "viewer": {"allow": ["read:*"]}},
    "groups": {"ops": ["user:carol", "group:admins"], "admins": ["user:alice"]},
    "bindings": [{"subject": "group:ops", "roles": ["admin"]}],
}


def test_a_group_listed_inside_a_group_is_refused_naming_the_member() -> None:
    with pytest.raises(ManifestError) as refused:
        parse_document(tenant_doc("acme", access=NESTED_GROUPS))
    assert any("spec.access.groups.ops[1]: 'group:admins' is a group" in problem for problem in refused.value.problems)


def test_a_grant_to_a_group_is_refused_naming_the_field() -> None:
    access = {"grants": [{"tenant": "globex", "subject": "group:auditors", "allow": ["read:*"]}]}
    with pytest.raises(ManifestError) as refused:
        parse_document(tenant_doc("acme", access=access))
    assert any("spec.access.grants[0].subject: 'group:auditors' is a group" in problem
               for problem in refused.value.problems)


def test_compiling_never_turns_a_group_into_a_subject() -> None:
    """Even from a spec that skipped validation: the group's subjects get its roles, no group name does."""
    roles = {"admin": Role("admin", ("*",))}
    access = AccessSpec(roles=roles, bindings=(Binding("group:ops", ("admin",)), Binding("group:admins", ("admin",))),
                        groups={"ops": ("user:carol", "group:admins"), "admins": ("user:alice",)},
                        grants=(CrossTenantGrant("globex", "group:auditors", ("read:*",)),
                                CrossTenantGrant("globex", "service:auditor", ("read:*",))))
    policy = compile_policy(access, ())
    assert set(policy.subjects) == {"user:carol", "user:alice"}
    assert set(policy.grants) == {("globex", "service:auditor")}
