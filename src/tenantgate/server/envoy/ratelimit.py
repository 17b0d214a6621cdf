"""Envoy's rate limit service (``envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit``) as one
ConsumeQuota: each descriptor names a tenant and one of its quotas with the entries ``tenant_id`` and
``quota``; all the descriptors of one request are consumed together, all or nothing, through the decider
(same counters, failure policy and metering as ConsumeQuota). Nothing is decided here.

What a request gets (the README's "Behind Envoy" documents the same):
- an unknown tenant, a malformed tenant id, a tenant that is not Active (or that this server cannot read),
  descriptors naming more than one tenant, more than MAX_DESCRIPTORS descriptors, or an amount ConsumeQuota
  refuses: OVER_LIMIT, never OK, with the reason in the body;
- a counter store that cannot be reached: each quota's failure policy, as ConsumeQuota, with no RateLimit
  headers (there are no counts to report) and the reason QUOTA_BACKEND_UNAVAILABLE when refused;
- a quota the tenant does not declare, or a descriptor without both entries: OK for that descriptor with no
  limit, as envoyproxy/ratelimit answers a descriptor it has no limit for;
- no snapshot, or one staler than ``--max-staleness``: UNAVAILABLE, and the filter's failure mode decides."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from tenantgate.engines.quota import MAX_ITEMS, ConsumeOutcome, ItemOutcome, QuotaRequestItem
from tenantgate.errors import InvalidArgument
from tenantgate.model import CalendarPeriod, QuotaKind, QuotaSpec, TenantState
from tenantgate.ratelimit_headers import (
    POLICY_HEADER,
    RETRY_AFTER_HEADER,
    STATE_HEADER,
    joined,
    policy_item,
    retry_after,
    state_item,
)
from tenantgate.server import requests
from tenantgate.server.decider import Decider
from tenantgate.server.status import maps_errors
from tenantgate.wiretime import set_seconds

OK = rls_pb2.RateLimitResponse.OK
OVER_LIMIT = rls_pb2.RateLimitResponse.OVER_LIMIT
_Unit = rls_pb2.RateLimitResponse.RateLimit
_UNITS_BY_SECONDS = {1: _Unit.SECOND, 60: _Unit.MINUTE, 3600: _Unit.HOUR, 86400: _Unit.DAY}
_UNITS_BY_PERIOD = {CalendarPeriod.DAY: _Unit.DAY, CalendarPeriod.WEEK: _Unit.WEEK, CalendarPeriod.MONTH: _Unit.MONTH}
_PERIOD_SECONDS = {CalendarPeriod.DAY: 86400, CalendarPeriod.WEEK: 7 * 86400}
_UINT32_MAX = (1 << 32) - 1
# At most as many descriptors as ConsumeQuota takes items: more is refused, whatever they name.
MAX_DESCRIPTORS = MAX_ITEMS


@dataclass(slots=True)
class Named:
    """What one descriptor asks for."""

    tenant_id: str
    quota: str
    amount: int


def _named(request: rls_pb2.RateLimitRequest) -> list[Named | None]:
    default_amount = request.hits_addend or 1
    named: list[Named | None] = []
    for descriptor in request.descriptors:
        tenant_id = quota = None
        for entry in descriptor.entries:
            if entry.key == "tenant_id":
                tenant_id = entry.value
            elif entry.key == "quota":
                quota = entry.value
        amount = descriptor.hits_addend.value if descriptor.HasField("hits_addend") else default_amount
        named.append(None if tenant_id is None or quota is None else Named(tenant_id, quota, amount))
    return named


class RateLimitServicer(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    def __init__(self, decider: Decider) -> None:
        self._decider = decider
        self._limits = LimitDescriptions()

    @maps_errors
    async def ShouldRateLimit(self, request: rls_pb2.RateLimitRequest,
                              context: grpc.aio.ServicerContext) -> rls_pb2.RateLimitResponse:
        snapshot = self._decider.snapshot()
        if len(request.descriptors) > MAX_DESCRIPTORS:
            return _refused(len(request.descriptors), "INVALID_REQUEST",
                            f"at most {MAX_DESCRIPTORS} descriptors per request, got {len(request.descriptors)}")
        named = _named(request)
        tenants = {each.tenant_id for each in named if each is not None}
        if not tenants:
            return rls_pb2.RateLimitResponse(overall_code=OK, statuses=[_unlimited() for _ in named])
        if len(tenants) > 1:
            return _refused(len(named), "INVALID_REQUEST",
                            f"the descriptors of one request must name one tenant, not {len(tenants)}")
        tenant_id = tenants.pop()
        try:
            requests.tenant_id(tenant_id, known_tenants=snapshot.tenants)
        except InvalidArgument as error:
            return _refused(len(named), "INVALID_REQUEST", error.message)
        tenant = snapshot.tenants.get(tenant_id)
        if tenant is None:
            return _refused(len(named), "TENANT_NOT_FOUND", f"unknown tenant {tenant_id!r}")
        if tenant.state is not TenantState.ACTIVE:
            return _refused(len(named), "TENANT_NOT_ACTIVE", f"tenant {tenant_id!r} is {tenant.state.value}")
        if tenant.built is None:
            await self._decider.compile_tenant(snapshot, tenant_id)
            if tenant.built is None:
                return _refused(len(named), "TENANT_UNAVAILABLE", tenant.unavailable)
        declared = tenant.built.spec.quotas
        amounts: dict[str, int] = {}
        for each in named:
            if each is not None and each.quota in declared:
                amounts[each.quota] = amounts.get(each.quota, 0) + each.amount
        if not amounts:
            return rls_pb2.RateLimitResponse(overall_code=OK, statuses=[_unlimited() for _ in named])
        try:
            outcome = await self._decider.consume(snapshot, tenant_id, [QuotaRequestItem(quota, amount)
                                                                         for quota, amount in amounts.items()])
        except InvalidArgument as error:  # an amount out of range
            return _refused(len(named), "INVALID_REQUEST", error.message)
        return self._answer(named, declared, outcome)

    def _answer(self, named: Sequence[Named | None], declared: Mapping[str, QuotaSpec],
                outcome: ConsumeOutcome) -> rls_pb2.RateLimitResponse:
        items = {item.quota: item for item in outcome.items}
        response = rls_pb2.RateLimitResponse(overall_code=OK if outcome.allowed else OVER_LIMIT)
        for each in named:
            status = response.statuses.add()
            item = items.get(each.quota) if each is not None else None
            if item is None:
                status.code = OK
            elif outcome.degraded:  # answered by the failure policy: no counts to report
                status.code = OK if item.allowed or item.shadow else OVER_LIMIT
            else:
                self._limits.describe(status, declared[item.quota], item)
        headers = response.response_headers_to_add
        if not outcome.degraded:
            self._limits.add_headers(headers, declared, outcome.items)
        if not outcome.allowed:
            wait = _retry_after(outcome.items)
            headers.add(key=RETRY_AFTER_HEADER, value=str(wait))
            exceeded = [item.quota for item in outcome.items if not item.allowed and not item.shadow]
            # A counter store that cannot be reached is not an exhausted quota: the body says which it is.
            reason = "QUOTA_BACKEND_UNAVAILABLE" if outcome.degraded else "QUOTA_EXCEEDED"
            response.raw_body = json.dumps({"allowed": False, "reason": reason, "quotas": exceeded,
                                            "retry_after": wait}).encode()
            headers.add(key="content-type", value="application/json")
        return response


def _unlimited() -> rls_pb2.RateLimitResponse.DescriptorStatus:
    return rls_pb2.RateLimitResponse.DescriptorStatus(code=OK)


def _refused(descriptors: int, reason: str, detail: str) -> rls_pb2.RateLimitResponse:
    """OVER_LIMIT for every descriptor of a request that cannot be counted, with why in the body."""
    return rls_pb2.RateLimitResponse(
        overall_code=OVER_LIMIT,
        statuses=[rls_pb2.RateLimitResponse.DescriptorStatus(code=OVER_LIMIT) for _ in range(descriptors)],
        response_headers_to_add=[base_pb2.HeaderValue(key="content-type", value="application/json")],
        raw_body=json.dumps({"allowed": False, "reason": reason, "detail": detail}).encode())


class LimitDescriptions:
    """What a quota's status and headers say that depends on its spec alone (its limit, unit and policy),
    built once per spec: most of what a ShouldRateLimit answer holds."""

    MAX_SPECS = 10_000

    def __init__(self) -> None:
        self._limits: dict[QuotaSpec, tuple[rls_pb2.RateLimitResponse.RateLimit, str]] = {}

    def _of(self, spec: QuotaSpec) -> tuple[rls_pb2.RateLimitResponse.RateLimit, str]:
        known = self._limits.get(spec)
        if known is None:
            if len(self._limits) >= self.MAX_SPECS:
                self._limits.clear()
            unit = (_UNITS_BY_SECONDS.get(spec.per_seconds, _Unit.UNKNOWN) if spec.kind is QuotaKind.RATE
                    else _UNITS_BY_PERIOD[spec.period] if spec.period is not None else _Unit.UNKNOWN)
            window = _window(spec)
            known = self._limits[spec] = (
                _Unit(name=spec.name, requests_per_unit=min(spec.limit, _UINT32_MAX), unit=unit),
                policy_item(spec.name, spec.limit, window))
        return known

    def describe(self, status: rls_pb2.RateLimitResponse.DescriptorStatus, spec: QuotaSpec,
                 item: ItemOutcome) -> None:
        status.code = OK if item.allowed or item.shadow else OVER_LIMIT
        status.current_limit.CopyFrom(self._of(spec)[0])
        status.limit_remaining = min(max(item.remaining, 0), _UINT32_MAX)
        if item.reset_after:
            set_seconds(status.duration_until_reset, item.reset_after)

    def add_headers(self, headers: Any, declared: Mapping[str, QuotaSpec], items: Sequence[ItemOutcome]) -> None:
        """RateLimit-Policy and RateLimit (draft-ietf-httpapi-ratelimit-headers), one list member per quota."""
        headers.add(key=POLICY_HEADER, value=joined(self._of(declared[item.quota])[1] for item in items))
        headers.add(key=STATE_HEADER, value=joined(state_item(item.quota, item.remaining, item.reset_after)
                                                   for item in items))


def _window(spec: QuotaSpec) -> int:
    """The policy window in seconds (draft-ietf-httpapi-ratelimit-headers ``w``); 0 (left out) for quotas
    without a fixed one: months vary, and concurrency and allocation quotas have none."""
    if spec.kind is QuotaKind.RATE:
        return spec.per_seconds
    return _PERIOD_SECONDS.get(spec.period, 0) if spec.period is not None else 0


def _retry_after(items: Sequence[ItemOutcome]) -> int:
    return retry_after(item.retry_after for item in items if not item.allowed and not item.shadow)
