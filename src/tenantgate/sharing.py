"""One instance per distinct immutable value, so that tenants made from one template share their parts.

A registry of 100,000 tenants holds mostly the same few plans, roles, environments and key readers: kept once
each, a compiled tenant costs what is its own (ids, names, subjects) and little else. Only values that repeat
across tenants belong here; a value unique to one tenant would cost a cache entry and save nothing.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar, cast

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")

EMPTY_MAPPING: Mapping[Any, Any] = MappingProxyType({})
EMPTY_SET: frozenset[Any] = frozenset()


def interned(value: T) -> T:
    """The shared instance equal to ``value`` (hashable and immutable)."""
    return cast(T, _first_of(value))


@functools.lru_cache(maxsize=65536)
def _first_of(value: Any) -> Any:
    return value


def shared_text(text: str) -> str:
    """A name that many tenants repeat (a role, a quota, an environment, a label): one string for all."""
    return sys.intern(text)


def shared_texts(texts: Iterable[str]) -> tuple[str, ...]:
    return interned(tuple(sys.intern(text) for text in texts))


def shared_set(items: Iterable[T]) -> frozenset[T]:
    found = frozenset(items)
    return interned(found) if found else EMPTY_SET


def shared_mapping(items: Iterable[tuple[K, V]]) -> Mapping[K, V]:
    """A read-only mapping shared by every tenant whose mapping holds the same items in the same order."""
    pairs = tuple(items)
    return _mapping(pairs) if pairs else EMPTY_MAPPING


@functools.lru_cache(maxsize=16384)
def _mapping(pairs: tuple[tuple[K, V], ...]) -> Mapping[K, V]:
    return dict(pairs)
