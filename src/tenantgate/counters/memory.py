"""Counters in process memory: exact inside one process, lost on restart.

The quota algorithms run here in Python (their arithmetic in ``engines/quota.py``); the Redis store runs them again
in Lua (``lua/consume.lua``). ``tests/integration/test_quota_equivalence.py`` holds the two to the same answers.

Every call runs without awaiting, so on the event loop it is atomic; the lock makes it so for callers
on other threads too (the CLI, tests).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import cachetools

from tenantgate.engines.quota import (
    CounterOp,
    CounterResult,
    Idempotency,
    allocation_take,
    bounded_take,
    bucket_take,
    calendar_window,
    lease_return,
    lease_take,
    unknown_lease,
)
from tenantgate.errors import Aborted
from tenantgate.model import QuotaKind

CounterKey = tuple[str, str]  # (tenant id, quota name)
# What an evaluation read: (bucket level, time) for rate quotas, (window start, used) for windows,
# (time, 0) for leases, (0, used) for allocations.
Basis = tuple[float, float]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


@dataclass(slots=True)
class _Window:
    start: float
    used: int


@dataclass(slots=True)
class _Leases:
    # lease id -> (amount, when it expires in milliseconds): the Redis script's arithmetic, so that both stores
    # answer alike to the last bit (it keeps the expiry as a sorted set's score in milliseconds).
    held: dict[str, tuple[int, float]] = field(default_factory=dict)

    def in_use(self, now: float) -> int:
        expired = [lease for lease, (_, expires_ms) in self.held.items() if expires_ms <= now * 1000]
        for lease in expired:
            del self.held[lease]
        return sum(amount for amount, _ in self.held.values())


class MemoryCounterStore:
    def __init__(self, *, max_idempotency_keys: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[CounterKey, _Bucket] = {}
        self._windows: dict[CounterKey, _Window] = {}
        self._allocations: dict[CounterKey, int] = {}
        self._leases: dict[CounterKey, _Leases] = {}
        self._usage: dict[CounterKey, list[int]] = {}  # (tenant, quota) -> [consumed, denied] units
        self._answers: cachetools.LRUCache[tuple[str, str], tuple[str, float, list[CounterResult]]] = (
            cachetools.LRUCache(maxsize=max_idempotency_keys))

    async def close(self) -> None:
        return None

    async def ping(self) -> bool:
        return True

    async def usage(self, tenant_id: str) -> dict[str, tuple[int, int]]:
        with self._lock:
            # Quotas that counted nothing are left out, as Redis leaves them out.
            return {quota: (counts[0], counts[1]) for (tenant, quota), counts in self._usage.items()
                    if tenant == tenant_id and (counts[0] or counts[1])}

    async def consume(self, tenant_id: str, ops: Sequence[CounterOp], now: float,
                      idempotency: Idempotency | None = None) -> list[CounterResult]:
        return self.consume_now(tenant_id, ops, now, idempotency)

    def consume_now(self, tenant_id: str, ops: Sequence[CounterOp], now: float,
                    idempotency: Idempotency | None = None) -> list[CounterResult]:
        """``consume``, answered without awaiting: the engine calls it directly (a coroutine per call costs a
        tenth of a consume in memory)."""
        with self._lock:
            if idempotency is not None:
                remembered = self._answers.get((tenant_id, idempotency.key))
                if remembered is not None and remembered[1] > now:
                    if remembered[0] != idempotency.payload_digest:
                        raise Aborted(f"idempotency key {idempotency.key!r} was used with a different request",
                                      field="idempotency_key")
                    return remembered[2]
            if len(ops) == 1:  # the usual call: its one item's answer decides
                op = ops[0]
                key = (tenant_id, op.spec.name)
                if op.spec.kind is QuotaKind.RATE and not op.release:
                    results = [self._take_tokens(key, op, now)]
                else:
                    result, basis = self._evaluate(key, op, now, 0)
                    self._settle(key, op, result, basis, result.allowed)
                    results = [result]
            else:
                evaluated = []
                admitted = True
                for index, op in enumerate(ops):
                    key = (tenant_id, op.spec.name)
                    result, basis = self._evaluate(key, op, now, index)
                    evaluated.append((key, op, result, basis))
                    if not result.allowed and not op.spec.shadow:
                        admitted = False
                results = []
                for key, op, result, basis in evaluated:
                    self._settle(key, op, result, basis, admitted)
                    results.append(result)
            if idempotency is not None:
                self._answers[(tenant_id, idempotency.key)] = (idempotency.payload_digest,
                                                               now + idempotency.ttl, results)
            return results

    def _take_tokens(self, key: CounterKey, op: CounterOp, now: float) -> CounterResult:
        """A call of one rate item: ``_evaluate``, ``_settle`` and ``_commit`` in one step, each dictionary read
        once (the most frequent call, and a third of its time in the store)."""
        bucket = self._buckets.get(key)
        amount = op.amount
        result, level = (bucket_take(None, 0.0, op.spec, now, amount) if bucket is None
                         else bucket_take(bucket.tokens, bucket.updated, op.spec, now, amount))
        counts = self._usage.get(key)
        if counts is None:
            counts = self._usage[key] = [0, 0]
        if not result.allowed:
            counts[1] += amount
        elif bucket is None:
            self._buckets[key] = _Bucket(level - amount, now)
            counts[0] += amount
        else:
            bucket.tokens, bucket.updated = level - amount, now
            counts[0] += amount
        return result

    def _settle(self, key: CounterKey, op: CounterOp, result: CounterResult, basis: Basis, admitted: bool) -> None:
        """Meter ``op`` and apply it when its call is admitted as a whole."""
        counts = self._usage.get(key)
        if counts is None:
            counts = self._usage[key] = [0, 0]
        if not result.allowed:
            counts[1] += op.amount
        elif admitted:
            self._commit(key, op, result, basis)
            if not op.release:
                counts[0] += op.amount

    def _evaluate(self, key: CounterKey, op: CounterOp, now: float, index: int) -> tuple[CounterResult, Basis]:
        """The answer for ``op`` (item ``index`` of its call), and what it was read against, which a commit
        then writes from."""
        spec = op.spec
        if spec.kind is QuotaKind.RATE:
            bucket = self._buckets.get(key)
            result, level = (bucket_take(None, 0.0, spec, now, op.amount) if bucket is None
                             else bucket_take(bucket.tokens, bucket.updated, spec, now, op.amount))
            return result, (level, now)
        if spec.kind is QuotaKind.WINDOW:
            assert spec.period is not None
            start, end = calendar_window(spec.period, now)
            window = self._windows.get(key)
            used = window.used if window is not None and window.start == start else 0
            return bounded_take(used, spec.limit, op.amount, end - now, end - now), (start, used)
        if spec.kind is QuotaKind.CONCURRENCY:
            leases = self._leases.get(key) or _Leases()
            in_use = leases.in_use(now)
            if op.release:
                if op.lease_id not in leases.held:
                    raise unknown_lease(op, index)
                return lease_return(in_use, leases.held[op.lease_id][0], spec.limit, op.lease_id), (now, 0)
            earliest_ms = min((expires_ms for _, expires_ms in leases.held.values()), default=None)
            return lease_take(in_use, spec.limit, op.amount, earliest_ms, now, secrets.token_hex(12)), (now, 0)
        used = self._allocations.get(key, 0)
        return allocation_take(used, spec.limit, op.amount, op.release), (0.0, used)

    def _commit(self, key: CounterKey, op: CounterOp, result: CounterResult, basis: Basis) -> None:
        spec = op.spec
        if spec.kind is QuotaKind.RATE:
            level, now = basis
            bucket = self._buckets.get(key)
            if bucket is None:
                self._buckets[key] = _Bucket(level - op.amount, now)
            else:
                bucket.tokens, bucket.updated = level - op.amount, now
        elif spec.kind is QuotaKind.WINDOW:
            start, used = basis
            self._windows[key] = _Window(start, int(used) + op.amount)
        elif spec.kind is QuotaKind.CONCURRENCY:
            now = basis[0]
            leases = self._leases.setdefault(key, _Leases())
            if op.release:
                leases.held.pop(op.lease_id, None)
            elif result.lease_id:
                leases.held[result.lease_id] = (op.amount, now * 1000 + int(spec.lease_ttl * 1000))
        else:
            used = int(basis[1])
            self._allocations[key] = max(0, used - op.amount) if op.release else used + op.amount
