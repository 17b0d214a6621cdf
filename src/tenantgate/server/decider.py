"""What every front door of the decision port shares: the snapshot a call answers from, compiling what a
decision needs off the event loop, the access decision with its id, log line and metrics, and quota
consumption with its metering. DecisionService and the Envoy adapters translate their protocols to these
calls and decide nothing themselves."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterable, Sequence
from typing import Any

from tenantgate import metrics
from tenantgate.clock import Clock, SystemClock
from tenantgate.engines.access import AccessEngine, AccessRequest, Decision, Reason, Undecided
from tenantgate.engines.quota import ConsumeOutcome, QuotaEngine, QuotaRequestItem
from tenantgate.engines.tokens import TokenResult, TokenVerifier
from tenantgate.errors import FailedPrecondition, Unavailable
from tenantgate.server.decisionlog import DecisionLog
from tenantgate.snapshot import Snapshot, SnapshotHolder, TenantView

# Cached metric children per (tenant, label) pair, at most this many: callers must not grow memory without end.
MAX_CACHED_SERIES = 100_000


class DecisionIds:
    """Unique without coordination: a random per-process prefix and a counter."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}-{next(self._counter):x}"


class QuotaMetering:
    """Consumed and denied units per tenant and quota, with each series' counter looked up once."""

    def __init__(self) -> None:
        self._counters: dict[tuple[str, str], tuple[Any, Any]] = {}

    def record(self, tenant_id: str, outcome: ConsumeOutcome, *, release: bool) -> None:
        if outcome.degraded:
            metrics.QUOTA_BACKEND_ERRORS.inc()
        for item in outcome.items:
            counters = self._counters.get((tenant_id, item.quota))
            if counters is None:
                label = metrics.tenant_label(tenant_id)
                counters = (metrics.QUOTA_CONSUMED.labels(label, item.quota),
                            metrics.QUOTA_DENIED.labels(label, item.quota))
                if len(self._counters) < MAX_CACHED_SERIES:
                    self._counters[(tenant_id, item.quota)] = counters
            if item.allowed and outcome.allowed and not release:
                counters[0].inc(item.amount)
            elif not item.allowed:
                counters[1].inc(item.amount)


class Decider:
    def __init__(self, holder: SnapshotHolder, tokens: TokenVerifier, access: AccessEngine, quota: QuotaEngine, *,
                 max_staleness: float = 0.0, clock: Clock | None = None,
                 decision_log: DecisionLog | None = None) -> None:
        self.holder = holder
        self._tokens = tokens
        self._access = access
        self._quota = quota
        self._max_staleness = max_staleness
        self._clock = clock or SystemClock()
        self._decision_log = decision_log
        self._decision_counters: dict[tuple[str, Reason], Any] = {}
        self._metering = QuotaMetering()
        self._ids = DecisionIds()

    def snapshot(self) -> Snapshot:
        """The snapshot to answer from, unless there is none yet or it is older than the max staleness."""
        snapshot = self.holder.current
        if snapshot is None:
            raise Unavailable("no snapshot of the registry is loaded yet")
        if self._max_staleness and self._clock.now() - self.holder.confirmed_at > self._max_staleness:
            raise Unavailable(f"the registry was last read {self._clock.now() - self.holder.confirmed_at:.0f} s "
                              f"ago, longer than the configured max staleness ({self._max_staleness:g} s); "
                              "failing closed")
        return snapshot

    async def snapshot_at(self, min_revision: int, wait: float) -> Snapshot:
        """A snapshot at ``min_revision`` or later, waiting up to ``wait`` seconds for the syncer."""
        if await self.holder.wait_for_revision(min_revision, wait) is None:
            current = self.holder.current.revision if self.holder.current else 0
            raise FailedPrecondition(f"the snapshot is at revision {current}, older than min_revision {min_revision}",
                                     field="min_revision")
        return self.snapshot()

    def to_compile(self, snapshot: Snapshot, request: AccessRequest) -> list[TenantView]:
        """The tenants ``decide`` needs compiled that are not yet (usually none: answered without a call)."""
        tenant = snapshot.tenants.get(request.tenant_id)
        if (tenant is not None and tenant.built is None) or request.token:
            return self._access.tenants_to_compile(snapshot, request)
        return []

    async def compile(self, views: Iterable[TenantView]) -> None:
        """Compile ``views`` in a worker thread, never on the event loop."""
        await self.holder.compile(views)

    async def compile_tenant(self, snapshot: Snapshot, tenant_id: str) -> None:
        tenant = snapshot.tenants.get(tenant_id)
        if tenant is not None and tenant.built is None:
            await self.holder.compile((tenant,))

    def decide(self, snapshot: Snapshot, request: AccessRequest) -> tuple[Decision, str]:
        """Decide ``request`` (its tenants compiled first: ``to_compile``), log and count it; returns the
        decision and its id. A check that cannot be decided raises FailedPrecondition, never a deny."""
        decision = self._access.check(snapshot, request)
        if isinstance(decision, Undecided):
            raise FailedPrecondition(decision.problem)
        return decision, self._record(snapshot, request, decision)

    def refuse(self, snapshot: Snapshot, request: AccessRequest, reason: Reason) -> str:
        """Log and count a refusal made before the engine could be asked (a bearer token that verifies against
        no tenant, when only the token could name the tenant); returns its decision id."""
        return self._record(snapshot, request, Decision(False, reason))

    def _record(self, snapshot: Snapshot, request: AccessRequest, decision: Decision) -> str:
        decision_id = self._ids.next()
        if self._decision_log is not None:
            self._decision_log.record(decision_id, request, decision, snapshot.revision)
        counter = self._decision_counters.get((request.tenant_id, decision.reason))
        if counter is None:
            # Unknown tenant ids share one label: callers must not be able to mint series.
            label = (metrics.tenant_label(request.tenant_id) if request.tenant_id in snapshot.tenants
                     else "_unknown")
            counter = metrics.DECISIONS.labels(label, decision.reason.name)
            if len(self._decision_counters) < MAX_CACHED_SERIES:
                self._decision_counters[(request.tenant_id, decision.reason)] = counter
        counter.inc()
        return decision_id

    async def verify_token(self, snapshot: Snapshot, token: str, home_tenant_id: str = "") -> TokenResult:
        """Verify a bearer token with the verifier (and cache) that decisions use, compiling its possible
        home tenants off the event loop first."""
        needed = self._tokens.tenants_to_compile(snapshot, token, home_tenant_id)
        if needed:
            await self.holder.compile(needed)
        return self._tokens.verify(snapshot, token, home_tenant_id)

    async def consume(self, snapshot: Snapshot, tenant_id: str, items: Sequence[QuotaRequestItem], *,
                      release: bool = False, idempotency_key: str = "") -> ConsumeOutcome:
        """Consume (or release) ``items`` all-or-nothing for ``tenant_id`` and meter the outcome."""
        tenant = snapshot.tenants.get(tenant_id)
        if tenant is not None and tenant.built is None:
            await self.holder.compile((tenant,))
        outcome = await self._quota.consume(snapshot, tenant_id, items, release=release,
                                            idempotency_key=idempotency_key)
        self._metering.record(tenant_id, outcome, release=release)
        return outcome
