"""Resource globs, matched in time linear in the resource: callers choose resources, so nothing backtracks.

A glob matches a whole resource: ``*`` matches any run of characters (``/`` and newlines included, the
empty run too), ``?`` exactly one character, anything else itself; a lone ``*`` matches everything.

The glob is split at its stars into segments of fixed length. The first segment must match at the start of
the resource, the last at its end, and the ones between are placed leftmost-first, in order, in what lies
between. Placing a segment as early as possible never loses a match, because the star after it absorbs
whatever follows; so each segment is searched once, from where the previous one ended, and the work is at
most len(resource) x len(glob) character comparisons. A literal segment is one ``str`` call (find,
startswith, endswith); a segment holding ``?`` is a regex made only of literals and ``.``, with no
quantifier, so a search tries each start position once for at most the segment's length.

The shapes rules usually have (exact, ``*``, ``prefix*``, ``*suffix``, ``prefix*suffix``, ``*infix*``,
``prefix*infix*``) get a matcher of one to three C string calls and no loop.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

ResourceMatcher = Callable[[str], bool]
# (segment's length, finds it in resource[start:end] -> index or -1, matches it at a position -> bool)
_Segment = tuple[int, Callable[[str, int, int], int], Callable[[str, int], bool]]


def _always(_: str) -> bool:
    return True


def compile_glob(glob: str) -> ResourceMatcher:
    """A predicate telling whether a resource matches ``glob`` (see the module docstring)."""
    if glob == "*":
        return _always
    parts = glob.split("*")
    if len(parts) == 1:
        if "?" not in glob:
            return glob.__eq__
        fullmatch = _one_char_pattern(glob).fullmatch
        return lambda resource: fullmatch(resource) is not None
    first, last = parts[0], parts[-1]
    middles = [part for part in parts[1:-1] if part]  # "**" is "*"
    if "?" in glob:
        return _segments_matcher(_segment(first), [_segment(part) for part in middles], _segment(last))
    if not middles:
        return _literal_ends(first, last)
    if len(middles) == 1 and not first and not last:  # "*/reports/*"
        infix = middles[0]
        return lambda resource: infix in resource
    return _literal_matcher(first, middles, last)


def _literal_ends(prefix: str, suffix: str) -> ResourceMatcher:
    """``prefix*suffix`` with either side possibly empty; no ``?``."""
    if not suffix:
        if not prefix:
            return _always
        return lambda resource: resource.startswith(prefix)
    if not prefix:
        return lambda resource: resource.endswith(suffix)
    shortest = len(prefix) + len(suffix)  # "ab*ba" must not match "aba"
    return lambda resource: len(resource) >= shortest and resource.startswith(prefix) and resource.endswith(suffix)


def _literal_matcher(first: str, middles: Sequence[str], last: str) -> ResourceMatcher:
    """Stars between literal segments: each middle segment found once, leftmost, after the previous. A
    middle found between the ends also proves the ends do not overlap, so no length check is needed."""
    head, tail = len(first), len(last)
    if len(middles) == 1:  # "tenants/*/docs/*" and the like: one expression, no loop
        middle = middles[0]
        if not last:
            return lambda resource: resource.startswith(first) and resource.find(middle, head) >= 0
        return lambda resource: (resource.startswith(first) and resource.endswith(last)
                                 and resource.find(middle, head, len(resource) - tail) >= 0)

    def matches(resource: str) -> bool:
        if not resource.startswith(first) or not resource.endswith(last):
            return False
        position, end = head, len(resource) - tail
        for middle in middles:
            found = resource.find(middle, position, end)
            if found < 0:
                return False
            position = found + len(middle)
        return True

    return matches


def _segments_matcher(first: _Segment, middles: Sequence[_Segment], last: _Segment) -> ResourceMatcher:
    """The general case, for globs holding ``?``: the same placement as ``_literal_matcher``."""
    head, _, first_at = first
    tail, _, last_at = last

    def matches(resource: str) -> bool:
        end = len(resource) - tail
        if end < head or not first_at(resource, 0) or not last_at(resource, end):
            return False
        position = head
        for length, find, _ in middles:
            found = find(resource, position, end)
            if found < 0:
                return False
            position = found + length
        return True

    return matches


def _segment(text: str) -> _Segment:
    if "?" not in text:
        return (len(text), lambda resource, start, end: resource.find(text, start, end),
                lambda resource, position: resource.startswith(text, position))
    pattern = _one_char_pattern(text)
    search, match = pattern.search, pattern.match

    def find(resource: str, start: int, end: int) -> int:
        found = search(resource, start, end)
        return -1 if found is None else found.start()

    return len(text), find, lambda resource, position: match(resource, position) is not None


def _one_char_pattern(text: str) -> re.Pattern[str]:
    """``text`` with each ``?`` as one character of any kind: literals and ``.`` only, so it cannot
    backtrack; a search costs at most len(resource) x len(text) steps."""
    return re.compile("".join("." if char == "?" else re.escape(char) for char in text), re.DOTALL)
