"""What the client's calls answer: typed, immutable values, not protobuf messages.

The main ones keep the message they were read from as ``wire`` (left out of repr, comparisons and hashes), for
printing it as JSON (``google.protobuf.json_format``); a key's ``wire`` holds its material, so it is never for
logs. Key material and bearer tokens appear in no repr.

The values every check and quota call makes (``Check``, ``Decision``, ``QuotaItemResult``, ``QuotaResult``) are
named tuples: building one costs a fifth of a frozen dataclass's instructions (which set each field through
``object.__setattr__``), and on the hot path that was most of what the SDK added to a raw stub's call. The rarer
answers are frozen dataclasses.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import grpc

from tenantgate.client._errors import CallError, error_from_status
from tenantgate.model import KeyState, TenantState

if TYPE_CHECKING:
    from tenantgate.v1 import decision_pb2 as pb


def _represent(value: Any, hidden: str) -> str:
    shown = ", ".join(f"{name}={field!r}" for name, field in zip(value._fields, value, strict=True) if name != hidden)
    return f"{type(value).__name__}({shown})"


# Equality, hashing and repr of the named tuples that end in ``wire``: every field but the last. Set by a class
# decorator, since a NamedTuple class can have no base but NamedTuple (and mypy refuses them in its body).

def _equal_without_wire(value: tuple[Any, ...], other: object) -> bool:
    return type(other) is type(value) and value[:-1] == other[:-1]


def _unequal_without_wire(value: tuple[Any, ...], other: object) -> bool:
    return not _equal_without_wire(value, other)


def _hash_without_wire(value: tuple[Any, ...]) -> int:
    return hash(value[:-1])


def _repr_without_wire(value: Any) -> str:
    return _represent(value, "wire")


_TupleClass = TypeVar("_TupleClass", bound=type[tuple[Any, ...]])


def _wire_hidden(cls: _TupleClass) -> _TupleClass:
    assert cls._fields[-1] == "wire", cls  # type: ignore[attr-defined]
    for name, method in (("__eq__", _equal_without_wire), ("__ne__", _unequal_without_wire),
                         ("__hash__", _hash_without_wire), ("__repr__", _repr_without_wire)):
        setattr(cls, name, method)
    return cls


class Reason(StrEnum):
    """Why a check was allowed or denied (``tenantgate.v1.DecisionReason`` without its prefix)."""

    UNSPECIFIED = "UNSPECIFIED"  # also what a reason this client does not know yet reads as
    ALLOWED = "ALLOWED"
    NO_MATCHING_GRANT = "NO_MATCHING_GRANT"
    EXPLICIT_DENY = "EXPLICIT_DENY"
    TENANT_NOT_ACTIVE = "TENANT_NOT_ACTIVE"
    TENANT_NOT_FOUND = "TENANT_NOT_FOUND"
    TOKEN_INVALID = "TOKEN_INVALID"
    TOKEN_EXPIRED = "TOKEN_EXPIRED"
    CROSS_TENANT_DENIED = "CROSS_TENANT_DENIED"
    UNKNOWN_ENVIRONMENT = "UNKNOWN_ENVIRONMENT"


class Check(NamedTuple):
    """One access question, for ``check_access_batch``; ``correlation_id`` comes back with its answer."""

    tenant_id: str
    action: str
    resource: str
    subject: str = ""
    token: str = ""  # a bearer credential: never in a repr
    subject_tenant_id: str = ""
    environment: str = ""
    context: Mapping[str, str] | None = None
    correlation_id: str = ""

    def __repr__(self) -> str:
        return _represent(self, "token")


@_wire_hidden
class Decision(NamedTuple):
    """The answer to an access check. A deny is a Decision (``allowed`` False, with its reason), never an
    error; ``bool(decision)`` is ``decision.allowed``.

    ``rule`` is the rule that decided (empty when none matched), ``revision`` the registry revision it was
    decided at, ``decision_id`` the id in the server's decision log. ``tenant_id``, ``subject`` (empty when
    a token was sent), ``action`` and ``resource`` repeat the question."""

    allowed: bool
    reason: Reason
    rule: str
    revision: int
    decision_id: str
    tenant_id: str = ""
    subject: str = ""
    action: str = ""
    resource: str = ""
    correlation_id: str = ""
    wire: pb.CheckAccessResponse | None = None

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True, slots=True)
class CheckFailure:
    """A check of a batch that could not be decided (malformed, say): an error, never a deny in disguise.
    ``error()`` is the exception the same check alone would have raised."""

    status: grpc.StatusCode
    message: str
    field: str = ""
    correlation_id: str = ""

    def error(self) -> CallError:
        return error_from_status(self.status, self.message, self.field)


class QuotaItemResult(NamedTuple):
    """One quota of a ConsumeQuota. Times are seconds: ``reset_after``, until the quota is whole again (rate)
    or its window ends (calendar); ``retry_after``, how long until the same amount could be admitted (0 when
    allowed). ``lease_id``: the lease a concurrency quota handed out, to release later."""

    quota: str
    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float
    lease_id: str = ""
    shadow: bool = False  # counted and reported, never denied


@_wire_hidden
class QuotaResult(NamedTuple):
    """The answer to a ConsumeQuota: ``allowed`` when every item was admitted (a denied call spends nothing);
    ``bool(result)`` is ``result.allowed``. ``revision``: the registry revision of the quota specs applied."""

    allowed: bool
    items: tuple[QuotaItemResult, ...]
    revision: int
    tenant_id: str = ""
    wire: pb.ConsumeQuotaResponse | None = None

    def __bool__(self) -> bool:
        return self.allowed

    @property
    def retry_after(self) -> float:
        """Seconds to wait before the same call could be admitted: the longest wait of its denied items."""
        return max((item.retry_after for item in self.items if not item.allowed), default=0.0)

    @property
    def lease_ids(self) -> dict[str, str]:
        """Quota name -> the lease acquired, for the concurrency quotas of the call."""
        return {item.quota: item.lease_id for item in self.items if item.lease_id}

    def item(self, quota: str) -> QuotaItemResult:
        for item in self.items:
            if item.quota == quota:
                return item
        raise KeyError(quota)


@dataclass(frozen=True, slots=True)
class TenantKey:
    """A version of a tenant's key. ``material`` (the raw key bytes) is in no repr, nor is ``wire``."""

    key_id: str
    version: int
    algorithm: str
    material: bytes = field(repr=False)
    state: KeyState | None  # None: a state this client does not know
    created_at: datetime.datetime | None
    wire: pb.GetTenantKeyResponse | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class KeyVersionInfo:
    key_id: str
    version: int
    algorithm: str
    state: KeyState | None
    created_at: datetime.datetime | None


@dataclass(frozen=True, slots=True)
class KeyMetadata:
    """The versions of a tenant key and their states, never their material."""

    versions: tuple[KeyVersionInfo, ...]
    primary_version: int  # what GetTenantKey serves by default
    min_decryption_version: int  # versions below it are not served
    wire: pb.GetTenantKeyMetadataResponse | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class DataKey:
    """A data key (GetDataKey, DecryptDataKey): ``plaintext`` to use and forget (in no repr), ``wrapped`` to
    store beside the data; ``key_id`` and ``version`` name the tenant key version that wraps it."""

    key_id: str
    version: int
    plaintext: bytes = field(repr=False)
    wrapped: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What ValidateToken found: ``valid``, or ``reason`` and ``detail`` saying why not."""

    valid: bool
    reason: Reason
    tenant_id: str
    subject: str
    scopes: tuple[str, ...]
    expires_at: datetime.datetime | None
    detail: str = ""
    wire: pb.ValidateTokenResponse | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class TenantInfo:
    """A tenant as a server sees it (ResolveTenant): what a router or gateway needs. ``stale``: answered
    from a last-known-good snapshot while the registry is unreachable."""

    tenant_id: str
    name: str
    state: TenantState | None  # None: a state this client does not know
    plan: str
    profile: str
    isolation: str
    environments: tuple[str, ...]
    features: tuple[str, ...]
    labels: Mapping[str, str]
    revision: int
    stale: bool
    wire: pb.ResolveTenantResponse | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class HeldRole:
    """A role a subject holds in its home tenant: by a binding of its own, or of ``group`` (``group:support``);
    ``environments``: those the binding is limited to, empty when it applies in every one."""

    role: str
    group: str = ""
    environments: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TenantAccess:
    """Whether a subject may use a tenant at all, whatever the action (CheckTenantAccess; each tenant of
    ListSubjectTenants). ``bool(access)`` is ``access.allowed``; ``reason`` says why not (TENANT_NOT_ACTIVE,
    CROSS_TENANT_DENIED, NO_MATCHING_GRANT...). ``roles``: what the subject holds there, in its home tenant;
    ``grants``: the cross-tenant grants naming it (``acme/grants/0``), in another tenant. ``subject``,
    ``subject_tenant_id`` and ``revision`` are set on a CheckTenantAccess answer."""

    tenant_id: str
    allowed: bool
    reason: Reason
    state: TenantState | None
    roles: tuple[HeldRole, ...] = ()
    grants: tuple[str, ...] = ()
    subject: str = ""
    subject_tenant_id: str = ""
    revision: int = 0
    wire: pb.CheckTenantAccessResponse | None = field(default=None, repr=False, compare=False)

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True, slots=True)
class SubjectTenants:
    """One page of the tenants a subject may use (ListSubjectTenants), sorted by tenant id. ``reason`` is ALLOWED
    for a known subject (even one with no tenant), TOKEN_INVALID or TOKEN_EXPIRED (``detail`` says why) for a token
    that does not verify. ``next_page_token``: pass it as ``page_token`` for the next page; empty on the last."""

    reason: Reason
    subject: str
    subject_tenant_id: str
    tenants: tuple[TenantAccess, ...]
    next_page_token: str
    revision: int
    detail: str = ""
    wire: pb.ListSubjectTenantsResponse | None = field(default=None, repr=False, compare=False)
