"""The export loops: the audit ledger to a sink, gap-free and duplicate-free, and quota usage every interval.

The audit export keeps no state of its own: it asks the sink for the last event it holds, checks that the
registry's entry of that sequence is the same entry (same hash), and publishes the entries after it in order,
a batch at a time. On any transient error (the sink, the registry) it closes the sink, backs off and starts
again from the sink's last event, so a crash of either side at any moment loses nothing and repeats nothing.
An Admin API answer too large for one message (RESOURCE_EXHAUSTED) is not retried as it was: the batch is halved,
down to one entry; an entry that alone is too large (one a registry of an older version wrote) ends the export
with an error that says to export from the store. Registry reads and event encoding run in threads: the event
loop only waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from tenantgate.clock import Clock
from tenantgate.engines.quota import CounterStore
from tenantgate.errors import FailedPrecondition, Unavailable
from tenantgate.events.cloudevents import (
    DEFAULT_SOURCE,
    OutboundEvent,
    UsageReport,
    encode_audit,
    encode_usage,
    tenant_token,
)
from tenantgate.events.sinks import Position, Sink
from tenantgate.model import TenantState
from tenantgate.registry.audit import AuditEntry
from tenantgate.registry.manifest import stored_quotas
from tenantgate.registry.records import TenantInfo

log = logging.getLogger("tenantgate.events")
# Admin API answers that mean "not now" rather than "never".
_TRANSIENT_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class TooLarge(Unavailable):
    """An Admin API answer larger than one message may be (RESOURCE_EXHAUSTED): asking again for as much never
    helps; asking for less may."""


class AuditSource(Protocol):
    """What the export reads: a registry store, or a server's Admin API (both are RegistryAdmins)."""

    def audit_entries(self, *, tenant_id: str = "", after_seq: int = 0, limit: int = 100) -> list[AuditEntry]: ...

    def list_tenants(self, *, state: str = "", labels: Mapping[str, str] | None = None, after: str = "",
                     limit: int = 100) -> list[TenantInfo]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ExportSettings:
    source: str = DEFAULT_SOURCE
    batch: int = 500  # ledger entries read and published at a time
    poll_interval: float = 1.0  # seconds between reads of the ledger once it is exported
    backoff_initial: float = 0.1
    backoff_max: float = 10.0


Waiter = Callable[[asyncio.Event, float], Awaitable[None]]


async def wait(stop: asyncio.Event, seconds: float) -> None:
    """Waits ``seconds``, or less when ``stop`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max(0.0, seconds))


async def _blocking(function: Any, *args: Any, **kwargs: Any) -> Any:
    """A registry call in a thread; an Admin API that cannot answer now is Unavailable (retried)."""
    try:
        return await asyncio.to_thread(function, *args, **kwargs)
    except grpc.RpcError as exc:
        if exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise TooLarge(f"the registry's Admin API: {exc.code().name}: {exc.details()}") from exc
        if exc.code() in _TRANSIENT_CODES:
            raise Unavailable(f"the registry's Admin API: {exc.code().name}: {exc.details()}") from exc
        raise


class AuditExporter:
    def __init__(self, registry: AuditSource, sink: Sink, settings: ExportSettings | None = None) -> None:
        self._registry = registry
        self._sink = sink
        self._settings = settings or ExportSettings()
        self.last_seq = 0  # the last sequence the sink is known to hold
        self.published = 0
        self.batch = self._settings.batch  # halved while the Admin API's answers are too large

    async def run(self, stop: asyncio.Event) -> None:
        """Exports until ``stop`` is set, retrying transient errors with backoff; FailedPrecondition and
        configuration errors (another registry's stream, a broken ledger) end it."""
        delay = self._settings.backoff_initial
        while not stop.is_set():
            progress = self.published
            try:
                await self.export(stop)
                return
            except Unavailable as exc:
                if self.published > progress:  # it got somewhere since the last error: back off from the start
                    delay = self._settings.backoff_initial
                log.warning("audit export interrupted, resuming in %.1fs: %s", delay, exc.message)
                await self._sink.close()
                await wait(stop, delay)
                delay = min(delay * 2, self._settings.backoff_max)

    async def export(self, stop: asyncio.Event | None = None) -> int:
        """Publishes every entry after the sink's last one; without ``stop``, returns once the ledger's end is
        reached (``--once``), else keeps polling until ``stop`` is set. Answers the entries published."""
        position = await self._sink.last_audit()
        if position is not None:
            await self._check_same_ledger(position)
        start = self.last_seq = 0 if position is None else position.seq
        while True:
            events = await self._next(self.last_seq)
            if not events:
                if stop is None:
                    return self.last_seq - start
                await wait(stop, self._settings.poll_interval)
                if stop.is_set():
                    return self.last_seq - start
                continue
            await self._sink.publish_audit(events)
            self.last_seq += len(events)
            self.published += len(events)

    async def _next(self, after: int) -> list[OutboundEvent]:
        """The next entries after ``after``, encoded, in as large a batch as the registry can answer."""
        while True:
            try:
                return await _blocking(self._read, after, self.batch)  # type: ignore[no-any-return]
            except TooLarge as exc:
                if self.batch == 1:
                    raise FailedPrecondition(
                        f"audit entry {after + 1} is larger than one Admin API message ({exc.message}); export "
                        "from the registry's store instead (--registry sqlite://… or postgresql://…)") from None
                too_many, self.batch = self.batch, max(1, self.batch // 2)
                log.warning("the registry's answer to %d audit entries was too large; reading %d at a time",
                            too_many, self.batch)

    def _read(self, after: int, batch: int) -> list[OutboundEvent]:
        """The next entries after ``after``, encoded (blocking: runs in a thread)."""
        entries = self._registry.audit_entries(after_seq=after, limit=batch)
        for offset, entry in enumerate(entries):
            if entry.seq != after + 1 + offset:
                raise FailedPrecondition(f"the audit ledger has no entry {after + 1 + offset} (found {entry.seq}); "
                                         "`tenantgate audit verify` names the damage")
        return [encode_audit(entry, self._settings.source) for entry in entries]

    async def _check_same_ledger(self, position: Position) -> None:
        try:
            entries = await _blocking(self._registry.audit_entries, after_seq=position.seq - 1, limit=1)
        except TooLarge as exc:
            raise FailedPrecondition(f"audit entry {position.seq} is larger than one Admin API message "
                                     f"({exc.message}); export from the registry's store instead") from None
        if not entries or entries[0].seq != position.seq:
            raise FailedPrecondition(
                f"{self._sink.description} holds audit event {position.seq}, but the registry's ledger has no entry "
                f"{position.seq}: the sink holds another registry's events (or the registry was restored from an "
                "older backup); export to a new stream or directory")
        if entries[0].hash != position.hash:
            raise FailedPrecondition(
                f"{self._sink.description} holds an audit event {position.seq} that is not the registry's entry "
                f"{position.seq} (hash {position.hash[:12]}… against {entries[0].hash[:12]}…): another registry's "
                "events; export to a new stream or directory")


def declared_quotas(info: TenantInfo) -> tuple[str, ...]:
    """The quotas a tenant is served with, its plan's included (blocking: may parse its stored document). The
    registry names them; one of an older version does not, and its tenant's own document's are used then."""
    return info.quotas or tuple(stored_quotas(info.record.document))


class UsageExporter:
    """Every ``interval`` seconds (at multiples of it), one usage event per tenant: cumulative consumed and
    denied units per quota, and the change since this exporter's previous report of the tenant."""

    def __init__(self, registry: AuditSource, counters: CounterStore, sink: Sink, *, interval: int, clock: Clock,
                 source: str = DEFAULT_SOURCE, page: int = 128, waiter: Waiter = wait) -> None:
        """``waiter``: how ``run`` waits for the end of a period (tests move a fake clock instead)."""
        self._registry = registry
        self._counters = counters
        self._sink = sink
        self._interval = interval
        self._clock = clock
        self._source = source
        self._page = page
        self._wait = waiter
        # tenant -> (period end, totals) of its last published report
        self._previous: dict[str, tuple[int, Mapping[str, tuple[int, int]]]] = {}

    def last_period_end(self) -> int:
        """The end of the latest period that has ended."""
        return int(self._clock.now() // self._interval) * self._interval

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            period_end = self.last_period_end() + self._interval
            await self._wait(stop, period_end - self._clock.now())
            if stop.is_set():
                return
            try:
                await self.report(period_end)
            except Unavailable as exc:
                # The totals are cumulative: the next report covers this period too, its delta spans both.
                log.warning("usage report for the period ending %d incomplete: %s", period_end, exc.message)

    async def report(self, period_end: int) -> int:
        """Publishes one report of every tenant that is not Deleted; answers the events published."""
        after, published = "", 0
        while True:
            try:
                page: tuple[str, list[tuple[str, tuple[str, ...]]]] | None = await _blocking(self._tenants, after)
            except TooLarge:
                if self._page == 1:
                    raise
                self._page = max(1, self._page // 2)  # tenants whose documents are large: fewer at a time
                log.warning("the registry's answer to a page of tenants was too large; reading %d at a time",
                            self._page)
                continue
            if page is None:
                return published
            after, tenants = page
            skipped = [tenant for tenant, _ in tenants if tenant_token(tenant) != tenant]
            if skipped:
                log.warning("usage of tenants with ids no NATS subject can carry is not reported: %s", skipped[:5])
            tenants = [(tenant, quotas) for tenant, quotas in tenants if tenant_token(tenant) == tenant]
            # Non-blocking calls to the counter store, one page at a time.
            counted = await asyncio.gather(*(self._counters.usage(tenant) for tenant, _ in tenants))
            reports = [self._report(tenant, quotas, usage, period_end)
                       for (tenant, quotas), usage in zip(tenants, counted, strict=True)]
            events = await asyncio.to_thread(self._encode, reports)
            await self._sink.publish_usage(events)
            for report in reports:
                self._previous[report.tenant_id] = (period_end, report.totals)
            published += len(events)

    def _tenants(self, after: str) -> tuple[str, list[tuple[str, tuple[str, ...]]]] | None:
        """The next page of tenants after ``after``: the last id read, and each tenant that is not Deleted with
        the quotas it is served with; None past the last (blocking: runs in a thread)."""
        infos = self._registry.list_tenants(after=after, limit=self._page)
        if not infos:
            return None
        return infos[-1].record.id, [(info.record.id, declared_quotas(info)) for info in infos
                                     if info.record.state != TenantState.DELETED.value]

    def _report(self, tenant: str, quotas: Sequence[str], usage: Mapping[str, tuple[int, int]],
                period_end: int) -> UsageReport:
        totals = {name: usage.get(name, (0, 0)) for name in sorted({*quotas, *usage})}
        previous = self._previous.get(tenant)
        return UsageReport(tenant, period_end, self._interval, totals,
                           previous=None if previous is None else previous[1],
                           previous_end=None if previous is None else previous[0])

    def _encode(self, reports: Sequence[UsageReport]) -> list[OutboundEvent]:
        return [encode_usage(report, self._source) for report in reports]
