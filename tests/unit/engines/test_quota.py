from __future__ import annotations

import asyncio
import re
import socket
import time
from datetime import UTC, datetime

import pytest

from tenantgate.clock import FakeClock
from tenantgate.counters import open_counter_store
from tenantgate.counters.memory import MemoryCounterStore
from tenantgate.engines.quota import MAX_AMOUNT, MAX_ITEMS, QuotaEngine, QuotaRequestItem, calendar_window
from tenantgate.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from tenantgate.model import CalendarPeriod
from tenantgate.snapshot import Snapshot
from tests.conftest import snapshot_of, tenant_doc

QUOTAS = {
    "api": {"rate": "60/minute", "burst": 10},
    "ai": {"limit": 100, "period": "month"},
    "conc": {"concurrency": 2, "lease_ttl": "30s"},
    "users": {"allocation": 5},
    "disk": {"allocation": "1Ki"},
    "trial": {"limit": 1, "period": "day", "shadow": True},
}
# 2027-01-31 23:59:00 UTC: a month end, to see windows roll over.
START = datetime(2027, 1, 31, 23, 59, tzinfo=UTC).timestamp()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def engine(clock: FakeClock) -> QuotaEngine:
    return QuotaEngine(MemoryCounterStore(), clock=clock)


@pytest.fixture
def snapshot() -> Snapshot:
    return snapshot_of(tenant_doc("acme", quotas=QUOTAS), tenant_doc("paused", state="Suspended", quotas=QUOTAS))


async def consume(engine: QuotaEngine, snapshot: Snapshot, *items: tuple[str, int], **options: object):  # type: ignore[no-untyped-def]
    return await engine.consume(snapshot, "acme", [QuotaRequestItem(q, a) for q, a in items], **options)  # type: ignore[arg-type]


async def test_rate_token_bucket_refills_over_time(engine: QuotaEngine, snapshot: Snapshot,
                                                   clock: FakeClock) -> None:
    first = await consume(engine, snapshot, ("api", 10))
    assert first.allowed and first.items[0].remaining == 0 and first.items[0].limit == 10
    denied = await consume(engine, snapshot, ("api", 1))
    assert not denied.allowed and denied.items[0].retry_after == pytest.approx(1.0)
    clock.advance(3)  # 1 token per second
    assert (await consume(engine, snapshot, ("api", 3))).allowed
    assert not (await consume(engine, snapshot, ("api", 1))).allowed


async def test_calendar_window_resets_at_the_utc_boundary(engine: QuotaEngine, snapshot: Snapshot,
                                                          clock: FakeClock) -> None:
    assert (await consume(engine, snapshot, ("ai", 100))).allowed
    denied = await consume(engine, snapshot, ("ai", 1))
    assert not denied.allowed and denied.items[0].retry_after == pytest.approx(60)
    clock.advance(60)
    fresh = await consume(engine, snapshot, ("ai", 1))
    assert fresh.allowed and fresh.items[0].remaining == 99


def test_calendar_windows() -> None:
    moment = datetime(2027, 3, 17, 15, 30, tzinfo=UTC).timestamp()  # a Wednesday
    assert calendar_window(CalendarPeriod.DAY, moment) == (datetime(2027, 3, 17, tzinfo=UTC).timestamp(),
                                                           datetime(2027, 3, 18, tzinfo=UTC).timestamp())
    assert calendar_window(CalendarPeriod.WEEK, moment)[0] == datetime(2027, 3, 15, tzinfo=UTC).timestamp()
    assert calendar_window(CalendarPeriod.MONTH, moment) == (datetime(2027, 3, 1, tzinfo=UTC).timestamp(),
                                                             datetime(2027, 4, 1, tzinfo=UTC).timestamp())


async def test_concurrency_leases_release_by_id_and_expire(engine: QuotaEngine, snapshot: Snapshot,
                                                           clock: FakeClock) -> None:
    first = await consume(engine, snapshot, ("conc", 1))
    second = await consume(engine, snapshot, ("conc", 1))
    assert first.allowed and second.allowed and first.items[0].lease_id != second.items[0].lease_id
    assert not (await consume(engine, snapshot, ("conc", 1))).allowed
    released = await engine.consume(snapshot, "acme", [QuotaRequestItem("conc", 1, first.items[0].lease_id)],
                                    release=True)
    assert released.allowed
    assert (await consume(engine, snapshot, ("conc", 1))).allowed
    assert not (await consume(engine, snapshot, ("conc", 1))).allowed
    clock.advance(31)  # every lease has expired: a crashed holder cannot keep capacity
    assert (await consume(engine, snapshot, ("conc", 2))).allowed


async def test_allocation_goes_up_and_down_never_below_zero(engine: QuotaEngine, snapshot: Snapshot) -> None:
    assert (await consume(engine, snapshot, ("users", 5))).allowed
    assert not (await consume(engine, snapshot, ("users", 1))).allowed
    assert (await consume(engine, snapshot, ("users", 2), release=True)).items[0].remaining == 2
    assert (await consume(engine, snapshot, ("users", 50), release=True)).items[0].remaining == 5
    assert (await consume(engine, snapshot, ("users", 5))).allowed
    assert (await consume(engine, snapshot, ("disk", 1024))).allowed


async def test_all_or_nothing_across_items(engine: QuotaEngine, snapshot: Snapshot) -> None:
    assert (await consume(engine, snapshot, ("users", 4))).allowed
    denied = await consume(engine, snapshot, ("ai", 10), ("users", 2))
    assert not denied.allowed
    assert [item.allowed for item in denied.items] == [True, False]
    # The admitted-looking item spent nothing.
    check = await consume(engine, snapshot, ("ai", 0))
    assert check.allowed and check.items[0].remaining == 100


async def test_shadow_quota_reports_but_never_denies(engine: QuotaEngine, snapshot: Snapshot) -> None:
    assert (await consume(engine, snapshot, ("trial", 1))).allowed
    over = await consume(engine, snapshot, ("trial", 1), ("users", 1))
    assert over.allowed
    assert over.items[0].shadow and not over.items[0].allowed


async def test_idempotency_key_replays_and_refuses_other_payloads(engine: QuotaEngine, snapshot: Snapshot) -> None:
    first = await consume(engine, snapshot, ("users", 3), idempotency_key="k1")
    again = await consume(engine, snapshot, ("users", 3), idempotency_key="k1")
    assert first == again
    assert (await consume(engine, snapshot, ("users", 0))).items[0].remaining == 2
    with pytest.raises(Aborted, match="different request"):
        await consume(engine, snapshot, ("users", 1), idempotency_key="k1")


async def test_a_raised_limit_keeps_what_was_spent(engine: QuotaEngine) -> None:
    before = snapshot_of(tenant_doc("acme", quotas={"users": {"allocation": 5}}))
    after = snapshot_of(tenant_doc("acme", quotas={"users": {"allocation": 8}}), revision=2)
    assert (await engine.consume(before, "acme", [QuotaRequestItem("users", 5)])).allowed
    raised = await engine.consume(after, "acme", [QuotaRequestItem("users", 0)])
    assert raised.items[0].remaining == 3 and raised.revision == 2


@pytest.mark.parametrize(
    ("tenant", "items", "options", "error", "field"),
    [
        ("nope", [("users", 1)], {}, NotFound, "tenant_id"),
        ("paused", [("users", 1)], {}, FailedPrecondition, "tenant_id"),
        ("acme", [], {}, InvalidArgument, "items"),
        ("acme", [("nope", 1)], {}, NotFound, "items[0].quota"),
        ("acme", [("users", 1), ("users", 1)], {}, InvalidArgument, "items[1].quota"),
        ("acme", [("api", 1)], {"release": True}, InvalidArgument, "release"),
        ("acme", [("conc", 1)], {"release": True}, InvalidArgument, "items[0].lease_id"),
    ],
)
async def test_bad_requests(engine: QuotaEngine, snapshot: Snapshot, tenant: str, items: list[tuple[str, int]],
                            options: dict[str, bool], error: type[Exception], field: str) -> None:
    with pytest.raises(error) as caught:
        await engine.consume(snapshot, tenant, [QuotaRequestItem(q, a) for q, a in items], **options)
    assert caught.value.field == field  # type: ignore[attr-defined]


async def test_an_idle_rate_bucket_refills_to_its_burst_and_no_further(engine: QuotaEngine, snapshot: Snapshot,
                                                                       clock: FakeClock) -> None:
    fresh = await consume(engine, snapshot, ("api", 0))
    assert fresh.allowed and fresh.items[0].remaining == 10
    assert (await consume(engine, snapshot, ("api", 1))).items[0].remaining == 9
    clock.advance(3600)  # an hour idle at 1 token per second: refilled to the burst of 10, not to 3,609
    idle = await consume(engine, snapshot, ("api", 0))
    assert idle.allowed and idle.items[0].remaining == 10 and idle.items[0].reset_after == 0
    assert (await consume(engine, snapshot, ("api", 10))).allowed
    over = await consume(engine, snapshot, ("api", 1))
    assert not over.allowed and over.items[0].remaining == 0


async def test_rate_answers_say_when_to_retry_and_when_the_bucket_is_full(clock: FakeClock) -> None:
    # 2 tokens a second, burst 10: an answer's durations are seconds of refill.
    snapshot = snapshot_of(tenant_doc("acme", quotas={"fast": {"rate": "120/minute", "burst": 10}}))
    engine = QuotaEngine(MemoryCounterStore(), clock=clock)
    taken = (await engine.consume(snapshot, "acme", [QuotaRequestItem("fast", 4)])).items[0]
    assert (taken.allowed, taken.remaining, taken.reset_after, taken.retry_after) == (True, 6, 2.0, 0.0)
    refused = (await engine.consume(snapshot, "acme", [QuotaRequestItem("fast", 8)])).items[0]
    assert (refused.allowed, refused.remaining, refused.reset_after, refused.retry_after) == (False, 6, 2.0, 1.0)
    clock.advance(refused.retry_after)
    assert (await engine.consume(snapshot, "acme", [QuotaRequestItem("fast", 8)])).allowed


async def test_window_and_allocation_answers(engine: QuotaEngine, snapshot: Snapshot) -> None:
    # START is 60 s before the monthly window ends.
    spent = (await consume(engine, snapshot, ("ai", 30))).items[0]
    assert (spent.allowed, spent.remaining, spent.reset_after, spent.retry_after) == (True, 70, 60.0, 0.0)
    refused = (await consume(engine, snapshot, ("ai", 71))).items[0]
    assert (refused.allowed, refused.remaining, refused.reset_after, refused.retry_after) == (False, 70, 60.0, 60.0)
    seats = (await consume(engine, snapshot, ("users", 5))).items[0]
    assert (seats.allowed, seats.remaining, seats.reset_after, seats.retry_after) == (True, 0, 0.0, 0.0)
    full = (await consume(engine, snapshot, ("users", 1))).items[0]
    # Only a release frees an allocation: there is no time to wait for.
    assert (full.allowed, full.remaining, full.reset_after, full.retry_after) == (False, 0, 0.0, 0.0)


async def test_each_item_answer_names_its_quota_and_amount(engine: QuotaEngine, snapshot: Snapshot) -> None:
    outcome = await consume(engine, snapshot, ("ai", 10), ("users", 2), ("trial", 1))
    assert [(item.quota, item.amount, item.limit, item.shadow) for item in outcome.items] == [
        ("ai", 10, 100, False), ("users", 2, 5, False), ("trial", 1, 1, True)]
    assert (outcome.allowed, outcome.revision, outcome.degraded) == (True, 1, False)


async def test_a_lowered_limit_leaves_nothing_remaining_never_less(engine: QuotaEngine) -> None:
    quotas = {"users": {"allocation": 5}, "ai": {"limit": 100, "period": "month"}}
    before = snapshot_of(tenant_doc("acme", quotas=quotas))
    lowered = snapshot_of(tenant_doc("acme", quotas={"users": {"allocation": 3},
                                                     "ai": {"limit": 50, "period": "month"}}), revision=2)
    assert (await engine.consume(before, "acme", [QuotaRequestItem("users", 5), QuotaRequestItem("ai", 80)])).allowed
    after = await engine.consume(lowered, "acme", [QuotaRequestItem("users", 1), QuotaRequestItem("ai", 1)])
    assert [(item.allowed, item.remaining) for item in after.items] == [(False, 0), (False, 0)]


async def test_a_daily_window_resets_at_utc_midnight() -> None:
    clock = FakeClock(datetime(2027, 3, 17, 23, 59, 30, tzinfo=UTC).timestamp())  # mid-month
    engine = QuotaEngine(MemoryCounterStore(), clock=clock)
    snapshot = snapshot_of(tenant_doc("acme", quotas={"daily": {"limit": 2, "period": "day"}}))
    assert (await engine.consume(snapshot, "acme", [QuotaRequestItem("daily", 2)])).allowed
    refused = (await engine.consume(snapshot, "acme", [QuotaRequestItem("daily", 1)])).items[0]
    assert (refused.allowed, refused.retry_after) == (False, 30.0)
    clock.advance(30)
    fresh = (await engine.consume(snapshot, "acme", [QuotaRequestItem("daily", 1)])).items[0]
    assert (fresh.allowed, fresh.remaining, fresh.reset_after) == (True, 1, 24 * 3600.0)


def test_calendar_windows_are_utc_whatever_the_servers_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    moment = datetime(2027, 3, 17, 15, 30, 45, tzinfo=UTC).timestamp()  # a Wednesday, seconds past the minute
    expected = {CalendarPeriod.DAY: (datetime(2027, 3, 17, tzinfo=UTC), datetime(2027, 3, 18, tzinfo=UTC)),
                CalendarPeriod.WEEK: (datetime(2027, 3, 15, tzinfo=UTC), datetime(2027, 3, 22, tzinfo=UTC)),
                CalendarPeriod.MONTH: (datetime(2027, 3, 1, tzinfo=UTC), datetime(2027, 4, 1, tzinfo=UTC))}
    try:
        for zone in ("UTC0", "NZST-12", "HST10"):  # POSIX zones: no time zone database needed
            monkeypatch.setenv("TZ", zone)
            time.tzset()
            for period, (start, end) in expected.items():
                assert calendar_window(period, moment) == (start.timestamp(), end.timestamp()), (zone, period)
    finally:
        monkeypatch.undo()
        time.tzset()


async def test_idempotency_keys_are_independent_and_remember_consume_or_release(
        engine: QuotaEngine, snapshot: Snapshot, clock: FakeClock) -> None:
    first = await consume(engine, snapshot, ("users", 2), idempotency_key="k1")
    other = await consume(engine, snapshot, ("users", 1), idempotency_key="k2")
    assert (first.items[0].remaining, other.items[0].remaining) == (3, 2)  # two keys, two consumes
    # A release is another request than the consume it would undo, whatever its items.
    with pytest.raises(Aborted, match="idempotency key 'k1' was used with a different request") as caught:
        await consume(engine, snapshot, ("users", 2), idempotency_key="k1", release=True)
    assert caught.value.field == "idempotency_key"
    clock.advance(24 * 3600)  # the engine's default TTL: a key is remembered that long and no longer
    released = await consume(engine, snapshot, ("users", 2), idempotency_key="k1", release=True)
    assert released.items[0].remaining == 4


async def test_leases_answer_what_remains_and_end_at_their_ttl(engine: QuotaEngine, snapshot: Snapshot,
                                                               clock: FakeClock) -> None:
    first = (await consume(engine, snapshot, ("conc", 1))).items[0]
    assert first.remaining == 1 and 0 < len(first.lease_id) <= 63  # fits the request's lease_id (63 characters)
    second = (await consume(engine, snapshot, ("conc", 1))).items[0]
    assert second.remaining == 0 and second.lease_id != first.lease_id
    released = (await engine.consume(snapshot, "acme", [QuotaRequestItem("conc", 1, first.lease_id)],
                                     release=True)).items[0]
    assert (released.allowed, released.remaining, released.lease_id) == (True, 1, first.lease_id)
    clock.advance(30)  # lease_ttl 30s: the second lease ends exactly now
    assert (await consume(engine, snapshot, ("conc", 2))).items[0].remaining == 0
    assert await MemoryCounterStore().ping()


async def test_usage_counts_units_consumed_and_denied(engine: QuotaEngine, snapshot: Snapshot) -> None:
    assert (await consume(engine, snapshot, ("users", 3))).allowed
    assert not (await consume(engine, snapshot, ("users", 4))).allowed
    assert not (await consume(engine, snapshot, ("users", 5))).allowed
    assert (await consume(engine, snapshot, ("users", 1), release=True)).allowed  # a release consumes nothing
    usage = await engine.usage(snapshot, "acme")
    assert usage["users"] == (3, 9) and usage["ai"] == (0, 0) and set(usage) == set(QUOTAS)
    with pytest.raises(NotFound, match="unknown tenant 'nope'") as caught:
        await engine.usage(snapshot, "nope")
    assert caught.value.field == "tenant_id"


MANY = {f"q{i}": {"allocation": MAX_AMOUNT} for i in range(MAX_ITEMS)}


@pytest.mark.parametrize(
    ("tenant", "items", "options", "error", "message", "field"),
    [
        ("nope", [("users", 1)], {}, NotFound, "unknown tenant 'nope'", "tenant_id"),
        ("paused", [("users", 1)], {}, FailedPrecondition,
         "tenant 'paused' is Suspended; only Active tenants consume quota", "tenant_id"),
        ("acme", [], {}, InvalidArgument, "at least one item is required", "items"),
        ("acme", [("users", 1)] * (MAX_ITEMS + 1), {}, InvalidArgument, f"at most {MAX_ITEMS} items per call",
         "items"),
        ("acme", [("nope", 1)], {}, NotFound, "tenant 'acme' has no quota 'nope'", "items[0].quota"),
        ("acme", [("users", MAX_AMOUNT + 1)], {}, InvalidArgument, f"amount must be at most {MAX_AMOUNT}",
         "items[0].amount"),
        ("acme", [("users", 1), ("users", 1)], {}, InvalidArgument, "quota 'users' is named twice; merge the amounts",
         "items[1].quota"),
        ("acme", [("api", 1)], {"release": True}, InvalidArgument,
         "quota 'api' is a rate quota; only concurrency and allocation quotas can be released", "release"),
        ("acme", [("conc", 1)], {"release": True}, InvalidArgument,
         "releasing a concurrency quota needs the lease_id it was acquired with", "items[0].lease_id"),
        ("acme", [("conc", 1, "nope")], {"release": True}, NotFound,
         "lease 'nope' of quota 'conc' is not held (released already, expired, or never acquired); "
         "nothing was released", "items[0].lease_id"),
    ],
)
async def test_bad_requests_say_what_is_wrong(engine: QuotaEngine, snapshot: Snapshot, tenant: str,
                                              items: list[tuple[str, int] | tuple[str, int, str]],
                                              options: dict[str, bool], error: type[Exception], message: str,
                                              field: str) -> None:
    with pytest.raises(error, match=f"^{re.escape(message)}$") as caught:
        await engine.consume(snapshot, tenant, [QuotaRequestItem(*item) for item in items], **options)
    assert caught.value.field == field  # type: ignore[attr-defined]


async def test_the_largest_call_and_amount_are_accepted(engine: QuotaEngine) -> None:
    snapshot = snapshot_of(tenant_doc("acme", quotas=MANY))
    outcome = await engine.consume(snapshot, "acme", [QuotaRequestItem(name, MAX_AMOUNT) for name in MANY])
    assert outcome.allowed and len(outcome.items) == MAX_ITEMS


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("url", ["redis://127.0.0.1:{port}/0", "redis+cluster://127.0.0.1:{port}"])
async def test_an_unreachable_counter_backend_is_answered_by_each_quotas_policy(clock: FakeClock, url: str) -> None:
    """Never a silent allow: each item gets its quota's stated policy, else the engine's (deny by default); on
    one Redis and on a Redis Cluster none of whose nodes can be reached."""
    snapshot = snapshot_of(tenant_doc("acme", quotas={"jobs": {"limit": 100, "period": "day"},
                                                      "reads": {"limit": 100, "period": "day",
                                                                "on_backend_error": "allow"}}))
    counters = open_counter_store(url.format(port=_closed_port()))  # nothing listens there
    try:
        async with asyncio.timeout(10):  # answered, never left hanging
            strict = await QuotaEngine(counters, clock=clock).consume(
                snapshot, "acme", [QuotaRequestItem("jobs", 1), QuotaRequestItem("reads", 1)])
            assert (strict.allowed, strict.degraded) == (False, True)
            assert [(i.quota, i.allowed, i.remaining, i.retry_after) for i in strict.items] == [
                ("jobs", False, 0, 1.0), ("reads", True, 0, 0.0)]
            lenient = await QuotaEngine(counters, clock=clock, on_backend_error="allow").consume(
                snapshot, "acme", [QuotaRequestItem("jobs", 1)])
            assert (lenient.allowed, lenient.degraded, lenient.items[0].allowed) == (True, True, True)
    finally:
        await counters.close()


@pytest.mark.parametrize("url", ["redis://127.0.0.1:{port}/0", "redis+cluster://127.0.0.1:{port}"])
async def test_a_counter_backend_that_accepts_and_never_answers_is_given_up_on(clock: FakeClock, url: str) -> None:
    """A hung Redis (a stopped process, a partition after the handshake) holds a call for about the store's
    timeout, then the call is answered by its quota's policy; so is the next one, which finds it still hung."""
    from tenantgate.counters.redis import RedisCounterStore

    held: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    counters = RedisCounterStore(url.format(port=port), timeout=0.2)
    snapshot = snapshot_of(tenant_doc("acme", quotas={"jobs": {"limit": 100, "period": "day"}}))
    engine = QuotaEngine(counters, clock=clock)
    loop = asyncio.get_running_loop()
    try:
        for _ in range(2):
            started = loop.time()
            async with asyncio.timeout(10):
                outcome = await engine.consume(snapshot, "acme", [QuotaRequestItem("jobs", 1)])
            assert (outcome.allowed, outcome.degraded) == (False, True)
            assert 0.2 <= loop.time() - started < 5
        assert held  # it did reach the server
    finally:
        await counters.close()
        for writer in held:
            writer.close()
        server.close()
