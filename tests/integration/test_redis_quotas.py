"""What only the Redis quota backends have to prove: their clock, the calendar arithmetic, batching,
exactness across processes, reloading a lost script (on one Redis and on a 3-primary Redis Cluster), and
riding out a Redis outage (one Redis here; a cluster's failover is in test_redis_cluster.py)."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from tenantgate.clock import FakeClock
from tenantgate.counters import open_counter_store
from tenantgate.engines.quota import QuotaEngine, QuotaRequestItem, calendar_window, payload_digest
from tenantgate.model import CalendarPeriod
from tenantgate.registry.sqlite import SQLiteStore
from tenantgate.v1 import decision_pb2 as pb
from tests.conftest import RunningServer, manifests, snapshot_of, tenant_doc
from tests.faults import TcpProxy
from tests.redis_cluster import RedisCluster

QUOTAS = {"api": {"rate": "1/minute", "burst": 2}, "jobs": {"limit": 100, "period": "day"}}


@dataclass(frozen=True)
class Backend:
    """A Redis quota backend under test: its URL, the test's key prefix, and the Redis servers behind it."""

    url: str
    prefix: str
    servers: list[redis.Redis]  # one, or each primary of the cluster

    def flush_scripts(self) -> None:
        """What a Redis restart or a failover to a replica does to loaded scripts."""
        for server in self.servers:
            server.script_flush()


@pytest.fixture(params=["redis", "redis-cluster"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """Each test that takes it runs on one Redis and on the run's 3-primary Redis Cluster."""
    if request.param == "redis":
        url = str(request.getfixturevalue("redis_url"))
        servers = [redis.Redis.from_url(url)]
        chosen = Backend(url, str(request.getfixturevalue("redis_prefix")), servers)
    else:
        cluster: RedisCluster = request.getfixturevalue("redis_cluster_nodes")
        servers = [redis.Redis(port=port) for port in cluster.primaries()]
        chosen = Backend(cluster.url, str(request.getfixturevalue("cluster_prefix")), servers)
    yield chosen
    for server in servers:
        server.close()


@pytest.fixture
async def redis_store(backend: Backend) -> AsyncIterator[Any]:
    opened = open_counter_store(backend.url, prefix=backend.prefix)
    yield opened
    await opened.close()


async def test_refill_follows_the_redis_clock_not_the_callers(redis_store: Any) -> None:
    clock = FakeClock(time.time())
    engine = QuotaEngine(redis_store, clock=clock)
    snapshot = snapshot_of(tenant_doc("acme", quotas=QUOTAS))
    assert (await engine.consume(snapshot, "acme", [QuotaRequestItem("api", 2)])).allowed
    clock.advance(3600)  # a caller whose clock runs an hour ahead would refill the bucket; Redis does not
    assert not (await engine.consume(snapshot, "acme", [QuotaRequestItem("api", 1)])).allowed


def test_the_scripts_calendar_windows_match_pythons(redis_url: str) -> None:
    from tenantgate.counters.scripts import CONSUME_SCRIPT

    window_lua = CONSUME_SCRIPT.split("-- One ConsumeQuota call")[0]
    probe = window_lua + "\nlocal a, b = calendar_window(ARGV[1], tonumber(ARGV[2]))\nreturn {tostring(a), tostring(b)}"
    client = redis.Redis.from_url(redis_url)
    moments = [datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC), datetime(2023, 12, 31, 12, tzinfo=UTC),
               datetime(2100, 3, 1, tzinfo=UTC), datetime(1999, 12, 31, 23, 59, tzinfo=UTC)]
    moments += [datetime(2026, 1, 1, 6, tzinfo=UTC) + timedelta(days=d) for d in range(0, 800, 13)]
    for moment in moments:
        for period in CalendarPeriod:
            start, end = client.eval(probe, 0, period.value, str(moment.timestamp()))
            assert (float(start), float(end)) == calendar_window(period, moment.timestamp()), (moment, period)
    client.close()


async def test_concurrent_consumes_share_round_trips(redis_store: Any) -> None:
    engine = QuotaEngine(redis_store)
    snapshot = snapshot_of(tenant_doc("acme", quotas=QUOTAS))
    outcomes = await asyncio.gather(*(engine.consume(snapshot, "acme", [QuotaRequestItem("jobs", 1)])
                                      for _ in range(200)))
    assert sum(o.allowed for o in outcomes) == 100
    assert redis_store.consumes == 200 and redis_store.round_trips <= 20


async def test_a_script_cache_lost_by_redis_is_reloaded_and_the_call_counted_once(
        redis_store: Any, backend: Backend) -> None:
    engine = QuotaEngine(redis_store)
    snapshot = snapshot_of(tenant_doc("acme", quotas=QUOTAS))
    assert (await engine.consume(snapshot, "acme", [QuotaRequestItem("jobs", 60)])).allowed
    backend.flush_scripts()
    assert (await engine.consume(snapshot, "acme", [QuotaRequestItem("jobs", 40)])).allowed
    assert not (await engine.consume(snapshot, "acme", [QuotaRequestItem("jobs", 1)])).allowed


def _hammer(redis_url: str, prefix: str, callers: int, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    async def run() -> int:
        store = open_counter_store(redis_url, prefix=prefix)
        engine = QuotaEngine(store)
        snapshot = snapshot_of(tenant_doc("acme", quotas=QUOTAS))
        outcomes = await asyncio.gather(*(engine.consume(snapshot, "acme", [QuotaRequestItem("jobs", 1)])
                                          for _ in range(callers)))
        await store.close()
        return sum(o.allowed for o in outcomes)

    results.put(asyncio.run(run()))


def test_four_processes_of_fifty_callers_admit_exactly_the_limit(backend: Backend) -> None:
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = context.Queue()  # type: ignore[type-arg]
    # Daemons, ended below whatever happens: a hung child must not hold the test run up at exit.
    processes = [context.Process(target=_hammer, args=(backend.url, backend.prefix, 50, results), daemon=True)
                 for _ in range(4)]
    try:
        for process in processes:
            process.start()
        admitted = [results.get(timeout=60) for _ in processes]
    finally:
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
    assert sum(admitted) == 100, admitted


@pytest.fixture
def proxied_redis(redis_url: str) -> Iterator[tuple[str, TcpProxy]]:
    parts = urlsplit(redis_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    yield urlunsplit(parts._replace(netloc=f"127.0.0.1:{proxy.port}")), proxy
    proxy.close()


def test_a_redis_outage_is_answered_by_policy_and_recovered_from(
        registry_path: Path, sqlite_store: SQLiteStore, redis_prefix: str, proxied_redis: tuple[str, TcpProxy],
        start_server: Callable[..., RunningServer]) -> None:
    url, proxy = proxied_redis
    sqlite_store.apply(manifests({"acme": tenant_doc("acme", quotas={"jobs": {"limit": 100, "period": "day"},
                                                    "reads": {"limit": 100, "period": "day",
                                                              "on_backend_error": "allow"}})}))
    server = start_server(registry_url=f"sqlite://{registry_path}", quota_backend=url, quota_prefix=redis_prefix)
    server.wait_synced(1)
    health = health_pb2_grpc.HealthStub(server.channel)

    def consume(quota: str) -> pb.ConsumeQuotaResponse:
        return server.stub.ConsumeQuota(pb.ConsumeQuotaRequest(tenant_id="acme", items=[
            pb.QuotaItem(quota=quota, amount=1)]), timeout=10)

    def backend_health() -> int:
        return health.Check(health_pb2.HealthCheckRequest(service="tenantgate.quota_backend")).status

    assert consume("jobs").allowed
    proxy.cut()
    denied = consume("jobs")
    assert not denied.allowed and denied.results[0].retry_after.seconds == 1  # the default policy: deny
    assert consume("reads").allowed  # this quota says allow
    assert backend_health() == health_pb2.HealthCheckResponse.NOT_SERVING
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    assert REGISTRY.get_sample_value("tenantgate_quota_backend_up") == 0
    proxy.restore()
    deadline = time.monotonic() + 5
    while backend_health() != health_pb2.HealthCheckResponse.SERVING:  # recovered without any traffic
        assert time.monotonic() < deadline
        time.sleep(0.05)
    recovered = consume("jobs")
    assert recovered.allowed and recovered.results[0].remaining == 98
    with pytest.raises(grpc.RpcError):
        server.stub.ConsumeQuota(pb.ConsumeQuotaRequest(tenant_id="acme", items=[pb.QuotaItem(quota="nope")]))


async def test_counters_and_answers_kept_by_the_previous_release_carry_on(redis_url: str, redis_prefix: str) -> None:
    """The key layout is the previous release's, with fields added: its buckets, windows and idempotency answers
    (kept as JSON) are read as they are, so an upgrade resets no counter and a retry across it counts once."""
    client = redis.Redis.from_url(redis_url)
    seconds, micros = client.time()
    now = seconds + micros / 1_000_000
    start, end = calendar_window(CalendarPeriod.DAY, now)
    # As the previous release's script left them: a bucket just emptied, with no stored expiry; a window with 99
    # of 100 spent; the answer to an idempotent call.
    client.hset(f"{redis_prefix}{{acme}}:q:api", mapping={"tokens": 0, "ts": now})
    client.hset(f"{redis_prefix}{{acme}}:q:jobs", mapping={"start": start, "used": 99})
    jobs = [QuotaRequestItem("jobs", 1)]
    client.set(f"{redis_prefix}{{acme}}:idem:k1", payload_digest("acme", jobs, False) + '|[[1,7,0.5,0,""]]',
               px=60_000)
    store = open_counter_store(redis_url, prefix=redis_prefix)
    engine = QuotaEngine(store)
    snapshot = snapshot_of(tenant_doc("acme", quotas=QUOTAS))
    try:
        assert not (await engine.consume(snapshot, "acme", [QuotaRequestItem("api", 1)])).allowed
        replayed = await engine.consume(snapshot, "acme", jobs, idempotency_key="k1")
        assert replayed.allowed and (replayed.items[0].remaining, replayed.items[0].reset_after) == (7, 0.5)
        assert (await engine.consume(snapshot, "acme", jobs)).items[0].remaining == 0
        assert not (await engine.consume(snapshot, "acme", jobs)).allowed
        # The window's key now expires a day after the window ends, as it did.
        assert client.pexpiretime(f"{redis_prefix}{{acme}}:q:jobs") == math.ceil(end * 1000) + 86_400_000
    finally:
        await store.close()
        client.close()


async def test_a_buckets_expiry_is_moved_only_when_it_would_come_before_the_bucket_is_full(
        redis_url: str, redis_prefix: str) -> None:
    """A bucket's key is dropped once the bucket has refilled (it then holds nothing a full bucket does not).
    Moving its expiry on every call would cost a Redis command each time: it is moved, with as much slack again,
    only when the expiry kept in the hash comes before the bucket could be full."""
    client = redis.Redis.from_url(redis_url)
    key = f"{redis_prefix}{{acme}}:q:api"
    store = open_counter_store(redis_url, prefix=redis_prefix)
    engine = QuotaEngine(store)
    snapshot = snapshot_of(tenant_doc("acme", quotas=QUOTAS))  # 1/minute, burst 2: full 120 s after empty
    try:
        seconds, _ = client.time()
        assert (await engine.consume(snapshot, "acme", [QuotaRequestItem("api", 1)])).allowed
        first = client.pexpiretime(key)
        assert int(client.hget(key, "expires") or 0) == first
        assert (seconds + 120) * 1000 < first <= (seconds + 1 + 241) * 1000  # full by then, with slack
        client.hset(key, "expires", first + 3_600_000)
        client.pexpireat(key, first + 3_600_000)  # later than needed: left alone
        assert (await engine.consume(snapshot, "acme", [QuotaRequestItem("api", 1)])).allowed
        assert client.pexpiretime(key) == first + 3_600_000
        client.hset(key, mapping={"tokens": 2, "expires": seconds * 1000})  # too early: moved
        assert (await engine.consume(snapshot, "acme", [QuotaRequestItem("api", 1)])).allowed
        assert (seconds + 120) * 1000 < client.pexpiretime(key) == int(client.hget(key, "expires") or 0)
    finally:
        await store.close()
        client.close()


async def test_the_usual_call_follows_its_quota_and_amount_and_keeps_tenants_apart(redis_store: Any) -> None:
    """A consume of one item without an idempotency key, on the Redis clock, sends a command encoded once per
    quota and amount: a changed amount, a changed quota and another tenant's quota of the same name each get
    their own."""
    jobs = {"jobs": {"limit": 10, "period": "day"}}
    before = snapshot_of(tenant_doc("acme", quotas=jobs), tenant_doc("globex", quotas=jobs))
    engine = QuotaEngine(redis_store)

    async def consumed(snapshot: Any, tenant: str, amount: int) -> tuple[bool, int, int]:
        item = (await engine.consume(snapshot, tenant, [QuotaRequestItem("jobs", amount)])).items[0]
        return item.allowed, item.limit, item.remaining

    assert await consumed(before, "acme", 3) == (True, 10, 7)
    assert await consumed(before, "acme", 3) == (True, 10, 4)
    assert await consumed(before, "acme", 2) == (True, 10, 2)
    assert await consumed(before, "globex", 1) == (True, 10, 9)
    assert await consumed(before, "acme", 3) == (False, 10, 2)
    after = snapshot_of(tenant_doc("acme", quotas={"jobs": {"limit": 20, "period": "day"}}),
                        tenant_doc("globex", quotas=jobs), revision=2)
    assert await consumed(after, "acme", 3) == (True, 20, 9)
    assert await consumed(after, "globex", 1) == (True, 10, 8)
