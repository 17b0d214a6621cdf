"""Quota decisions: validation, idempotency keys and failure policy over the items of one call.

The quota algorithms (token bucket, calendar windows, leases, allocations) are written twice: in Python here and
in ``counters/memory.py``, which run them for the memory store, and in Lua (``counters/lua/``), which Redis runs
atomically. ``tests/integration/test_quota_equivalence.py`` drives both with the same calls and requires the same
answers: a change to one is a change to the other.
"""

from __future__ import annotations

import calendar
import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

from tenantgate.clock import Clock, SystemClock
from tenantgate.errors import FailedPrecondition, InvalidArgument, NotFound, StorageError
from tenantgate.model import CalendarPeriod, QuotaKind, QuotaSpec, TenantState
from tenantgate.snapshot import Snapshot

MAX_ITEMS = 64
MAX_AMOUNT = 1 << 62


# Plain slotted dataclasses, treated as immutable: several are built per consume, and a frozen
# dataclass's __init__ costs three times as much (see engines/access.py).
@dataclass(slots=True)
class QuotaRequestItem:
    quota: str
    amount: int
    lease_id: str = ""


@dataclass(slots=True)
class CounterOp:
    spec: QuotaSpec
    amount: int
    release: bool = False
    lease_id: str = ""


@dataclass(slots=True)
class CounterResult:
    allowed: bool
    remaining: int
    reset_after: float = 0.0
    retry_after: float = 0.0
    lease_id: str = ""


@dataclass(slots=True)
class ItemOutcome:
    quota: str
    amount: int
    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float
    lease_id: str
    shadow: bool


@dataclass(slots=True)
class ConsumeOutcome:
    allowed: bool
    items: tuple[ItemOutcome, ...]
    revision: int
    # The counter backend could not be reached; the items were answered by their failure policy.
    degraded: bool = False


@dataclass(slots=True)
class Idempotency:
    key: str
    payload_digest: str
    ttl: float


class CounterStore(Protocol):
    """Counter state behind one atomic call: evaluate every op, then apply all of them or none.

    A shadow op never blocks the others. With ``idempotency``, a repeated key with the same payload
    returns the first results and applies nothing; with another payload it raises ``Aborted``. Releasing a
    lease that is not held raises ``unknown_lease`` and applies nothing.
    """

    async def consume(self, tenant_id: str, ops: Sequence[CounterOp], now: float,
                      idempotency: Idempotency | None = None) -> list[CounterResult]:
        """Raises StorageError when the backend cannot be reached."""
        ...

    async def usage(self, tenant_id: str) -> dict[str, tuple[int, int]]:
        """Metering: quota -> (units consumed, units denied), since the counters began."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


@runtime_checkable
class ImmediateCounterStore(CounterStore, Protocol):
    """A store that answers without waiting for anything (in process memory): the engine calls ``consume_now``
    instead of ``consume``, which must answer alike."""

    def consume_now(self, tenant_id: str, ops: Sequence[CounterOp], now: float,
                    idempotency: Idempotency | None = None) -> list[CounterResult]: ...


def calendar_window(period: CalendarPeriod, now: float) -> tuple[float, float]:
    """The UTC calendar window (start, end) containing ``now``; weeks start on Monday."""
    moment = datetime.fromtimestamp(now, UTC)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period is CalendarPeriod.DAY:
        start, end = day, day + timedelta(days=1)
    elif period is CalendarPeriod.WEEK:
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(days=7)
    else:
        start = day.replace(day=1)
        end = start + timedelta(days=calendar.monthrange(start.year, start.month)[1])
    return start.timestamp(), end.timestamp()


def bucket_take(tokens: float | None, updated: float, spec: QuotaSpec, now: float,
                amount: int) -> tuple[CounterResult, float]:
    """What taking ``amount`` from a rate quota's bucket would answer at ``now`` (state is not changed here), and
    the bucket's level then: ``tokens`` at ``updated`` (None: never used, full), refilled since and capped at the
    burst."""
    burst = spec.burst
    refill = spec.limit / spec.per_seconds
    # min(burst, tokens + max(0, now - updated) * refill), as lua/consume.lua computes it, without the builtins'
    # calls (the arithmetic of every rate item, in both stores).
    if tokens is None:
        level = float(burst)
    else:
        elapsed = now - updated
        level = tokens + elapsed * refill if elapsed > 0 else tokens + 0.0
        if level > burst:
            level = float(burst)
    if amount <= level:
        after = level - amount
        return CounterResult(True, math.floor(after), (burst - after) / refill, 0.0), level
    wait = ((amount if amount < burst else burst) - level) / refill
    return CounterResult(False, math.floor(level), (burst - level) / refill, wait), level


def bounded_take(used: int, limit: int, amount: int, retry_after: float, reset_after: float = 0.0) -> CounterResult:
    """Window, allocation and concurrency quotas: admit while ``used + amount`` stays within ``limit``."""
    if used + amount <= limit:
        return CounterResult(True, limit - used - amount, reset_after, 0.0)
    return CounterResult(False, max(0, limit - used), reset_after, retry_after)


def lease_take(in_use: int, limit: int, amount: int, earliest_ms: float | None, now: float,
               lease_id: str) -> CounterResult:
    """A concurrency quota: ``in_use`` units held by unexpired leases, the first of which ends at ``earliest_ms``
    (None: none held). An admitted acquire of some units is granted ``lease_id``."""
    result = bounded_take(in_use, limit, amount, 0.0 if earliest_ms is None else earliest_ms / 1000 - now)
    if result.allowed and amount:
        return CounterResult(True, result.remaining, lease_id=lease_id)
    return result


def lease_return(in_use: int, held: int, limit: int, lease_id: str) -> CounterResult:
    """Releasing a lease of ``held`` units while ``in_use`` are held in all."""
    return CounterResult(True, limit - max(0, in_use - held), lease_id=lease_id)


def allocation_take(used: int, limit: int, amount: int, release: bool) -> CounterResult:
    """Allocation and volume quotas: a release always succeeds, and never counts below zero."""
    if release:
        return CounterResult(True, limit - max(0, used - amount))
    return bounded_take(used, limit, amount, 0.0)


def payload_digest(tenant_id: str, items: Sequence[QuotaRequestItem], release: bool) -> str:
    text = "\x1f".join([tenant_id, "release" if release else "consume",
                        *(f"{i.quota}\x1e{i.amount}\x1e{i.lease_id}" for i in items)])
    return hashlib.sha256(text.encode()).hexdigest()


def unknown_lease(op: CounterOp, index: int) -> NotFound:
    """What releasing a lease that is not held answers, in every counter store: never a silent success,
    which would hide a release made twice or a lease that ran out while its holder still worked."""
    return NotFound(f"lease {op.lease_id!r} of quota {op.spec.name!r} is not held (released already, expired, or "
                    "never acquired); nothing was released", field=f"items[{index}].lease_id")


def _refuse_repeated_quotas(items: Sequence[QuotaRequestItem]) -> None:
    seen: set[str] = set()
    for index, item in enumerate(items):
        if item.quota in seen:
            raise InvalidArgument(f"quota {item.quota!r} is named twice; merge the amounts",
                                  field=f"items[{index}].quota")
        seen.add(item.quota)


class QuotaEngine:
    def __init__(self, counters: CounterStore, *, clock: Clock | None = None,
                 idempotency_ttl: float = 24 * 3600, on_backend_error: str = "deny") -> None:
        self._counters = counters
        self._consume_now = counters.consume_now if isinstance(counters, ImmediateCounterStore) else None
        self._clock = clock or SystemClock()
        # The system clock read directly: a method in between is a tenth of an in-memory consume's engine time.
        self._now = time.time if type(self._clock) is SystemClock else self._clock.now
        self._idempotency_ttl = idempotency_ttl
        self._on_backend_error = on_backend_error

    async def consume(
        self,
        snapshot: Snapshot,
        tenant_id: str,
        items: Sequence[QuotaRequestItem],
        *,
        release: bool = False,
        idempotency_key: str = "",
    ) -> ConsumeOutcome:
        tenant = snapshot.tenants.get(tenant_id)
        if tenant is None:
            raise NotFound(f"unknown tenant {tenant_id!r}", field="tenant_id")
        if tenant.state is not TenantState.ACTIVE:
            raise FailedPrecondition(f"tenant {tenant_id!r} is {tenant.state.value}; only Active tenants "
                                     "consume quota", field="tenant_id")
        count = len(items)
        if not 0 < count <= MAX_ITEMS:
            raise InvalidArgument("at least one item is required" if not count else
                                  f"at most {MAX_ITEMS} items per call", field="items")
        quotas = tenant.spec.quotas
        ops: list[CounterOp] = []
        for index, item in enumerate(items):
            spec = quotas.get(item.quota)
            if spec is None:
                raise NotFound(f"tenant {tenant_id!r} has no quota {item.quota!r}", field=f"items[{index}].quota",
                               resource_type="quota", resource_name=item.quota)
            if item.amount > MAX_AMOUNT:
                raise InvalidArgument(f"amount must be at most {MAX_AMOUNT}", field=f"items[{index}].amount")
            if release:
                if not spec.releasable:
                    raise InvalidArgument(f"quota {item.quota!r} is a {spec.kind.value} quota; only concurrency "
                                          "and allocation quotas can be released", field="release")
                if spec.kind is QuotaKind.CONCURRENCY and not item.lease_id:
                    raise InvalidArgument("releasing a concurrency quota needs the lease_id it was acquired with",
                                          field=f"items[{index}].lease_id")
            ops.append(CounterOp(spec, item.amount, release, item.lease_id))
        if count > 1:
            _refuse_repeated_quotas(items)
        idempotency = None
        if idempotency_key:
            idempotency = Idempotency(idempotency_key, payload_digest(tenant_id, items, release),
                                      self._idempotency_ttl)
        degraded = False
        try:
            if self._consume_now is not None:
                results = self._consume_now(tenant_id, ops, self._now(), idempotency)
            else:
                results = await self._counters.consume(tenant_id, ops, self._now(), idempotency)
        except StorageError:
            # Never a silent allow: each item gets its quota's stated policy (the server default: deny).
            degraded = True
            results = [self._by_policy(op.spec) for op in ops]
        if count == 1:  # the usual call: its one item decides
            op, result = ops[0], results[0]
            spec = op.spec
            return ConsumeOutcome(result.allowed or spec.shadow, (ItemOutcome(
                spec.name, op.amount, result.allowed, spec.capacity, result.remaining, result.reset_after,
                result.retry_after, result.lease_id, spec.shadow),), tenant.revision, degraded)
        outcomes = []
        allowed = True
        for op, result in zip(ops, results, strict=True):
            spec = op.spec
            outcomes.append(ItemOutcome(spec.name, op.amount, result.allowed, spec.capacity, result.remaining,
                                        result.reset_after, result.retry_after, result.lease_id, spec.shadow))
            if not result.allowed and not spec.shadow:
                allowed = False
        return ConsumeOutcome(allowed, tuple(outcomes), tenant.revision, degraded)

    def _by_policy(self, spec: QuotaSpec) -> CounterResult:
        if (spec.on_backend_error or self._on_backend_error) == "allow":
            return CounterResult(True, 0)
        return CounterResult(False, 0, retry_after=1.0)

    async def usage(self, snapshot: Snapshot, tenant_id: str) -> dict[str, tuple[int, int]]:
        """Metering for billing: every quota the tenant declares, with units consumed and denied."""
        tenant = snapshot.tenants.get(tenant_id)
        if tenant is None:
            raise NotFound(f"unknown tenant {tenant_id!r}", field="tenant_id")
        counted = await self._counters.usage(tenant_id)
        return {name: counted.get(name, (0, 0)) for name in sorted({*tenant.spec.quotas, *counted})}
