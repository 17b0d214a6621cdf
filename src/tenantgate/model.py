"""The tenant as the registry describes it: plain, frozen data parsed from a manifest document.

Every layer reads these types; none of them does I/O or knows how it was stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

# How long an Archived tenant is kept before it may be Deleted, unless its manifest says otherwise.
DEFAULT_RETENTION = 30 * 86400


class TenantState(StrEnum):
    DRAFT = "Draft"
    ACTIVE = "Active"
    SUSPENDED = "Suspended"
    ARCHIVED = "Archived"
    DELETED = "Deleted"


class QuotaKind(StrEnum):
    RATE = "rate"  # token bucket
    WINDOW = "window"  # calendar window (day, week, month; UTC)
    CONCURRENCY = "concurrency"  # leases acquired and released
    ALLOCATION = "allocation"  # counts that go up and down
    VOLUME = "volume"  # an allocation measured in bytes


class CalendarPeriod(StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


def key_id(tenant_id: str, purpose: str, version: int) -> str:
    """How one version of a tenant key is named, in answers, audit entries and messages."""
    return f"{tenant_id}/{purpose}/v{version}"


class KeyState(IntEnum):
    """Values match tenantgate.v1.KeyState."""

    ENABLED = 1
    DISABLED = 2
    DESTROYED = 3


@dataclass(frozen=True, slots=True)
class QuotaSpec:
    name: str
    kind: QuotaKind
    limit: int
    # rate: the bucket refills `limit` units every `per_seconds`; it holds at most `burst` units.
    per_seconds: int = 0
    burst: int = 0
    period: CalendarPeriod | None = None
    lease_ttl: float = 0.0
    shadow: bool = False
    # What to answer when the counter backend cannot be reached: "deny", "allow", or "" for the
    # server's default (deny unless configured otherwise).
    on_backend_error: str = ""

    @property
    def capacity(self) -> int:
        """What can be held at once: the bucket size for rate quotas, the limit for the others."""
        return self.burst if self.kind is QuotaKind.RATE else self.limit

    @property
    def releasable(self) -> bool:
        return self.kind in (QuotaKind.CONCURRENCY, QuotaKind.ALLOCATION, QuotaKind.VOLUME)


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Binding:
    subject: str
    roles: tuple[str, ...]
    # None: every environment, and requests that name none.
    environments: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class CrossTenantGrant:
    tenant: str
    subject: str
    allow: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AccessSpec:
    roles: Mapping[str, Role] = field(default_factory=dict)
    bindings: tuple[Binding, ...] = ()
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    deny: tuple[str, ...] = ()
    grants: tuple[CrossTenantGrant, ...] = ()
    suspended_allow: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class IssuerSpec:
    issuer: str
    audience: str
    jwks_json: str  # the inline JWKS as canonical JSON
    tenant_claim: str = "tid"
    subject_claim: str = "sub"


@dataclass(frozen=True, slots=True)
class KeysSpec:
    purposes: tuple[str, ...] = ()
    readers: frozenset[str] = frozenset()
    # Callers that may read key metadata (ids, versions, states) but not material.
    metadata_readers: frozenset[str] = frozenset()
    rotate_every: int | None = None


@dataclass(frozen=True, slots=True)
class TenantSpec:
    id: str
    name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    state: TenantState = TenantState.DRAFT
    plan: str = ""
    profile: str = "multi-tenant"
    isolation: str = "soft"
    environments: tuple[str, ...] = ()
    features: tuple[str, ...] = ()
    quotas: Mapping[str, QuotaSpec] = field(default_factory=dict)
    access: AccessSpec = field(default_factory=AccessSpec)
    issuers: tuple[IssuerSpec, ...] = ()
    keys: KeysSpec = field(default_factory=KeysSpec)
    retention: int = DEFAULT_RETENTION


@dataclass(frozen=True, slots=True)
class PlanSpec:
    """A ``kind: Plan`` document: what every tenant naming it in ``spec.plan`` starts from (``plans.py`` merges
    the two, field by field)."""

    id: str
    name: str = ""
    features: tuple[str, ...] = ()
    quotas: Mapping[str, QuotaSpec] = field(default_factory=dict)
    roles: Mapping[str, Role] = field(default_factory=dict)  # the default access roles
