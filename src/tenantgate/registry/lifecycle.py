"""The tenant lifecycle: Draft -> Active <-> Suspended -> Archived -> Deleted, enforced by the registry."""

from __future__ import annotations

from tenantgate.errors import FailedPrecondition
from tenantgate.model import TenantState

ALLOWED_TRANSITIONS: dict[TenantState, frozenset[TenantState]] = {
    TenantState.DRAFT: frozenset({TenantState.ACTIVE}),
    TenantState.ACTIVE: frozenset({TenantState.SUSPENDED}),
    TenantState.SUSPENDED: frozenset({TenantState.ACTIVE, TenantState.ARCHIVED}),
    TenantState.ARCHIVED: frozenset({TenantState.DELETED}),
    TenantState.DELETED: frozenset(),
}
# A tenant may enter the registry in any state it could be in (an existing platform's suspended or
# archived customers are imported as they are), but never as Deleted: that state only ends a life.
INITIAL_STATES = frozenset(TenantState) - {TenantState.DELETED}


def check_creation(tenant_id: str, state: TenantState) -> None:
    if state not in INITIAL_STATES:
        raise FailedPrecondition(f"tenant {tenant_id!r} cannot be created in state {state.value}",
                                 field="spec.state")


def check_transition(tenant_id: str, before: TenantState, after: TenantState, *, state_since: float,
                     retention: int, now: float, force: bool = False) -> None:
    """Raise FailedPrecondition unless ``before -> after`` is legal now. Archived -> Deleted waits out the
    tenant's retention period unless forced."""
    if before is after:
        return
    if after not in ALLOWED_TRANSITIONS[before]:
        allowed = ", ".join(sorted(s.value for s in ALLOWED_TRANSITIONS[before])) or "none"
        raise FailedPrecondition(f"tenant {tenant_id!r} cannot go from {before.value} to {after.value} "
                                 f"(from {before.value}: {allowed})", field="spec.state")
    if after is TenantState.DELETED and not force and now < state_since + retention:
        days = (state_since + retention - now) / 86400
        raise FailedPrecondition(f"tenant {tenant_id!r} cannot go from Archived to Deleted for another {days:.1f} "
                                 "days (its retention period); force it to delete now", field="spec.state")
