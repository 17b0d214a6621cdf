"""What every front door of the decision port shares: the snapshot a call answers from, compiling what a
decision needs off the event loop, the access decision with its id, log line and metrics, and quota
consumption with its metering. DecisionService and the Envoy adapters translate their protocols to these
calls and decide nothing themselves."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from typing import Any

from tenantgate import metrics
from tenantgate.clock import Clock, SystemClock
from tenantgate.engines.access import AccessEngine, AccessRequest, Decision, Principal, Reason, Ruling, Undecided
from tenantgate.engines.quota import ConsumeOutcome, QuotaEngine, QuotaRequestItem
from tenantgate.engines.tokens import TokenResult, TokenVerifier
from tenantgate.errors import FailedPrecondition, Unavailable
from tenantgate.server.decisionlog import DecisionLog
from tenantgate.snapshot import Snapshot, SnapshotHolder, TenantView

# Cached metric children per (tenant, label) pair, at most this many: callers must not grow memory without end.
MAX_CACHED_SERIES = 100_000


# Ids are numbered in blocks of 16**3 (see DecisionIds).
_BLOCK_DIGITS = 3
_BLOCK: int = 16 ** _BLOCK_DIGITS
_IN_BLOCK = tuple(f"{i:0{_BLOCK_DIGITS}x}" for i in range(_BLOCK))


class DecisionIds:
    """Unique without coordination: a random per-process prefix and a counter, in hex. Used from the event
    loop's thread only.

    Numbers are handed out from blocks of 16**3, so that an id is the block's head (prefix and block number)
    followed by three hex digits taken from a table: a concatenation, not a formatting, which was a twelfth of
    the cost of a batch's check."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._block = 0
        self._head = ""
        self._used = _BLOCK  # of the current block: none is left, the first id starts block 1

    def next(self) -> str:
        used = self._used
        if used == _BLOCK:
            self._new_block()
            used = 0
        self._used = used + 1
        return self._head + _IN_BLOCK[used]

    def take(self, count: int) -> list[str]:
        """``count`` ids at once (the checks of a batch), from one block when they fit in what is left of it."""
        if count > _BLOCK - self._used:
            if count > _BLOCK:
                return [self.next() for _ in range(count)]
            self._new_block()
        used, head = self._used, self._head
        self._used = used + count
        return [head + low for low in _IN_BLOCK[used:used + count]]

    def _new_block(self) -> None:
        self._block += 1
        self._head = f"{self._prefix}-{self._block:x}"
        self._used = 0


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
        return self.principal_to_compile(snapshot, (request.tenant_id, request.subject, request.subject_tenant_id,
                                                    request.token, request.environment))

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
        return decision, self.record(snapshot, request.tenant_id, request.action, request.resource,
                                     request.environment, decision)

    def ruling(self, snapshot: Snapshot, principal: Principal) -> Ruling:
        """What decides every check of ``principal`` (its tenants compiled first: ``principal_to_compile``);
        each decision it makes is then ``record``ed."""
        return self._access.ruling(snapshot, principal)

    def principal_to_compile(self, snapshot: Snapshot, principal: Principal) -> list[TenantView]:
        """The tenants the checks of ``principal`` need compiled that are not yet (usually none: answered without
        a call)."""
        tenant_id, _, subject_tenant_id, token, _ = principal
        tenant = snapshot.tenants.get(tenant_id)
        if (tenant is not None and tenant.built is None) or token:
            return self._access.tenants_to_compile(snapshot, AccessRequest(tenant_id, "", "", "", subject_tenant_id,
                                                                           token))
        return []

    def refuse(self, snapshot: Snapshot, request: AccessRequest, reason: Reason) -> str:
        """Log and count a refusal made before the engine could be asked (a bearer token that verifies against
        no tenant, when only the token could name the tenant); returns its decision id."""
        return self.record(snapshot, request.tenant_id, request.action, request.resource, request.environment,
                           Decision(False, reason))

    def record(self, snapshot: Snapshot, tenant_id: str, action: str, resource: str, environment: str,
               decision: Decision) -> str:
        """Log and count a decision on ``action`` on ``resource`` of ``tenant_id``; returns its id. (What
        ``decision_ids``, ``log`` and ``count`` do for many decisions, for one.)"""
        decision_id = self._ids.next()
        if self._decision_log is not None:
            self._decision_log.record(decision_id, tenant_id, action, resource, environment, decision,
                                      snapshot.revision)
        counter = self._decision_counters.get((tenant_id, decision.reason))
        if counter is None:
            counter = self._decision_counter(snapshot, tenant_id, decision.reason)
        counter.inc()
        return decision_id

    @property
    def logs_decisions(self) -> bool:
        return self._decision_log is not None

    def decision_ids(self, count: int) -> list[str]:
        """Ids for ``count`` decisions, for ``log``."""
        return self._ids.take(count)

    def log(self, snapshot: Snapshot, decision_id: str, tenant_id: str, action: str, resource: str,
            environment: str, decision: Decision) -> None:
        """The decision log's line for a decision, as ``record`` writes it (only called when ``logs_decisions``)."""
        if self._decision_log is not None:
            self._decision_log.record(decision_id, tenant_id, action, resource, environment, decision,
                                      snapshot.revision)

    def count(self, snapshot: Snapshot, tenant_id: str, reason: Reason, times: int) -> None:
        """Count ``times`` decisions of ``reason`` on ``tenant_id`` at once, as ``record`` counts one."""
        counter = self._decision_counters.get((tenant_id, reason))
        if counter is None:
            counter = self._decision_counter(snapshot, tenant_id, reason)
        counter.inc(times)

    def _decision_counter(self, snapshot: Snapshot, tenant_id: str, reason: Reason) -> metrics.CounterSeries:
        # Unknown tenant ids share one label: callers must not be able to mint series.
        label = metrics.tenant_label(tenant_id) if tenant_id in snapshot.tenants else "_unknown"
        counter = metrics.DECISIONS.labels(label, reason.name)
        if len(self._decision_counters) < MAX_CACHED_SERIES:
            self._decision_counters[(tenant_id, reason)] = counter
        return counter

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
