from __future__ import annotations

import pytest

from tenantgate.policy import RuleSet, compile_glob, compile_rules


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
