"""Who may use which tenant: the roles a subject holds in its home tenant, and the other tenants whose
cross-tenant grants name it, indexed for ListSubjectTenants and CheckTenantAccess.

Bindings never cross tenants: a binding in tenant T's manifest is about T's own subjects (identity is always
the pair home tenant, subject). So the one tenant a subject (H, S) reaches through bindings is its home H, and
its roles there are read from H's compiled tenant (``members_of``, built when H compiles, off the event loop).
The only question that spans tenants is which tenants grant (H, S) something: ``GrantIndex``, a reverse index
of every tenant's grants that the snapshot carries. It is built from what each tenant's view holds without
compiling it (``Reach``), once for a full snapshot, then changed copy-on-write for the tenants a change touches
only, never rebuilt from every tenant.

Plain data: no I/O, nothing of the layers above.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tenantgate.model import AccessSpec
from tenantgate.policy import GROUP
from tenantgate.sharing import EMPTY_MAPPING, EMPTY_SET, interned, shared_set


@dataclass(frozen=True, slots=True)
class HeldRole:
    """A role a subject holds in its home tenant, and how."""

    role: str
    group: str  # "group:support" when a group's binding gives it; "" for the subject's own binding
    environments: frozenset[str] | None  # None: every environment

    def applies_in(self, environment: str) -> bool:
        """Whether the binding counts for ``environment``; "" asks about any environment, so every one does."""
        return not environment or self.environments is None or environment in self.environments


def members_of(access: AccessSpec) -> Mapping[str, tuple[HeldRole, ...]]:
    """Each subject bound in a tenant, directly or as a member of a group, with the roles it holds (in binding
    order, each once). A ``group:`` name is expanded to its members and never becomes a key: no caller can
    present itself as a group."""
    held: dict[str, dict[HeldRole, None]] = {}
    for binding in access.bindings:
        if binding.subject.startswith(GROUP):
            group, principals = binding.subject, access.groups.get(binding.subject[len(GROUP):], ())
        else:
            group, principals = "", (binding.subject,)
        roles = [interned(HeldRole(role, group, binding.environments)) for role in binding.roles]
        for principal in principals:
            if principal.startswith(GROUP):  # refused by manifest validation; never expanded
                continue
            found = held.setdefault(principal, {})
            for role in roles:
                found[role] = None
    if not held:
        return EMPTY_MAPPING
    # Tenants made from one template bind their people alike: their tuples of roles are shared.
    return {subject: interned(tuple(roles)) for subject, roles in held.items()}


@dataclass(frozen=True, slots=True)
class Reach:
    """What a tenant grants to subjects of other tenants, read from its stored document without compiling it,
    so that a snapshot of many tenants indexes every grant at once (most tenants have none: ``NO_REACH``)."""

    # (home tenant, subject, index of the grant in spec.access.grants), in manifest order
    grants: tuple[tuple[str, str, int], ...]
    # The tenant's environments, which decide whether a grant counts in an environment asked about
    environments: frozenset[str]


NO_REACH = Reach((), EMPTY_SET)


def reach_of(tenant_id: str, grants: Iterable[tuple[str, str]], environments: Iterable[str]) -> Reach:
    """The reach of a tenant whose spec.access.grants name ``grants`` (home tenant, subject) in order. A grant to
    a group (refused by manifest validation) or to the tenant's own subjects (whose bindings decide) gives
    nothing across tenants, as in the access engine, and is left out."""
    found = tuple((home, subject, index) for index, (home, subject) in enumerate(grants)
                  if home != tenant_id and not subject.startswith(GROUP))
    return Reach(found, shared_set(environments)) if found else NO_REACH


# (granting tenant id, indexes of its grants that name the grantee), sorted by tenant id
Granting = tuple[tuple[str, tuple[int, ...]], ...]
_NOTHING: Granting = ()


def _tenant_of(entry: tuple[str, tuple[int, ...]]) -> str:
    return entry[0]


class GrantIndex:
    """(home tenant, subject) -> the tenants that grant it something, sorted by tenant id. Immutable: changes
    make a new index that shares every untouched entry with the old one."""

    __slots__ = ("_by_grantee",)

    def __init__(self, by_grantee: Mapping[tuple[str, str], Granting]) -> None:
        self._by_grantee = by_grantee

    def granting(self, home: str, subject: str) -> Granting:
        return self._by_grantee.get((home, subject), _NOTHING)

    def grants(self, home: str, subject: str, tenant_id: str) -> tuple[int, ...]:
        """The indexes of ``tenant_id``'s grants that name (home, subject); () when it grants it nothing."""
        granting = self._by_grantee.get((home, subject), _NOTHING)
        at = bisect_left(granting, tenant_id, key=_tenant_of)
        return granting[at][1] if at < len(granting) and granting[at][0] == tenant_id else ()

    def as_dict(self) -> dict[tuple[str, str], Granting]:
        """Every entry (tests compare indexes built in different ways)."""
        return dict(self._by_grantee)

    def __len__(self) -> int:
        return len(self._by_grantee)


EMPTY_INDEX = GrantIndex(EMPTY_MAPPING)


def _by_grantee(tenant_id: str, reach: Reach) -> dict[tuple[str, str], tuple[int, ...]]:
    found: dict[tuple[str, str], list[int]] = {}
    for home, subject, index in reach.grants:
        found.setdefault((home, subject), []).append(index)
    return {key: tuple(indexes) for key, indexes in found.items()}


def build_grant_index(tenants: Iterable[tuple[str, Reach]]) -> GrantIndex:
    """The index of every tenant's grants (a full snapshot's build)."""
    by_grantee: dict[tuple[str, str], list[tuple[str, tuple[int, ...]]]] = {}
    for tenant_id, reach in tenants:
        if reach.grants:
            for key, indexes in _by_grantee(tenant_id, reach).items():
                by_grantee.setdefault(key, []).append((tenant_id, indexes))
    if not by_grantee:
        return EMPTY_INDEX
    return GrantIndex({key: tuple(sorted(entries)) for key, entries in by_grantee.items()})


def with_grant_changes(index: GrantIndex, changes: Iterable[tuple[str, Reach, Reach]]) -> GrantIndex:
    """``index`` with each changed tenant's grants (tenant id, reach before, reach after) replaced. The changes are
    grouped by grantee first, then each grantee they touch gets its list rebuilt once: its untouched entries kept,
    the changed tenants' new ones merged in. Work in proportion to the changes plus the lists of the grantees they
    touch (not the product: an apply of N tenants that all grant one subject rebuilds its list once, not N times),
    and one copy of the top-level mapping when anything changed."""
    # grantee -> changed tenant -> the indexes of its grants that name the grantee now; () when none do any more
    touched: dict[tuple[str, str], dict[str, tuple[int, ...]]] = {}
    for tenant_id, before, after in changes:
        if before is after or before.grants == after.grants:
            continue
        for home, subject, _ in before.grants:
            touched.setdefault((home, subject), {})[tenant_id] = ()
        for key, indexes in _by_grantee(tenant_id, after).items():
            touched.setdefault(key, {})[tenant_id] = indexes
    if not touched:
        return index
    by_grantee = dict(index._by_grantee)
    for key, changed in touched.items():
        kept = [entry for entry in by_grantee.get(key, _NOTHING) if entry[0] not in changed]
        added = [(tenant_id, indexes) for tenant_id, indexes in changed.items() if indexes]
        if added:
            # kept is sorted already (a run the sort takes whole): the cost is the list plus the new entries' sort.
            kept = sorted(kept + added, key=_tenant_of)
        if kept:
            by_grantee[key] = tuple(kept)
        else:
            by_grantee.pop(key, None)
    return GrantIndex(by_grantee) if by_grantee else EMPTY_INDEX
