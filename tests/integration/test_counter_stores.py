"""One contract for the quota counter stores: every test runs on memory and on Redis, through the quota
engine, on a fake clock (the Redis store is told to count at the engine's time instead of the Redis server's:
``time_from_caller``, for tests only)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tenantgate.clock import FakeClock
from tenantgate.counters.memory import MemoryCounterStore
from tenantgate.counters.redis import RedisCounterStore
from tenantgate.engines.quota import ConsumeOutcome, CounterStore, QuotaEngine, QuotaRequestItem
from tenantgate.errors import Aborted, NotFound
from tenantgate.snapshot import Snapshot
from tests.conftest import snapshot_of, tenant_doc

QUOTAS = {
    "api": {"rate": "20/second", "burst": 2},
    "ai": {"limit": 100, "period": "month"},
    "conc": {"concurrency": 2, "lease_ttl": "1s"},
    "users": {"allocation": 5},
    "disk": {"allocation": "1Ki"},
    "trial": {"limit": 1, "period": "day", "shadow": True},
}


@pytest.fixture
async def counters(quota_backend: tuple[str, str]) -> AsyncIterator[CounterStore]:
    url, prefix = quota_backend
    store: CounterStore = (MemoryCounterStore() if url.startswith("memory:")
                           else RedisCounterStore(url, prefix=prefix, time_from_caller=True))
    yield store
    await store.close()


@pytest.fixture
def clock() -> FakeClock:
    # Later than any Redis server's clock: Redis expires keys on its own clock, and a key set to expire at a
    # fake time in its past would be gone at once.
    return FakeClock(4_102_444_800.0)  # 2100-01-01


@pytest.fixture
def engine(counters: CounterStore, clock: FakeClock) -> QuotaEngine:
    return QuotaEngine(counters, clock=clock)


@pytest.fixture
def snapshot() -> Snapshot:
    return snapshot_of(tenant_doc("acme", quotas=QUOTAS), tenant_doc("globex", quotas=QUOTAS))


async def consume(engine: QuotaEngine, snapshot: Snapshot, *items: tuple[str, int], tenant: str = "acme",
                  release: bool = False, key: str = "", lease: str = "") -> ConsumeOutcome:
    return await engine.consume(snapshot, tenant, [QuotaRequestItem(q, a, lease) for q, a in items], release=release,
                                idempotency_key=key)


async def test_token_bucket_denies_then_refills(engine: QuotaEngine, snapshot: Snapshot, clock: FakeClock) -> None:
    assert (await consume(engine, snapshot, ("api", 2))).allowed
    denied = await consume(engine, snapshot, ("api", 1))
    assert not denied.allowed and 0 < denied.items[0].retry_after <= 0.06
    clock.advance(0.04)  # 20 per second: not yet one token back
    assert not (await consume(engine, snapshot, ("api", 1))).allowed
    clock.advance(0.08)  # two tokens back
    assert (await consume(engine, snapshot, ("api", 2))).allowed


async def test_window_limit_and_remaining(engine: QuotaEngine, snapshot: Snapshot) -> None:
    first = await consume(engine, snapshot, ("ai", 60))
    assert first.allowed and first.items[0].remaining == 40 and first.items[0].limit == 100
    denied = await consume(engine, snapshot, ("ai", 41))
    assert not denied.allowed and denied.items[0].retry_after > 0
    assert (await consume(engine, snapshot, ("ai", 40))).items[0].remaining == 0


async def test_all_or_nothing_across_items(engine: QuotaEngine, snapshot: Snapshot) -> None:
    assert (await consume(engine, snapshot, ("users", 4))).allowed
    denied = await consume(engine, snapshot, ("ai", 10), ("users", 2))
    assert not denied.allowed and [i.allowed for i in denied.items] == [True, False]
    check = await consume(engine, snapshot, ("ai", 0), ("users", 0))
    assert [i.remaining for i in check.items] == [100, 1]


async def test_allocations_go_up_and_down_never_below_zero(engine: QuotaEngine, snapshot: Snapshot) -> None:
    assert (await consume(engine, snapshot, ("users", 5))).allowed
    assert not (await consume(engine, snapshot, ("users", 1))).allowed
    assert (await consume(engine, snapshot, ("users", 2), release=True)).items[0].remaining == 2
    assert (await consume(engine, snapshot, ("users", 99), release=True)).items[0].remaining == 5
    assert (await consume(engine, snapshot, ("disk", 1024))).allowed
    assert not (await consume(engine, snapshot, ("disk", 1))).allowed


async def test_leases_release_by_id_and_expire(engine: QuotaEngine, snapshot: Snapshot, clock: FakeClock) -> None:
    first = await consume(engine, snapshot, ("conc", 1))
    second = await consume(engine, snapshot, ("conc", 1))
    assert first.allowed and second.allowed and first.items[0].lease_id != second.items[0].lease_id
    full = await consume(engine, snapshot, ("conc", 1))
    assert not full.allowed and 0 < full.items[0].retry_after <= 1.0
    assert (await consume(engine, snapshot, ("conc", 1), release=True, lease=first.items[0].lease_id)).allowed
    assert (await consume(engine, snapshot, ("conc", 1))).allowed
    clock.advance(0.9)  # lease_ttl 1s: still held
    assert not (await consume(engine, snapshot, ("conc", 1))).allowed
    clock.advance(0.2)  # a crashed holder's leases run out
    assert (await consume(engine, snapshot, ("conc", 2))).allowed
    with pytest.raises(NotFound, match="is not held"):  # its holder learns that it ran out
        await consume(engine, snapshot, ("conc", 1), release=True, lease=second.items[0].lease_id)


async def test_releasing_a_lease_not_held_is_not_found_and_releases_nothing(engine: QuotaEngine,
                                                                              snapshot: Snapshot) -> None:
    assert (await consume(engine, snapshot, ("users", 3))).allowed
    lease = (await consume(engine, snapshot, ("conc", 1))).items[0].lease_id
    with pytest.raises(NotFound) as caught:
        await engine.consume(snapshot, "acme", [QuotaRequestItem("users", 2), QuotaRequestItem("conc", 1, "nope")],
                             release=True)
    assert caught.value.field == "items[1].lease_id" and "lease 'nope' of quota 'conc' is not held" in str(caught.value)
    # All or nothing: the allocation released beside it was not released.
    assert (await consume(engine, snapshot, ("users", 0))).items[0].remaining == 2
    released = await consume(engine, snapshot, ("conc", 1), release=True, lease=lease, key="r1")
    assert released.allowed and released.items[0].remaining == 2
    # A retried release with its idempotency key gets the first answer; without one, the lease is gone.
    assert await consume(engine, snapshot, ("conc", 1), release=True, lease=lease, key="r1") == released
    with pytest.raises(NotFound):
        await consume(engine, snapshot, ("conc", 1), release=True, lease=lease)


async def test_idempotency_replays_and_refuses_another_payload(engine: QuotaEngine, snapshot: Snapshot) -> None:
    first = await consume(engine, snapshot, ("users", 3), key="k1")
    assert await consume(engine, snapshot, ("users", 3), key="k1") == first
    assert (await consume(engine, snapshot, ("users", 0))).items[0].remaining == 2
    with pytest.raises(Aborted):
        await consume(engine, snapshot, ("users", 1), key="k1")
    # Keys belong to a tenant: the same key elsewhere is another request.
    assert (await consume(engine, snapshot, ("users", 1), key="k1", tenant="globex")).items[0].remaining == 4


async def test_shadow_quota_counts_but_never_denies(engine: QuotaEngine, snapshot: Snapshot) -> None:
    assert (await consume(engine, snapshot, ("trial", 1))).allowed
    over = await consume(engine, snapshot, ("trial", 1), ("users", 1))
    assert over.allowed and over.items[0].shadow and not over.items[0].allowed


async def test_tenants_do_not_share_counters(engine: QuotaEngine, snapshot: Snapshot) -> None:
    assert (await consume(engine, snapshot, ("users", 5))).allowed
    assert (await consume(engine, snapshot, ("users", 5), tenant="globex")).allowed


async def test_a_changed_limit_applies_at_once_and_keeps_what_was_spent(engine: QuotaEngine) -> None:
    before = snapshot_of(tenant_doc("acme", quotas={"users": {"allocation": 5}}))
    lowered = snapshot_of(tenant_doc("acme", quotas={"users": {"allocation": 3}}), revision=2)
    raised = snapshot_of(tenant_doc("acme", quotas={"users": {"allocation": 8}}), revision=3)
    assert (await engine.consume(before, "acme", [QuotaRequestItem("users", 4)])).allowed
    assert not (await engine.consume(lowered, "acme", [QuotaRequestItem("users", 1)])).allowed
    assert (await engine.consume(raised, "acme", [QuotaRequestItem("users", 0)])).items[0].remaining == 4


async def test_metering_counts_units_consumed_and_denied(engine: QuotaEngine, snapshot: Snapshot) -> None:
    await consume(engine, snapshot, ("ai", 30))
    await consume(engine, snapshot, ("ai", 50), ("users", 2))
    await consume(engine, snapshot, ("ai", 90))  # denied
    await consume(engine, snapshot, ("users", 1), release=True)
    usage = await engine.usage(snapshot, "acme")
    assert usage["ai"] == (80, 90) and usage["users"] == (2, 0) and usage["api"] == (0, 0)


async def test_many_concurrent_consumes_admit_exactly_the_limit(engine: QuotaEngine, snapshot: Snapshot) -> None:
    outcomes = await asyncio.gather(*(consume(engine, snapshot, ("ai", 1)) for _ in range(300)))
    assert sum(o.allowed for o in outcomes) == 100
