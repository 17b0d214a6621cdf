"""Resource globs: the matcher agrees with the documented semantics and stays linear on hostile resources."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tenantgate.globs import compile_glob
from tenantgate.policy import compile_rules


def reference_match(glob: str, resource: str) -> bool:
    """The documented semantics, written the obvious way: ``*`` any run of characters (possibly empty,
    ``/`` included), ``?`` exactly one character, anything else itself, the whole resource.
    ``matched[j]``: the glob read so far matches ``resource[:j]``."""
    matched = [True] + [False] * len(resource)
    for char in glob:
        if char == "*":
            for j in range(1, len(resource) + 1):
                matched[j] = matched[j] or matched[j - 1]
        else:
            matched = [False] + [matched[j - 1] and char in ("?", resource[j - 1])
                                 for j in range(1, len(resource) + 1)]
    return matched[len(resource)]


# Small alphabets, so that random globs and resources often almost match, and "?" and "*" meet "/" and ".".
globs = st.text(alphabet="ab*?/.", max_size=10)
resources = st.text(alphabet="ab/.", max_size=14)
# Tinier still, with and without "?" (globs without it take other code paths): near misses are frequent.
dense_globs = st.text(alphabet="a*?", max_size=8) | st.text(alphabet="ab*", max_size=8)
dense_resources = st.text(alphabet="ab", max_size=8)


@settings(max_examples=1500, deadline=None)
@given(glob=globs, resource=resources)
def test_the_matcher_agrees_with_the_documented_semantics(glob: str, resource: str) -> None:
    assert compile_glob(glob)(resource) is reference_match(glob, resource)


@settings(max_examples=1500, deadline=None)
@given(glob=dense_globs, resource=dense_resources)
def test_the_matcher_agrees_on_near_misses(glob: str, resource: str) -> None:
    assert compile_glob(glob)(resource) is reference_match(glob, resource)


@settings(max_examples=500, deadline=None)
@given(glob=globs, data=st.data())
def test_resources_built_to_match_do(glob: str, data: st.DataObject) -> None:
    """A resource made from the glob (each star replaced by a random run, each "?" by a character)
    matches it: random resources alone rarely match globs with many literals."""
    resource = "".join(data.draw(resources) if char == "*" else data.draw(st.sampled_from("ab/.é"))
                       if char == "?" else char for char in glob)
    assert reference_match(glob, resource)
    assert compile_glob(glob)(resource) is True


@pytest.mark.parametrize(
    ("glob", "resource", "matches"),
    [
        ("", "", True),
        ("", "a", False),
        ("*", "", True),
        ("**", "", True),
        ("**", "any/thing", True),
        ("a**b", "ab", True),
        ("a**b", "a/x/b", True),
        ("a*", "a", True),  # a star may match nothing
        ("*a", "a", True),
        ("*a*", "a", True),
        ("*a*", "b", False),
        ("ab*ba", "aba", False),  # prefix and suffix may not share characters
        ("ab*ba", "abba", True),
        ("a*a*a", "aa", False),
        ("a*a*a", "aaa", True),
        ("*a*a*", "a", False),  # two segments cannot share a character
        ("*a*a*", "aa", True),
        ("ab*b*", "ab", False),  # a middle segment lies after the prefix
        ("*b*ba", "ba", False),  # ... and before the suffix
        ("a?*?a", "aba", False),
        ("a?*?a", "abba", True),
        ("?", "", False),
        ("?", "é", True),  # one character, not one byte
        ("?", "\n", True),
        ("?*", "", False),
        ("*?", "x", True),
        ("?/*", "a/", True),
        ("*/?", "x/y/z", True),
        ("*/?", "x/yz", False),
        ("??", "a", False),
        ("docs/?.txt", "docs/ab.txt", False),
        ("d?cs/*.t?t", "docs/a/b.txt", True),
        ("*.?df", "a.pdf", True),
        ("*.?df", "a.df", False),
        ("*ab?*", "xxabxabz", True),  # the first "ab" found is followed by "x": still a match
        ("*ab?c", "abab_c", True),
        ("*?ab", "ab", False),
        ("é*ü", "é/ü", True),
        ("日本/*/?", "日本/東京/駅", True),
        ("a.b+c(d)", "a.b+c(d)", True),  # characters special to regexes are literal
        ("a.*", "aX", False),
        ("[ab]*", "a", False),
        ("[ab]*", "[ab]", True),
        ("\\*", "\\x", True),  # backslash is a literal, not an escape
        ("*.pdf", "x\ny.pdf", True),
        ("*x*", "a\nx\nb", True),
    ],
)
def test_explicit_cases(glob: str, resource: str, matches: bool) -> None:
    assert reference_match(glob, resource) is matches
    assert compile_glob(glob)(resource) is matches


HOSTILE = [
    ("*/*/*/*.pdf", "/" * 1024, False),
    ("*/*/*/*.pdf", "/" * 1020 + ".pdf", True),
    ("*/*/*/*/*/*/*/*.pdf", "/" * 1024, False),
    ("*/*/*/*/*/*/*/*.pdf", "/" * 1019 + ".pdx", False),
    ("*a*a*a*a*a*b", "a" * 1024, False),
    ("*a*a*a*a*a*b", "a" * 1023 + "b", True),
    ("a*a*a*a*a*a*a*a*b", "a" * 1024, False),
    ("*?/?*?/?*?/?*.pdf", "/" * 1024, False),
    ("*?a?*?a?*?a?*?b", "a" * 1024, False),
    ("*?a?*?a?*?a?*?b", "a" * 1023 + "b", True),
    ("*aaaaaaaaaaaaaaaaaaaaaaaaaaab*", "a" * 1024, False),
    ("*a?a?a?a?a?a?a?a?a?a?a?a?a?a?b*", "a" * 1024, False),
    ("?" * 1024, "a" * 1024, True),
    ("?" * 1023 + "*?" , "a" * 1024, True),
]


@pytest.mark.parametrize(("glob", "resource", "matches"), HOSTILE)
def test_many_stars_against_a_hostile_resource_of_the_maximum_size(glob: str, resource: str, matches: bool) -> None:
    """Not timed: a backtracking matcher takes minutes to hours on these, and the per-test timeout ends it."""
    assert compile_glob(glob)(resource) is matches


def test_rules_compile_through_the_same_matcher() -> None:
    rule = compile_rules(("read:*/*/*/*.pdf",), "roles/r/allow")[0]
    assert not rule.matches("/" * 1024)
    assert rule.matches("a/b/c/d.pdf")
