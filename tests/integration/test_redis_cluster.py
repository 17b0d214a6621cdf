"""tenantgate on a real Redis Cluster (``--quota-backend redis+cluster://...``): exactness across servers and
workers, idempotency, a primary killed under load, lost scripts.

What an asynchronous replica can lose. A Redis primary answers a write before its replica has it: replication
is asynchronous (``WAIT`` is not used, and would not make it synchronous either). When a primary dies, the
replica promoted in its place has every write the primary had sent it, not necessarily every write the primary
had acknowledged. A ConsumeQuota call admitted by the old primary whose increment had not reached the replica is
forgotten: the promoted replica counts fewer units than were spent, and the window admits that many more before
it is full again. The over-admission is bounded by the writes in flight to the replica when the primary died
(on one machine's loopback: the replication stream's last few milliseconds; the kernel still delivers what a
killed process had written to its socket, so a SIGKILL alone rarely loses anything, while a partition or a lost
machine can lose the whole stream backlog). The opposite also happens: a call that ran on the primary but whose
answer did not come back is answered by the quota's failure policy (denied), yet stays counted: the window then
admits fewer than its limit. Neither is an error of tenantgate's arithmetic: both are what a Redis Cluster
promises. ``test_a_killed_primary_is_answered_by_policy_then_recovers_by_itself`` measures both for its tenants
and prints the figures. A node restarted without persistence (``--save '' --appendonly no``, as here) comes back
empty: everything counted in its slots is forgotten (the server warns about that at start).

Nothing here fakes Redis: a real cluster of the machine's redis-server processes (tests/conftest.py), real
``tenantgate serve`` processes, a registry made with ``tenantgate apply``.
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tenantgate.v1 import decision_pb2 as pb
from tenantgate.v1 import decision_pb2_grpc
from tests.conftest import TENANTGATE, tenant_doc
from tests.redis_cluster import RedisCluster

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
QUOTA_BACKEND_HEALTH = "tenantgate.quota_backend"
# 20 tenants: their hash tags fall 8, 7 and 5 into the three primaries' slot ranges.
TENANTS = [f"t{i:02d}" for i in range(20)]
LIMIT = 25  # per tenant and day, in the exactness test
IDEMPOTENT = ["idem-a", "idem-b", "idem-c"]  # one on each primary


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def apply(registry: Path, documents: list[dict[str, Any]], folder: Path) -> None:
    """Makes the registry as an admin does: ``tenantgate apply -f`` a manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "tenants.yaml"
    manifest.write_text(yaml.safe_dump_all(documents))
    result = subprocess.run([TENANTGATE, "apply", "-f", str(manifest), "--registry", f"sqlite://{registry}"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


class Serve:
    """A ``tenantgate serve`` process on the cluster, stopped by ``stop``."""

    def __init__(self, registry: Path, url: str, prefix: str, log: Path, *extra: str, workers: int = 1) -> None:
        self.target = f"127.0.0.1:{free_port()}"
        self.log = log
        with log.open("w") as output:
            self.process = subprocess.Popen(
                [TENANTGATE, "serve", "--registry", f"sqlite://{registry}", "--listen", self.target,
                 "--admin-listen", "", "--snapshot-file", "", "--workers", str(workers), "--drain-delay", "0",
                 "--log-format", "text", "--quota-backend", url, "--quota-prefix", prefix, *extra],
                stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def output(self) -> str:
        return self.log.read_text()[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


async def serving_channels(server: Serve, count: int, timeout: float = 60.0) -> list[grpc.aio.Channel]:
    """``count`` channels to ``server``, each its own connection (so SO_REUSEPORT spreads them over the
    workers), each once its worker says SERVING: a channel is pinned to the worker that accepted it."""
    channels = [grpc.aio.insecure_channel(server.target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(count)]
    deadline = time.monotonic() + timeout
    for channel in channels:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                if (await health.Check(health_pb2.HealthCheckRequest(), timeout=2)).status == SERVING:
                    break
            except grpc.RpcError:
                pass
            assert server.process.poll() is None, f"the server exited:\n{server.output()}"
            assert time.monotonic() < deadline, f"the server did not serve:\n{server.output()}"
            await asyncio.sleep(0.1)
    return channels


def consume_request(tenant: str, quota: str = "jobs", amount: int = 1, key: str = "") -> pb.ConsumeQuotaRequest:
    return pb.ConsumeQuotaRequest(tenant_id=tenant, items=[pb.QuotaItem(quota=quota, amount=amount)],
                                  idempotency_key=key)


def tenant_nodes(cluster: RedisCluster, prefix: str) -> dict[str, set[int]]:
    """Tenant -> the ports of the primaries that hold keys under ``prefix`` with that tenant's hash tag."""
    held: dict[str, set[int]] = defaultdict(set)
    for port, keys in cluster.keys(f"{prefix}*").items():
        for key in keys:
            tag = re.match(re.escape(prefix) + r"\{([^}]*)\}", key)
            assert tag, f"key {key!r} does not carry the tenant as its hash tag"
            held[tag[1]].add(port)
    return held


@dataclass
class Servers:
    cluster: RedisCluster
    prefix: str
    servers: list[Serve] = field(default_factory=list)


@pytest.fixture(scope="module")
def cluster_servers(redis_cluster_nodes: RedisCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """3 ``tenantgate serve --workers 2`` processes on the run's 3-primary cluster, one SQLite registry made with
    ``tenantgate apply``, a key prefix of their own (deleted on every primary at the end)."""
    folder = tmp_path_factory.mktemp("cluster-servers")
    registry = folder / "registry.db"
    documents = [tenant_doc(tenant, quotas={"jobs": {"limit": LIMIT, "period": "day"}}) for tenant in TENANTS]
    documents += [tenant_doc(tenant, quotas={"jobs": {"limit": 100, "period": "day"}}) for tenant in IDEMPOTENT]
    apply(registry, documents, folder / "manifests")
    prefix = f"tgtest-{uuid.uuid4().hex[:8]}:"
    started = Servers(redis_cluster_nodes, prefix)
    try:
        for index in range(3):
            started.servers.append(Serve(registry, redis_cluster_nodes.url, prefix, folder / f"serve-{index}.log",
                                         workers=2))
        yield started
    finally:
        for server in started.servers:
            server.stop()
        redis_cluster_nodes.delete(f"{prefix}*")
    for server in started.servers:
        assert server.process.returncode == 0, server.output()


def test_three_servers_of_two_workers_admit_exactly_each_tenants_limit(cluster_servers: Servers) -> None:
    """600 concurrent callers, 20 tenants spread over the 3 primaries, 3 times each limit asked for: every
    tenant admits exactly LIMIT, every call is answered (admitted or denied, never an error)."""
    calls = [tenant for tenant in TENANTS for _ in range(3 * LIMIT)]
    random.Random(16).shuffle(calls)

    async def hammer() -> tuple[Counter[str], Counter[str], list[str], Counter[int]]:
        # 8 connections per server: each of its 2 workers gets some (SO_REUSEPORT spreads connections).
        channels = [channel for server in cluster_servers.servers for channel in await serving_channels(server, 8)]
        stubs = [decision_pb2_grpc.DecisionServiceStub(channel) for channel in channels]
        admitted: Counter[str] = Counter()
        denied: Counter[str] = Counter()
        errors: list[str] = []
        per_channel: Counter[int] = Counter()
        queue = iter(enumerate(calls))

        async def caller() -> None:
            for index, tenant in queue:
                stub = index % len(stubs)
                try:
                    response = await stubs[stub].ConsumeQuota(consume_request(tenant), timeout=60)
                except grpc.RpcError as exc:
                    errors.append(f"{tenant}: {exc.code()} {exc.details()}")
                    continue
                per_channel[stub] += 1
                if response.allowed:
                    admitted[tenant] += 1
                else:
                    assert response.results[0].retry_after.ToTimedelta().total_seconds() > 0
                    denied[tenant] += 1

        await asyncio.gather(*(caller() for _ in range(600)))
        for channel in channels:
            await channel.close()
        return admitted, denied, errors, per_channel

    admitted, denied, errors, per_channel = asyncio.run(hammer())
    assert errors == [], errors[:10]
    assert {tenant: admitted[tenant] for tenant in TENANTS} == dict.fromkeys(TENANTS, LIMIT)
    assert {tenant: denied[tenant] for tenant in TENANTS} == dict.fromkeys(TENANTS, 2 * LIMIT)
    assert len(per_channel) == 3 * 8  # every connection, so every server, answered its share
    # The tenants spread over every primary, and each tenant's keys live whole on the primary of its slot.
    cluster = cluster_servers.cluster
    held = tenant_nodes(cluster, cluster_servers.prefix)
    assert set(TENANTS) <= set(held)
    for tenant in TENANTS:
        assert held[tenant] == {cluster.owner(f"{{{tenant}}}")}, (tenant, held[tenant])
    assert {port for tenant in TENANTS for port in held[tenant]} == set(cluster.primaries())


def test_a_retried_consume_counts_once_on_any_server(cluster_servers: Servers) -> None:
    """The same idempotency_key sent again (to the same server, to another one, or 20 times at once) counts
    once and gets the first answer; another payload under it is refused (ABORTED); keys belong to a tenant."""

    async def run() -> None:
        channels = [channel for server in cluster_servers.servers for channel in await serving_channels(server, 2)]
        stubs = [decision_pb2_grpc.DecisionServiceStub(channel) for channel in channels]
        try:
            for tenant in IDEMPOTENT:
                first = await stubs[0].ConsumeQuota(consume_request(tenant, amount=3, key="order-1"), timeout=10)
                assert first.allowed and first.results[0].remaining == 97
                retries = await asyncio.gather(*(stubs[i % len(stubs)].ConsumeQuota(
                    consume_request(tenant, amount=3, key="order-1"), timeout=10) for i in range(20)))
                assert all(retry == first for retry in retries), retries
                check = await stubs[-1].ConsumeQuota(consume_request(tenant, amount=0), timeout=10)
                assert check.results[0].remaining == 97  # spent once
                with pytest.raises(grpc.RpcError) as refused:
                    await stubs[1].ConsumeQuota(consume_request(tenant, amount=4, key="order-1"), timeout=10)
                assert refused.value.code() == grpc.StatusCode.ABORTED
                # Many distinct keys at once: each counts once.
                answers = await asyncio.gather(*(stubs[i % len(stubs)].ConsumeQuota(
                    consume_request(tenant, key=f"order-{2 + i % 10}"), timeout=10) for i in range(40)))
                assert all(answer.allowed for answer in answers)
                check = await stubs[2].ConsumeQuota(consume_request(tenant, amount=0), timeout=10)
                assert check.results[0].remaining == 87
        finally:
            for channel in channels:
                await channel.close()

    asyncio.run(run())
    cluster = cluster_servers.cluster
    held = tenant_nodes(cluster, cluster_servers.prefix)
    # Each idempotency record sits beside its tenant's counters, on the primary of the tenant's slot.
    assert [held[tenant] for tenant in IDEMPOTENT] == [{cluster.owner(f"{{{tenant}}}")} for tenant in IDEMPOTENT]
    assert len({port for tenant in IDEMPOTENT for port in held[tenant]}) == 3


FAILOVER_LIMIT = 1_000_000  # never reached: a denied "jobs" call is the failure policy's answer
DEADLINE = 5.0  # each call's gRPC deadline in the failover test
STORE_TIMEOUT = 1.0  # the Redis counter store's timeout per round trip


@dataclass
class Call:
    started: float
    ended: float
    tenant: str
    quota: str
    allowed: bool = False
    retry_after: float = 0.0
    error: str = ""


@pytest.mark.parametrize(("fault", "full_coverage"), [("kill", "yes"), ("kill", "no"), ("freeze", "no")])
def test_a_killed_primary_is_answered_by_policy_then_recovers_by_itself(
        start_redis_cluster: Any, tmp_path: Path, fault: str, full_coverage: str) -> None:
    """A 6-node cluster (3 primaries, 1 replica each, cluster-node-timeout 2000 ms); one server; load on 20
    tenants. A primary is SIGKILLed: its tenants' calls are answered by each quota's failure policy ("jobs":
    deny with retry_after; "reads": on_backend_error allow), never with an error status nor past the deadline;
    health "tenantgate.quota_backend" turns NOT_SERVING; once the replica is promoted, they are admitted again
    without restarting tenantgate and health is SERVING. Then SCRIPT FLUSH on every primary and the killed node
    restarted (it rejoins as a replica): the next calls reload the script and count once.

    fault "kill" is SIGKILL (connections refused at once); "freeze" is SIGSTOP, a hung or partitioned host whose
    connections stay open and never answer (each call for its slots waits for the counter store's timeout),
    thawed at the end (it rejoins as a replica).

    With cluster-require-full-coverage yes (Redis's default) every node refuses every slot (CLUSTERDOWN) from
    the moment the primary is marked failed until its replica is promoted: all tenants are answered by policy
    for that moment. With "no", only the failed primary's tenants are: the others never notice."""
    cluster: RedisCluster = start_redis_cluster(replicas=1, node_timeout_ms=2000,
                                                settings=("--cluster-require-full-coverage", full_coverage))
    registry = tmp_path / "registry.db"
    apply(registry, [tenant_doc(tenant, quotas={"jobs": {"limit": FAILOVER_LIMIT, "period": "day"},
                                                "reads": {"limit": FAILOVER_LIMIT, "period": "day",
                                                          "on_backend_error": "allow"}}) for tenant in TENANTS],
          tmp_path / "manifests")
    prefix = "failover:"
    server = Serve(registry, cluster.url, prefix, tmp_path / "serve.log")
    try:
        calls, health, events = asyncio.run(_failover_under_load(cluster, server, fault))
        pid = server.process.pid
        assert server.process.poll() is None, server.output()
        _check_failover(cluster, server, calls, health, events, full_coverage == "yes")
        asyncio.run(_lost_scripts_are_reloaded(cluster, server, events))
        assert server.process.pid == pid and server.process.poll() is None  # never restarted
    finally:
        server.stop()
    assert server.process.returncode == 0, server.output()


async def _failover_under_load(cluster: RedisCluster, server: Serve, fault: str
                               ) -> tuple[list[Call], list[tuple[float, int]], dict[str, Any]]:
    channels = await serving_channels(server, 4)
    stubs = [decision_pb2_grpc.DecisionServiceStub(channel) for channel in channels]
    health = health_pb2_grpc.HealthStub(channels[0])
    calls: list[Call] = []
    health_seen: list[tuple[float, int]] = []
    events: dict[str, Any] = {}
    stop = asyncio.Event()
    victim = await asyncio.to_thread(cluster.owner, f"{{{TENANTS[0]}}}")
    owners = {tenant: await asyncio.to_thread(cluster.owner, f"{{{tenant}}}") for tenant in TENANTS}
    events["victim"] = victim
    events["victim_tenants"] = [tenant for tenant, port in owners.items() if port == victim]
    events["replica"] = await asyncio.to_thread(cluster.replica_of, victim)

    async def caller(number: int) -> None:
        rng = random.Random(number)
        while not stop.is_set():
            tenant = rng.choice(TENANTS)
            quota = "reads" if rng.random() < 0.25 else "jobs"
            call = Call(time.monotonic(), 0.0, tenant, quota)
            try:
                response = await stubs[number % len(stubs)].ConsumeQuota(consume_request(tenant, quota),
                                                                         timeout=DEADLINE)
                call.allowed = response.allowed
                call.retry_after = response.results[0].retry_after.ToTimedelta().total_seconds()
            except grpc.RpcError as exc:
                call.error = f"{exc.code()}: {exc.details()}"
            call.ended = time.monotonic()
            calls.append(call)

    async def watch_health() -> None:
        while not stop.is_set():
            try:
                status = (await health.Check(health_pb2.HealthCheckRequest(service=QUOTA_BACKEND_HEALTH),
                                             timeout=2)).status
            except grpc.RpcError as exc:
                status = -1
                events.setdefault("health_errors", []).append(str(exc.code()))
            health_seen.append((time.monotonic(), status))
            await asyncio.sleep(0.05)

    def recovered_since(moment: float) -> bool:
        """Each of the victim's tenants has had 3 "jobs" calls in a row admitted, started after ``moment``."""
        streak: Counter[str] = Counter()
        for call in calls:
            if call.tenant in events["victim_tenants"] and call.quota == "jobs" and call.started > moment:
                streak[call.tenant] = streak[call.tenant] + 1 if call.allowed and not call.error else 0
        return all(streak[tenant] >= 3 for tenant in events["victim_tenants"])

    tasks = [asyncio.create_task(caller(number)) for number in range(50)]
    tasks.append(asyncio.create_task(watch_health()))
    try:
        await asyncio.sleep(1.5)  # steady load first
        events["killed"] = time.monotonic()
        await asyncio.to_thread(cluster.kill if fault == "kill" else cluster.freeze, victim)
        deadline = events["killed"] + 30
        while True:  # the replica promoted, as the cluster sees it
            primaries = await asyncio.to_thread(cluster.primaries)
            if events["replica"] in primaries and victim not in primaries:
                events["promoted"] = time.monotonic()
                break
            assert time.monotonic() < deadline, f"the replica was not promoted: {primaries}"
            await asyncio.sleep(0.05)
        while not recovered_since(events["killed"]):  # tenantgate follows it by itself
            assert time.monotonic() < deadline, "calls for the killed primary's slots did not recover in 30 s"
            await asyncio.sleep(0.05)
        events["recovered"] = time.monotonic()
        while not (health_seen and health_seen[-1][1] == SERVING):
            assert time.monotonic() < deadline, "health did not return to SERVING in 30 s"
            await asyncio.sleep(0.05)
        events["health_back"] = time.monotonic()
        await asyncio.sleep(1.0)  # steady load after recovery
        events["ended"] = time.monotonic()
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        # How much each tenant's store counts now, from the surviving (promoted) primaries.
        events["remaining"] = {}
        for tenant in TENANTS:
            response = await stubs[0].ConsumeQuota(consume_request(tenant, "jobs", 0), timeout=DEADLINE)
            events["remaining"][tenant] = response.results[0].remaining
        for channel in channels:
            await channel.close()
    return calls, health_seen, events


def _check_failover(cluster: RedisCluster, server: Serve, calls: list[Call], health: list[tuple[float, int]],
                    events: dict[str, Any], full_coverage: bool) -> None:
    killed, recovered = events["killed"], events["recovered"]
    victims = set(events["victim_tenants"])
    slowest = max(call.ended - call.started for call in calls)
    # How long the other primaries' tenants waited while the failed one was out.
    others_slowest = max((call.ended - call.started for call in calls
                          if call.tenant not in victims and killed <= call.started <= recovered), default=0.0)
    denied = [call for call in calls if call.quota == "jobs" and not call.allowed]
    outage_denials = Counter("victim" if call.tenant in victims else "other" for call in denied)
    # What the failover lost or over-counted, per tenant: units admitted against units the store counts now.
    admitted = Counter(call.tenant for call in calls if call.quota == "jobs" and call.allowed)
    counted = {tenant: FAILOVER_LIMIT - remaining for tenant, remaining in events["remaining"].items()}
    lost = {tenant: admitted[tenant] - counted[tenant] for tenant in TENANTS if admitted[tenant] > counted[tenant]}
    extra = {tenant: counted[tenant] - admitted[tenant] for tenant in TENANTS if counted[tenant] > admitted[tenant]}
    last_second = sum(1 for call in calls if call.tenant in victims and call.quota == "jobs" and call.allowed
                      and killed - 1 < call.ended <= killed)
    print(f"\nfailover ({'SIGSTOP' if events['victim'] in cluster.frozen else 'SIGKILL'}, "
          f"cluster-require-full-coverage {'yes' if full_coverage else 'no'}): "
          f"{len(calls)} calls by 50 callers, failed primary {events['victim']} "
          f"({len(victims)} of {len(TENANTS)} tenants); replica promoted after "
          f"{events['promoted'] - killed:.2f} s, calls for its slots admitted again after {recovered - killed:.2f} s, "
          f"health SERVING after {events['health_back'] - killed:.2f} s; slowest answer {slowest:.3f} s, "
          f"slowest for the other primaries' tenants during the outage {others_slowest:.3f} s; "
          f"'jobs' denied by the failure policy: {dict(outage_denials)}; "
          f"admitted but not counted after the failover (lost): {sum(lost.values())} {lost}; "
          f"counted but answered by the policy (spent, not admitted): {sum(extra.values())} {extra}; "
          f"the failed primary's tenants were admitted {sum(admitted[t] for t in victims)} 'jobs' units in all, "
          f"{last_second} in the last second before the fault")

    errors = [call for call in calls if call.error]
    assert errors == [], [call.error for call in errors[:10]]
    assert slowest < DEADLINE, slowest
    assert all(call.allowed for call in calls if call.started < killed and call.ended < killed)
    # "reads" says allow on backend errors: every reads call was admitted, before, during and after.
    assert all(call.allowed for call in calls if call.quota == "reads")
    # "jobs" never reaches its limit: each denial is the failure policy's, and says when to retry.
    assert all(call.retry_after > 0 for call in denied)
    assert any(call.tenant in victims for call in denied), "no call for the failed primary's slots was denied"
    if not full_coverage:
        # The other primaries' tenants never noticed: all admitted, none waiting for the failed node's timeout.
        assert all(call.allowed for call in calls if call.tenant not in victims)
        assert others_slowest < STORE_TIMEOUT, f"the other primaries' tenants waited {others_slowest:.2f} s"
    assert all(call.allowed for call in calls if call.started > recovered)
    outage_ended = max(call.ended for call in denied if call.tenant in victims)
    reads_in_outage = [call for call in calls if call.quota == "reads" and call.tenant in victims
                       and killed < call.started < outage_ended]
    assert reads_in_outage, "no reads call for the failed primary's slots during the outage"
    statuses = [status for moment, status in health if moment > killed]
    assert NOT_SERVING in statuses, "health tenantgate.quota_backend never went NOT_SERVING"
    assert statuses[-1] == SERVING and not events.get("health_errors")
    # Tenants of the primaries that stayed up lose nothing.
    assert not set(lost) - victims, lost
    # The loss is bounded by the writes in flight when the primary failed: at most what its tenants were
    # admitted in the last second before.
    assert sum(lost.values()) <= last_second, (lost, last_second)


async def _lost_scripts_are_reloaded(cluster: RedisCluster, server: Serve, events: dict[str, Any]) -> None:
    """SCRIPT FLUSH on every primary, then the killed node restarted (it rejoins as a replica): each next call
    loads the script again, succeeds, and counts once."""
    channels = await serving_channels(server, 1)
    stub = decision_pb2_grpc.DecisionServiceStub(channels[0])

    async def remaining(tenant: str) -> int:
        return int((await stub.ConsumeQuota(consume_request(tenant, "jobs", 0), timeout=DEADLINE)).results[0].remaining)

    try:
        for _ in range(2):
            one_per_primary = {}
            for tenant in TENANTS:
                one_per_primary.setdefault(await asyncio.to_thread(cluster.owner, f"{{{tenant}}}"), tenant)
            assert len(one_per_primary) == 3
            for port in await asyncio.to_thread(cluster.primaries):
                with cluster.client(port) as node:
                    node.script_flush()
            for tenant in one_per_primary.values():
                before = await remaining(tenant)
                response = await stub.ConsumeQuota(consume_request(tenant, "jobs", 2), timeout=DEADLINE)
                assert response.allowed, response
                assert response.results[0].remaining == before - 2 == await remaining(tenant)
            if cluster.alive(events["victim"]):
                break
            # It comes back knowing its old slots are served elsewhere.
            if events["victim"] in cluster.frozen:
                cluster.thaw(events["victim"])
            else:
                cluster.start_node(events["victim"])
            await asyncio.to_thread(cluster.wait_ok, 30)
            with cluster.client(events["victim"]) as node:
                assert node.info("replication")["role"] == "slave"
    finally:
        for channel in channels:
            await channel.close()


def test_a_cluster_down_at_start_is_answered_by_policy_and_recovered_from(start_redis_cluster: Any,
                                                                         tmp_path: Path) -> None:
    """Every node of the cluster down when tenantgate starts (no slot map to be had): ConsumeQuota is answered
    by each quota's failure policy within its deadline, health "tenantgate.quota_backend" is NOT_SERVING; once
    the nodes are back, health turns SERVING without any traffic and calls are admitted again."""
    cluster: RedisCluster = start_redis_cluster()
    for port in cluster.ports:
        cluster.kill(port)
    registry = tmp_path / "registry.db"
    quotas = {"jobs": {"limit": 100, "period": "day"},
              "reads": {"limit": 100, "period": "day", "on_backend_error": "allow"}}
    apply(registry, [tenant_doc("acme", quotas=quotas)], tmp_path / "manifests")
    server = Serve(registry, cluster.url, "down:", tmp_path / "serve.log")

    async def run() -> None:
        (channel,) = await serving_channels(server, 1)
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)

        async def backend_health() -> int:
            request = health_pb2.HealthCheckRequest(service=QUOTA_BACKEND_HEALTH)
            return int((await health.Check(request, timeout=2)).status)

        try:
            started = time.monotonic()
            denied = await stub.ConsumeQuota(consume_request("acme"), timeout=DEADLINE)
            assert not denied.allowed and denied.results[0].retry_after.ToTimedelta().total_seconds() == 1
            assert (await stub.ConsumeQuota(consume_request("acme", "reads"), timeout=DEADLINE)).allowed
            assert time.monotonic() - started < DEADLINE
            assert await backend_health() == NOT_SERVING
            for port in cluster.ports:  # the same nodes come back (their nodes-PORT.conf), empty
                cluster.start_node(port)
            await asyncio.to_thread(cluster.wait_ok, 30)
            deadline = time.monotonic() + 30
            while await backend_health() != SERVING:  # recovered without any traffic
                assert time.monotonic() < deadline, f"health did not return to SERVING:\n{server.output()}"
                await asyncio.sleep(0.05)
            recovered = await stub.ConsumeQuota(consume_request("acme", amount=2), timeout=DEADLINE)
            assert recovered.allowed and recovered.results[0].remaining == 98
        finally:
            await channel.close()

    try:
        asyncio.run(run())
    finally:
        server.stop()
    assert server.process.returncode == 0, server.output()


def test_a_planned_failover_loses_no_call(start_redis_cluster: Any) -> None:
    """CLUSTER FAILOVER on a replica (maintenance): the old primary answers MOVED, the new one has not run the
    script yet (NOSCRIPT). Every call is still counted and answered, none by the failure policy, and each
    tenant's count is exactly what it was admitted."""
    from tenantgate.counters import open_counter_store
    from tenantgate.engines.quota import QuotaEngine, QuotaRequestItem
    from tests.conftest import snapshot_of

    cluster: RedisCluster = start_redis_cluster(replicas=1, node_timeout_ms=2000,
                                                settings=("--cluster-require-full-coverage", "no"))
    tenants = [f"t{index:02d}" for index in range(12)]
    snapshot = snapshot_of(*(tenant_doc(tenant, quotas={"jobs": {"limit": 1_000_000, "period": "day"}})
                             for tenant in tenants))

    async def run() -> None:
        store = open_counter_store(cluster.url, prefix="planned:")
        engine = QuotaEngine(store)
        admitted = dict.fromkeys(tenants, 0)
        try:
            async def one_round() -> None:
                outcomes = await asyncio.gather(*(engine.consume(snapshot, tenant, [QuotaRequestItem("jobs", 1)])
                                                  for tenant in tenants for _ in range(5)))
                for outcome, tenant in zip(outcomes, [t for t in tenants for _ in range(5)], strict=True):
                    assert outcome.allowed and not outcome.degraded, (tenant, outcome)
                    admitted[tenant] += 1

            for _ in range(5):
                await one_round()
            victim = cluster.owner(f"planned:{{{tenants[0]}}}:usage")
            replica = cluster.replica_of(victim)
            deadline, asked = time.monotonic() + 60, 0.0
            while cluster.owner(f"planned:{{{tenants[0]}}}:usage") != replica:
                assert time.monotonic() < deadline, "the replica was not promoted"
                if time.monotonic() - asked > 6:  # a manual failover gives up after 5 s: ask again
                    with cluster.client(replica) as node:
                        node.execute_command("CLUSTER", "FAILOVER")
                    asked = time.monotonic()
                await one_round()
            for _ in range(10):
                await one_round()
            for tenant in tenants:
                check = await engine.consume(snapshot, tenant, [QuotaRequestItem("jobs", 0)])
                assert 1_000_000 - check.items[0].remaining == admitted[tenant]
        finally:
            await store.close()

    asyncio.run(run())
