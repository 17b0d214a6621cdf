"""The decision flow of the SDK's enforcement, with no transport and no front door: a ``Question`` (tenant,
action, resource, the caller's token or trusted subject, quotas to spend) is answered ``Admitted`` (the
verified ``TenantContext``, the concurrency leases to give back) or ``Refused`` (a reason, in the words the
Envoy adapter and the ASGI middleware use). Each front door turns a refusal into its own answer: the gRPC
interceptors into a status (``enforcement``).

``admission`` is a generator: it yields the tenantgate calls it needs at each step (a tuple of
``_calls.Call``, made together) and is sent their answers, or thrown the first one's ``CallError``. The
blocking interceptor makes them one by one on a ``Client``, the asyncio one awaits them at once on an
``AsyncClient`` (the runners at the end); the flow exists once and does no I/O.

The calls, for a caller with a token of home tenant H asking about tenant T:
  - T named by the call: CheckAccess with the token and ValidateToken for the identity it verifies, together.
    A bad token is tenantgate's TOKEN_INVALID / TOKEN_EXPIRED decision, logged with its id.
  - T not named: ValidateToken first (T is H), then CheckAccess.
  - A trusted subject instead of a token: CheckAccess for that subject of T.
  - Allowed, with quotas: one ConsumeQuota of them all for T (all or nothing); a quota T does not declare is
    not T's to limit and is left out, as the Envoy rate limit adapter leaves it out.
An error meaning tenantgate gave no answer (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED) refuses with
UNAVAILABLE unless ``fail_open``; any other error refuses whatever ``fail_open`` says, and is logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

import tenantgate.client._calls as calls
from tenantgate import ratelimit_headers
from tenantgate.client._calls import Call
from tenantgate.client._errors import (
    CallError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from tenantgate.client._results import Decision, QuotaResult, Reason, TokenInfo
from tenantgate.client.context import TenantContext

if TYPE_CHECKING:
    from tenantgate.client.aio import AsyncClient
    from tenantgate.client.sync import Client

T = TypeVar("T")

log = logging.getLogger("tenantgate.client.enforcement")

# Errors that mean tenantgate could not be asked: the only ones ``fail_open`` lets a call through on. Not a deadline
# exceeded: a replica waiting for a revision, or compiling a tenant the caller names, answers late, not never.
NO_ANSWER = (Unavailable, ResourceExhausted)
TOKEN_REASONS = frozenset({Reason.TOKEN_INVALID, Reason.TOKEN_EXPIRED})
# The reasons of refusals made here rather than by a CheckAccess decision.
UNAUTHENTICATED = "UNAUTHENTICATED"  # no credentials at all
INVALID_REQUEST = "INVALID_REQUEST"  # malformed credentials or tenant
QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
TENANT_UNAVAILABLE = "TENANT_UNAVAILABLE"  # a tenant tenantgate cannot read now
UNAVAILABLE = "UNAVAILABLE"  # tenantgate gave no answer


@dataclass(frozen=True, slots=True)
class Question:
    """One call to decide. ``tenant_id`` is empty when only the token can name it; ``subject`` (with no
    token) is a subject the service trusts the caller to name; ``quotas``: name -> amount to spend."""

    tenant_id: str
    action: str
    resource: str
    token: str = field(default="", repr=False)
    subject: str = ""
    environment: str = ""
    quotas: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Lease:
    """A concurrency quota's unit held for the call, given back when it ends."""

    quota: str
    amount: int
    lease_id: str


@dataclass(frozen=True, slots=True)
class Admitted:
    """The call goes on as ``tenant``, verified; None only when tenantgate could not be asked and the policy
    fails open (nothing was verified, so nothing is vouched for)."""

    tenant: TenantContext | None
    leases: tuple[Lease, ...] = ()


@dataclass(frozen=True, slots=True)
class Refused:
    """The call is answered here and never runs. ``reason``: a CheckAccess reason (NO_MATCHING_GRANT,
    TOKEN_EXPIRED...) or one of this module's (UNAUTHENTICATED, INVALID_REQUEST, QUOTA_EXCEEDED,
    TENANT_UNAVAILABLE, UNAVAILABLE); ``retry_after``: whole seconds, for QUOTA_EXCEEDED."""

    reason: str
    detail: str = ""
    decision_id: str = ""
    retry_after: int = 0


Steps = Generator[tuple[Call[Any], ...], tuple[Any, ...], Any]
Admission = Generator[tuple[Call[Any], ...], tuple[Any, ...], Admitted | Refused]


def admission(question: Question, *, fail_open: bool) -> Admission:
    """Decide ``question`` (see the module docstring)."""
    try:
        return (yield from _decide(question))
    except NO_ANSWER as error:
        if fail_open:
            log.warning("tenantgate gave no answer (%s): letting %s on %s of tenant %r through unverified, as "
                        "fail_open asks", error, question.action, question.resource, question.tenant_id)
            return Admitted(None)
        log.warning("tenantgate gave no answer (%s): refusing %s on %s", error, question.action, question.resource)
        return Refused(UNAVAILABLE, "tenantgate cannot be reached")
    except InvalidArgument as error:
        return Refused(INVALID_REQUEST, error.details)
    except FailedPrecondition as error:
        # A tenant tenantgate cannot read: never failed open, since a forged token can name any tenant.
        return Refused(TENANT_UNAVAILABLE, error.details)
    except CallError as error:
        log.error("tenantgate could not decide %s on %s of tenant %r: %s", question.action, question.resource,
                  question.tenant_id, error)
        return Refused(UNAVAILABLE, "tenantgate could not decide")


def _decide(question: Question) -> Admission:
    tenant_id, token = question.tenant_id, question.token
    identity: TokenInfo | None = None
    if not token:
        decision: Decision = (yield (calls.check_access(tenant_id, question.action, question.resource,
                                                        subject=question.subject,
                                                        environment=question.environment),))[0]
    elif tenant_id:
        decision, identity = yield (calls.check_access(tenant_id, question.action, question.resource, token=token,
                                                       environment=question.environment),
                                    calls.validate_token(token))
    else:
        identity = (yield (calls.validate_token(token),))[0]
        if not identity.subject:
            return _token_refusal(identity)
        tenant_id = identity.tenant_id
        decision = (yield (calls.check_access(tenant_id, question.action, question.resource, token=token,
                                              environment=question.environment),))[0]
    if not decision.allowed:
        return Refused(decision.reason.value, decision_id=decision.decision_id)
    if identity is not None and not identity.subject:
        # Allowed, yet the token did not verify a moment later (it expired in between): no identity to vouch for.
        return _token_refusal(identity, decision.decision_id)
    subject, home_tenant_id = (identity.subject, identity.tenant_id) if identity else (question.subject, tenant_id)
    tenant = TenantContext(tenant_id, subject, home_tenant_id, question.environment, token, decision.decision_id)
    if not question.quotas:
        return Admitted(tenant)
    return (yield from _consume(tenant, question.quotas))


def _undeclared_quota(error: NotFound, quotas: Mapping[str, int]) -> str | None:
    """The quota a ConsumeQuota found undeclared, as the status's ``google.rpc.ResourceInfo`` names it."""
    return error.resource_name if error.resource_type == "quota" and error.resource_name in quotas else None


def _token_refusal(identity: TokenInfo, decision_id: str = "") -> Refused:
    reason = identity.reason if identity.reason in TOKEN_REASONS else Reason.TOKEN_INVALID
    return Refused(reason.value, identity.detail, decision_id)


def _consume(tenant: TenantContext, amounts: Mapping[str, int]) -> Admission:
    quotas = dict(amounts)
    while True:
        try:
            # Keyed by the decision and what it spends: a consume the client retries after a lost answer is
            # counted once.
            key = f"{tenant.decision_id}/{','.join(sorted(quotas))}" if tenant.decision_id else ""
            result: QuotaResult = (yield (calls.consume_quota(tenant.tenant_id, quotas, idempotency_key=key),))[0]
            break
        except NotFound as error:
            undeclared = _undeclared_quota(error, quotas)
            if undeclared is None:
                raise
            del quotas[undeclared]
            if not quotas:
                return Admitted(tenant)
        except FailedPrecondition as error:  # a Suspended tenant whose suspended_allow let the call in
            return Refused(Reason.TENANT_NOT_ACTIVE.value, error.details, tenant.decision_id)
    if result.allowed:
        return Admitted(tenant, tuple(Lease(item.quota, quotas[item.quota], item.lease_id)
                                      for item in result.items if item.lease_id))
    refused = [item for item in result.items if not item.allowed and not item.shadow]
    return Refused(QUOTA_EXCEEDED, f"quota {', '.join(item.quota for item in refused)} of tenant "
                                   f"{tenant.tenant_id} is spent", tenant.decision_id,
                   ratelimit_headers.retry_after(item.retry_after for item in refused))


def release(admitted: Admitted) -> Steps:
    """Give back the concurrency quota units held for a call that has ended; a failure is logged (the lease
    expires by itself after the quota's lease_ttl)."""
    if admitted.tenant is None:
        return
    for lease in admitted.leases:
        try:
            yield (calls.consume_quota(admitted.tenant.tenant_id, {lease.quota: lease.amount}, release=True,
                                       lease_id=lease.lease_id),)
        except CallError as error:
            log.warning("could not release lease %s of quota %r of tenant %r: %s", lease.lease_id, lease.quota,
                        admitted.tenant.tenant_id, error)


async def release_surviving_cancellation(client: AsyncClient, admitted: Admitted,
                                         running: set[asyncio.Future[None]]) -> None:
    """``release`` on ``client`` as a task of its own, kept in ``running`` until done, so that the cancellation of
    the call or request that held the leases (its caller gone) does not stop their return."""
    if not admitted.leases:
        return
    task = asyncio.ensure_future(run_awaiting(client, release(admitted)))
    running.add(task)
    task.add_done_callback(running.discard)
    await asyncio.shield(task)


# The runners: each call a flow asks for made through a client, its answer (or error) sent back into the flow.
# ``time_left``, when given, is how long the caller that the flow decides for still waits (its call's remaining
# deadline): no call to tenantgate is given longer than that, nor longer than the client's own deadline.

TimeLeft = Callable[[], float | None]


def _within(call: Call[T], time_left: TimeLeft | None, default: float | None) -> Call[T]:
    left = time_left() if time_left is not None else None
    if left is None:
        return call
    own = default if call.timeout is None else call.timeout
    return call._replace(timeout=max(0.0, left if own is None else min(own, left)))


def run_blocking(client: Client, steps: Generator[tuple[Call[Any], ...], tuple[Any, ...], T],
                 time_left: TimeLeft | None = None) -> T:
    """Each step's calls one after the other on a blocking ``Client``."""
    default = client.config.timeout
    try:
        asked = next(steps)
        while True:
            try:
                # The client's own runner: the call with its deadline, metadata and read-your-writes.
                answers = tuple(client._run(_within(call, time_left, default)) for call in asked)
            except CallError as error:
                asked = steps.throw(error)
            else:
                asked = steps.send(answers)
    except StopIteration as finished:
        return cast(T, finished.value)


async def run_awaiting(client: AsyncClient, steps: Generator[tuple[Call[Any], ...], tuple[Any, ...], T],
                       time_left: TimeLeft | None = None) -> T:
    """Each step's calls at once on an ``AsyncClient``; an error of one is thrown once all have ended."""
    default = client.config.timeout
    try:
        asked = next(steps)
        while True:
            answers = await asyncio.gather(*(client._run(_within(call, time_left, default)) for call in asked),
                                           return_exceptions=True)
            error = next((answer for answer in answers if isinstance(answer, BaseException)), None)
            if error is None:
                asked = steps.send(tuple(answers))
            elif isinstance(error, CallError):
                asked = steps.throw(error)
            else:
                raise error
    except StopIteration as finished:
        return cast(T, finished.value)
