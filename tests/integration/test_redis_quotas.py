"""What only the Redis quota backends have to prove: their clock, the calendar arithmetic, batching,
exactness across processes, reloading a lost script (on one Redis and on a 3-primary Redis Cluster), and
riding out a Redis outage (one Redis here; a cluster's failover is in test_redis_cluster.py)."""

from __future__ import annotations

import asyncio
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
from tenantgate.engines.quota import QuotaEngine, QuotaRequestItem, calendar_window
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
