from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tenantgate.clock import FakeClock
from tenantgate.counters.memory import MemoryCounterStore
from tenantgate.engines.quota import QuotaEngine, QuotaRequestItem, calendar_window
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
