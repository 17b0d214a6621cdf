"""Which tenants a subject may use, whatever the action: CheckTenantAccess for one tenant, ListSubjectTenants
for all of them, both decided here by one function so that they always agree.

A subject (home tenant H, subject S) holds access to tenant T when
  - T is H and S is bound there, directly or through a group (H's compiled ``members``), or
  - T is another tenant whose manifest grants (H, S) something (the snapshot's ``grants`` index).
Whether it may use T then follows CheckAccess's order, with no action: T must exist and be Active or Suspended
(TENANT_NOT_ACTIVE otherwise); a named environment must be one T declares (UNKNOWN_ENVIRONMENT); a Suspended T
says so (TENANT_NOT_ACTIVE: what its ``suspended_allow`` still permits is per action, for CheckAccess); across
tenants H must be Active and T must grant (H, S) (CROSS_TENANT_DENIED); at home S must hold a role
(NO_MATCHING_GRANT). Tenant-wide denies and the rules of the roles are per action and not looked at.

Environments: one named counts only the bindings that apply in it; none counts every binding (a binding limited
to some environments is reported with them). That differs on purpose from CheckAccess, where naming none means a
request outside every environment: here the question is whether the subject may use the tenant at all.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

from tenantgate.engines.access import LIVE_STATES, Reason, Undecided
from tenantgate.membership import Granting, HeldRole
from tenantgate.model import TenantState
from tenantgate.snapshot import Snapshot, TenantView

# Candidates a page examines at most, listed or filtered out: a page's work is bounded whatever the registry.
MAX_EXAMINED = 5000

_INACTIVE_STATES = (TenantState.DRAFT, TenantState.ARCHIVED)


@dataclass(slots=True)
class TenantAccess:
    tenant_id: str
    state: TenantState | None  # None: no such tenant
    allowed: bool
    reason: Reason
    roles: tuple[HeldRole, ...] = ()  # the home tenant: the roles held (that apply in the environment asked)
    grants: tuple[str, ...] = ()  # another tenant: its grants that name the subject, "acme/grants/0"


@dataclass(slots=True)
class TenantPage:
    tenants: list[TenantAccess]
    # The last tenant examined when more candidates follow it (the next page starts after it); "" at the end.
    resume_after: str


def to_compile(snapshot: Snapshot, tenant_id: str) -> list[TenantView]:
    """``tenant_id`` when it must be compiled first and is not yet: the tenant ``check_tenant`` checks (its
    environments, and its members when it is the home tenant), or the home tenant ``list_tenants`` lists for
    (its members). Deleted tenants are never read."""
    view = snapshot.tenants.get(tenant_id)
    return [view] if view is not None and view.pending and view.state is not TenantState.DELETED else []


def check_tenant(snapshot: Snapshot, tenant_id: str, home: str, subject: str,
                 environment: str = "") -> TenantAccess | Undecided:
    """May (home, subject) use ``tenant_id`` (compiled first: ``to_compile``)?"""
    tenant = snapshot.tenants.get(tenant_id)
    if tenant is None:
        return TenantAccess(tenant_id, None, False, Reason.TENANT_NOT_FOUND)
    if tenant.state is TenantState.DELETED:
        return TenantAccess(tenant_id, tenant.state, False, Reason.TENANT_NOT_ACTIVE)
    decided = _decide(snapshot, tenant, home, subject, environment)
    return decided if isinstance(decided, Undecided) else decided[0]


def _decide(snapshot: Snapshot, tenant: TenantView, home: str, subject: str, environment: str,
            indexes: tuple[int, ...] | None = None) -> tuple[TenantAccess, frozenset[str]] | Undecided:
    """The answer for ``tenant``, and the environments it declares; ``indexes``: of its grants that name the
    subject, when the caller has them from the index already."""
    roles: tuple[HeldRole, ...] = ()
    grants: tuple[str, ...] = ()
    if tenant.id == home:
        compiled = tenant.built
        if compiled is None:
            return Undecided(tenant.unavailable)
        roles = tuple(role for role in compiled.members.get(subject, ()) if role.applies_in(environment))
        environments = compiled.policy.environments
    else:
        if indexes is None:
            indexes = snapshot.grants.grants(home, subject, tenant.id)
        grants = tuple(f"{tenant.id}/grants/{index}" for index in indexes)
        # A tenant that grants the subject carries its environments in its reach; any other must be compiled.
        if indexes:
            environments = tenant.reach.environments
        elif tenant.built is not None:
            environments = tenant.built.policy.environments
        elif environment and tenant.state in LIVE_STATES:
            return Undecided(tenant.unavailable)
        else:
            environments = frozenset()
    reason = _reason(snapshot, tenant, home, environment, environments, bool(roles or grants))
    return TenantAccess(tenant.id, tenant.state, reason is Reason.ALLOWED, reason, roles, grants), environments


def _reason(snapshot: Snapshot, tenant: TenantView, home: str, environment: str, environments: frozenset[str],
            holds: bool) -> Reason:
    """CheckAccess's order (engines/access.py), with no action."""
    if tenant.state not in LIVE_STATES:
        return Reason.TENANT_NOT_ACTIVE
    if environment and environment not in environments:
        return Reason.UNKNOWN_ENVIRONMENT
    if tenant.state is TenantState.SUSPENDED:
        return Reason.TENANT_NOT_ACTIVE
    if tenant.id != home:
        home_tenant = snapshot.tenants.get(home)
        if home_tenant is None or home_tenant.state is not TenantState.ACTIVE or not holds:
            return Reason.CROSS_TENANT_DENIED
        return Reason.ALLOWED
    return Reason.ALLOWED if holds else Reason.NO_MATCHING_GRANT


def _start(granting: Granting, after: str) -> int:
    """Where the grantors after tenant ``after`` start in ``granting`` (sorted by tenant id)."""
    return bisect_right(granting, after, key=lambda entry: entry[0]) if after else 0


def examinable(snapshot: Snapshot, home: str, subject: str, after: str) -> int:
    """The most candidates a page of ``list_tenants`` after tenant ``after`` may examine, whatever its ``limit``:
    the grantors that follow ``after``, and the home tenant when it does."""
    granting = snapshot.grants.granting(home, subject)
    return min(len(granting) - _start(granting, after) + (home > after), MAX_EXAMINED)


def list_tenants(snapshot: Snapshot, home: str, subject: str, environment: str = "", *, after: str = "",
                 limit: int = 100, include_inactive: bool = False) -> TenantPage | Undecided:
    """The tenants after ``after`` (by id) where (home, subject) holds a binding or a grant, at most ``limit``,
    each with what ``check_tenant`` answers for it. Left out: Deleted tenants; Draft and Archived ones unless
    ``include_inactive``; with an ``environment``, tenants that do not declare it and a home tenant where no role
    applies in it. Examines at most MAX_EXAMINED candidates, so a page may hold fewer than ``limit`` (even none)
    while ``resume_after`` says more follow."""
    granting = snapshot.grants.granting(home, subject)
    position = _start(granting, after)
    home_tenant = snapshot.tenants.get(home)
    home_next = home_tenant is not None and home > after and home_tenant.state is not TenantState.DELETED
    if home_next and home_tenant is not None:
        compiled = home_tenant.built
        if compiled is None:
            return Undecided(home_tenant.unavailable)
        home_next = subject in compiled.members
    found: list[TenantAccess] = []
    examined, last = 0, ""
    while (position < len(granting) or home_next) and len(found) < limit and examined < MAX_EXAMINED:
        indexes: tuple[int, ...] | None = None
        if home_next and (position == len(granting) or home < granting[position][0]):
            last, home_next = home, False
        else:
            (last, indexes), position = granting[position], position + 1
        examined += 1
        tenant = snapshot.tenants.get(last)
        if tenant is None or tenant.state is TenantState.DELETED or (
                tenant.state in _INACTIVE_STATES and not include_inactive):
            continue
        decided = _decide(snapshot, tenant, home, subject, environment, indexes)
        if isinstance(decided, Undecided):
            return decided
        access, environments = decided
        if (environment and environment not in environments) or (tenant.id == home and not access.roles):
            continue
        found.append(access)
    more = position < len(granting) or home_next
    return TenantPage(found, last if more else "")
