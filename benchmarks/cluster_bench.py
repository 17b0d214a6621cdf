"""Quota counters on one Redis and on Redis Cluster (1, 2, 3 primaries), measured in one run.

1. In process: consumes per second through the counter store (``open_counter_store``) with ``--concurrency``
   consumers on ``--tenants`` tenants, on one redis-server started here (same binary and settings as the cluster
   nodes, nothing on disk) and on clusters of 1, 2 and 3 primaries started here; rounds alternate the backends,
   figures are medians, each a ratio to the one Redis of the same round. Beside the rate: round trips per consume
   (``store.round_trips``), the Redis CPU per consume (``INFO cpu`` of every node, before and after) and this
   process's CPU per consume, so that it shows which of them is the bottleneck. A process has one pipeline in flight
   per Redis server, so on one Redis its own work and Redis's alternate (consumes/s is about 1e6 / (client µs +
   Redis µs) per consume), while on a cluster the nodes work at once and the client's CPU is what is left.
2. Over gRPC: h2load ConsumeQuota against ``--processes`` ``tenantgate serve`` processes on one Redis and the same
   number on the 3-primary cluster, rounds alternating, medians. h2load sends one body per run, so ``--generators``
   h2load processes run at once, each with a tenant of its own (tenants chosen so that each primary of the cluster
   owns as many of them as the others) and aimed at one tenantgate process in turn. Each request is answered OK and
   allowed through a real client first, and after every run each tenant's counter in Redis must hold every call its
   h2load counted as answered (h2load counts any HTTP 200, even a gRPC error or an answer by the failure policy),
   and no more than that plus the calls in flight when h2load stopped. Redis reads per consume (the nodes' read
   system calls) stand in for the round trips, which only the process itself counts.
3. A model past 3 primaries, from the CPU per consume measured in 2 (stated as a model, not a measurement).

On a machine with few cores the tenantgate processes, the Redis nodes and the load generator share them: the
rates are then a floor, and the CPU per consume of each component is the figure that carries to other machines.
Needs redis-server and redis-cli (Redis >= 7), and h2load for part 2 (Debian package nghttp2-client; --no-grpc
runs part 1 only). Loopback only; bounded in time (about two minutes with the defaults); every process started
here is stopped here.
Usage: python benchmarks/cluster_bench.py [--seconds 2] [--rounds 5] [--concurrency 100] [--tenants 64]
       [--grpc-seconds 5] [--grpc-rounds 3] [--processes 2] [--generators 6] [--connections 2] [--streams 16]
       [--no-grpc]
Writes benchmarks/results/cluster.json and cluster.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import jwt
import redis
from cryptography.hazmat.primitives.asymmetric import ec
from engine_bench import snapshot_with
from grpc_bench import RESULTS, SERVICE, Scenario, free_port, grpc_frame, process, verify, wait_ready, write_registry

from tenantgate.counters import open_counter_store
from tenantgate.engines.quota import QuotaEngine, QuotaRequestItem
from tenantgate.snapshot import Snapshot, compile_all
from tenantgate.v1 import decision_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.redis_cluster import ClusterUnavailable, RedisCluster, cluster_ports, wait_answers  # noqa: E402

TENANTGATE = str(Path(sys.executable).with_name("tenantgate"))
SLOTS = 16384
CLUSTER_SIZES = (1, 2, 3)
GRPC_PRIMARIES = 3
MODEL_PRIMARIES = (1, 2, 3, 4, 6, 8, 12, 16)


class Backend(Protocol):
    ports: list[int]

    @property
    def url(self) -> str: ...

    def stop(self) -> None: ...


class OneRedis:
    """One redis-server on a free loopback port, started like the cluster nodes (nothing on disk), without cluster
    mode: the baseline the clusters are compared with."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ports: list[int] = []
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self, timeout: float = 30.0) -> OneRedis:
        self.root.mkdir(parents=True, exist_ok=True)
        port = free_port()
        with (self.root / "redis.log").open("a") as log:
            self._process = subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no", "--save", "",
                 "--appendonly", "no", "--dir", str(self.root), "--shutdown-timeout", "0"],
                cwd=self.root, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.ports = [port]
        wait_answers(port, self._process, time.monotonic() + timeout)
        return self

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        self._process = None


class BenchCluster(RedisCluster):
    """The tests' RedisCluster (tests/redis_cluster.py: its nodes, wait_ok and stop), formed here with CLUSTER
    ADDSLOTSRANGE and CLUSTER MEET instead of ``redis-cli --cluster create``, which refuses fewer than 3 primaries.
    The slots are split evenly, in order."""

    def _start_once(self, timeout: float) -> None:
        """Replaces the tests' forming step; their start() retries it on new ports."""
        if self.replicas:
            raise ValueError("the bench forms clusters of primaries only")
        try:
            self._form(time.monotonic() + timeout)
        except (redis.RedisError, OSError) as exc:
            raise ClusterUnavailable(str(exc)) from exc

    def _form(self, deadline: float) -> None:
        self.ports = cluster_ports(self.primary_count)
        for port in self.ports:
            self.start_node(port)
        for port in self.ports:
            wait_answers(port, self.processes[port], deadline)
        count = len(self.ports)
        for index, port in enumerate(self.ports):
            with self.client(port) as node:
                node.execute_command("CLUSTER", "ADDSLOTSRANGE", index * SLOTS // count,
                                     (index + 1) * SLOTS // count - 1)
                node.execute_command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
        with self.client(self.ports[0]) as first:
            for port in self.ports[1:]:
                first.execute_command("CLUSTER", "MEET", "127.0.0.1", port)
        self.wait_ok(max(0.1, deadline - time.monotonic()))


@dataclass
class NodeStats:
    cpu: float  # used_cpu_sys + used_cpu_user, seconds
    scripts: int  # EVALSHA calls
    reads: int  # read system calls (/proc/PID/io syscr): one per round trip of up to 16 KB of requests


def node_stats(ports: list[int]) -> dict[int, NodeStats]:
    stats = {}
    for port in ports:
        with redis.Redis(port=port, socket_timeout=5) as node:
            cpu = node.info("cpu")
            calls = node.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
            pid = int(node.info("server")["process_id"])
        io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
        stats[port] = NodeStats(float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]), int(calls),
                                int(io["syscr"]))
    return stats


def redis_usage(before: dict[int, NodeStats], after: dict[int, NodeStats]) -> tuple[float, list[int], int]:
    """Redis CPU seconds used between two readings (all nodes together), the script calls on each node and the
    read system calls of all nodes together."""
    return (sum(after[port].cpu - before[port].cpu for port in after),
            [after[port].scripts - before[port].scripts for port in after],
            sum(after[port].reads - before[port].reads for port in after))


def tree_cpu(pid: int) -> float:
    """User and system CPU seconds of a process and its descendants so far (from /proc)."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{current}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
    return total


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------------------------------------- in process


async def consume_for(url: str, prefix: str, snapshot: Snapshot, tenants: list[str], concurrency: int,
                      seconds: float, ports: list[int]) -> dict[str, Any]:
    store = open_counter_store(url, prefix=prefix)
    engine = QuotaEngine(store)
    items = [QuotaRequestItem("api", 1)]
    try:
        # Warm: the script loaded, the slot map read, the connections open.
        await asyncio.gather(*(engine.consume(snapshot, tenant, items) for tenant in tenants))
        before, trips, consumes = node_stats(ports), store.round_trips, store.consumes
        refused = 0
        cpu, start = time.process_time(), time.perf_counter()
        stop = start + seconds

        async def consumer(index: int) -> int:
            nonlocal refused
            done = 0
            while time.perf_counter() < stop:
                outcome = await engine.consume(snapshot, tenants[(index + done) % len(tenants)], items)
                refused += not outcome.allowed or outcome.degraded
                done += 1
            return done

        done = sum(await asyncio.gather(*(consumer(index) for index in range(concurrency))))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        redis_cpu, per_node, reads = redis_usage(before, node_stats(ports))
        trips, consumes = store.round_trips - trips, store.consumes - consumes
    finally:
        await store.close()
    return {"consumes_per_s": done / elapsed, "round_trips_per_consume": trips / consumes,
            "redis_reads_per_consume": reads / done,
            "client_cpu_us_per_consume": 1e6 * cpu / done, "redis_cpu_us_per_consume": 1e6 * redis_cpu / done,
            "client_cores_busy": cpu / elapsed, "redis_cores_busy": redis_cpu / elapsed,
            "script_calls_per_node": per_node, "script_calls": sum(per_node), "consumes": done, "refused": refused}


def in_process(backends: dict[str, Backend], args: argparse.Namespace) -> list[dict[str, Any]]:
    snapshot = snapshot_with(args.tenants)
    compile_all(snapshot.tenants.values())  # every one is consumed from
    tenants = sorted(snapshot.tenants)[: args.tenants]
    names = list(backends)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for round_number in range(args.rounds):
        # Alternate the order, so that drift on a shared machine favours none.
        for name in names if round_number % 2 == 0 else names[::-1]:
            run = asyncio.run(consume_for(backends[name].url, f"tgcluster-{os.getpid()}:", snapshot, tenants,
                                          args.concurrency, args.seconds, backends[name].ports))
            runs[name].append(run)
            print(f"  in process, round {round_number + 1}, {name}: {run['consumes_per_s']:,.0f} consumes/s, "
                  f"client {run['client_cpu_us_per_consume']:.0f} us, Redis {run['redis_cpu_us_per_consume']:.0f} us "
                  "per consume", flush=True)
    rows = []
    for name in names:
        ratios = [run["consumes_per_s"] / base["consumes_per_s"]
                  for run, base in zip(runs[name], runs[names[0]], strict=True)]
        row: dict[str, Any] = {"backend": name, "nodes": len(backends[name].ports)}
        for key in ("consumes_per_s", "round_trips_per_consume", "redis_reads_per_consume",
                    "client_cpu_us_per_consume", "redis_cpu_us_per_consume", "client_cores_busy", "redis_cores_busy"):
            row[key] = statistics.median(run[key] for run in runs[name])
        calls = [sum(column) for column in zip(*(run["script_calls_per_node"] for run in runs[name]), strict=True)]
        row.update(ratio_to_one_redis=statistics.median(ratios), ratio_range=[min(ratios), max(ratios)],
                   script_share_per_node=[count / max(1, sum(calls)) for count in calls],
                   refused=sum(run["refused"] for run in runs[name]),
                   redis_calls_match=all(run["script_calls"] == run["consumes"] for run in runs[name]),
                   rounds=runs[name])
        rows.append(row)
    return rows


# -------------------------------------------------------------------------------------------------------- gRPC


@dataclass
class Generator:
    tenant: str
    target: str
    body: Path
    request: pb.ConsumeQuotaRequest


@dataclass
class GrpcSetup:
    name: str
    backend: Backend
    prefix: str
    pids: list[int]
    generators: list[Generator]
    runs: list[dict[str, Any]] = field(default_factory=list)


def choose_tenants(cluster: BenchCluster, prefix: str, count: int, available: int) -> list[str]:
    """``count`` tenants, each primary of ``cluster`` owning as many of them as the others (in turn)."""
    primaries = cluster.primaries()
    by_primary: dict[int, list[str]] = {port: [] for port in primaries}
    for index in range(available):
        tenant = f"t{index:05d}"
        by_primary[cluster.owner(f"{prefix}{{{tenant}}}:usage")].append(tenant)
    chosen = []
    for index in range(count):
        owned = by_primary[primaries[index % len(primaries)]]
        if not owned:
            raise RuntimeError(f"not enough tenants to spread {count} generators over {len(primaries)} primaries; "
                               "raise --tenants")
        chosen.append(owned.pop(0))
    return chosen


def consumed(backend: Backend, prefix: str, tenants: list[str]) -> list[int]:
    """Units of the quota "api" that Redis counted as consumed for each tenant (the script's usage hash)."""
    counted = []
    for tenant in tenants:
        key = f"{prefix}{{{tenant}}}:usage"
        port = backend.owner(key) if isinstance(backend, BenchCluster) else backend.ports[0]
        with redis.Redis(port=port, socket_timeout=5) as node:
            counted.append(int(node.hget(key, "api:consumed") or 0))
    return counted


H2LOAD_DONE = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                         r"(\d+) errored")


def h2load_all(generators: list[Generator], seconds: float, connections: int, streams: int) -> list[dict[str, Any]]:
    """One h2load per generator, all at once for ``seconds`` (no warm-up: every call it sends is counted, so that
    the counters in Redis can be checked against it)."""
    children = [subprocess.Popen(
        ["h2load", f"--duration={max(1, round(seconds))}", f"-c{connections}", f"-m{streams}",
         f"--data={generator.body}", "-H", "content-type: application/grpc", "-H", "te: trailers",
         f"http://{generator.target}{SERVICE}ConsumeQuota"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        for generator in generators]
    results = []
    try:
        for child in children:
            output, errors = child.communicate(timeout=seconds + 60)
            finished = re.search(r"finished in ([\d.]+)(\w+), ([\d.]+) req/s", output)
            done = H2LOAD_DONE.search(output)
            if finished is None or done is None:
                raise RuntimeError(f"h2load failed: {errors.strip() or output[-500:]}")
            results.append({"rps": float(finished.group(3)), "succeeded": int(done.group(4)),
                            "failed": int(done.group(5)) + int(done.group(6))})
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(5)
    return results


def grpc_round(setup: GrpcSetup, args: argparse.Namespace, record: bool = True) -> dict[str, Any]:
    tenants = [generator.tenant for generator in setup.generators]
    units = consumed(setup.backend, setup.prefix, tenants)
    before = node_stats(setup.backend.ports)
    server_cpu, load_cpu, start = sum(map(tree_cpu, setup.pids)), children_cpu(), time.perf_counter()
    results = h2load_all(setup.generators, args.grpc_seconds, args.connections, args.streams)
    elapsed = time.perf_counter() - start
    server_cpu, load_cpu = sum(map(tree_cpu, setup.pids)) - server_cpu, children_cpu() - load_cpu
    redis_cpu, per_node, reads = redis_usage(before, node_stats(setup.backend.ports))
    counted = [after - before for after, before in zip(consumed(setup.backend, setup.prefix, tenants), units,
                                                          strict=True)]
    units = sum(counted)
    # Each generator has a tenant of its own: every call its h2load counted as answered must have been counted by
    # Redis (a call answered by the failure policy, or with a gRPC error, is not), and at most the calls still in
    # flight when h2load stopped may have been counted by Redis and not by h2load.
    in_flight = args.connections * args.streams
    agree = all(result["succeeded"] <= units <= result["succeeded"] + in_flight
                for result, units in zip(results, counted, strict=True))
    run = {"consumes_per_s": sum(result["rps"] for result in results),
           "succeeded": sum(result["succeeded"] for result in results),
           "failed": sum(result["failed"] for result in results), "consumed_in_redis": units,
           "counts_agree": agree,
           "tenantgate_cpu_us_per_consume": 1e6 * server_cpu / max(1, units),
           "redis_cpu_us_per_consume": 1e6 * redis_cpu / max(1, units),
           "h2load_cpu_us_per_consume": 1e6 * load_cpu / max(1, units),
           "redis_reads_per_consume": reads / max(1, units),
           "tenantgate_cores_busy": server_cpu / elapsed, "redis_cores_busy": redis_cpu / elapsed,
           "h2load_cores_busy": load_cpu / elapsed, "script_calls_per_node": per_node}
    if record:
        setup.runs.append(run)
    return run


def over_grpc(one: OneRedis, cluster: BenchCluster, args: argparse.Namespace, scratch: Path,
              running: contextlib.ExitStack) -> list[dict[str, Any]]:
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key()))
    jwk.update({"kid": "bench", "alg": "ES256"})
    key_file = write_registry(scratch, args.tenants, jwk)
    prefix = f"tgcluster-grpc-{os.getpid()}:"
    tenants = choose_tenants(cluster, prefix, args.generators, args.tenants)
    setups = []
    for name, backend in (("one Redis", one), (f"Redis Cluster, {GRPC_PRIMARIES} primaries", cluster)):
        ports = [free_port() for _ in range(args.processes)]
        pids = []
        for port in ports:
            child = running.enter_context(process(
                [TENANTGATE, "serve", "--registry", f"sqlite://{scratch}/registry.db", "--admin-listen", "",
                 "--snapshot-file", "", "--master-key-file", str(key_file), "--log-level", "WARNING",
                 "--drain-delay", "0", "--listen", f"127.0.0.1:{port}", "--quota-backend", backend.url,
                 "--quota-prefix", prefix]))
            pids.append(child.pid)
        generators = []
        for index, tenant in enumerate(tenants):
            request = pb.ConsumeQuotaRequest(tenant_id=tenant, items=[pb.QuotaItem(quota="api", amount=1)])
            body = scratch / f"consume-{tenant}.bin"
            body.write_bytes(grpc_frame(request.SerializeToString()))
            generators.append(Generator(tenant, f"127.0.0.1:{ports[index % len(ports)]}", body, request))
        setups.append(GrpcSetup(name, backend, prefix, pids, generators))
    for setup in setups:
        for generator in setup.generators:
            wait_ready(generator.target)
            answer = pb.ConsumeQuotaResponse.FromString(
                verify(generator.target, Scenario(f"ConsumeQuota {generator.tenant}", "ConsumeQuota",
                                                  generator.request)))
            if not answer.allowed:
                raise RuntimeError(f"{setup.name}: ConsumeQuota for {generator.tenant} was not allowed: {answer}")
        grpc_round(setup, argparse.Namespace(**{**vars(args), "grpc_seconds": 1}), record=False)  # warm-up
    for round_number in range(args.grpc_rounds):
        for setup in setups if round_number % 2 == 0 else setups[::-1]:
            run = grpc_round(setup, args)
            print(f"  gRPC, round {round_number + 1}, {setup.name}: {run['consumes_per_s']:,.0f} consumes/s, "
                  f"tenantgate {run['tenantgate_cpu_us_per_consume']:.0f} us, Redis "
                  f"{run['redis_cpu_us_per_consume']:.0f} us, h2load {run['h2load_cpu_us_per_consume']:.0f} us "
                  "per consume", flush=True)
    rows = []
    for setup in setups:
        ratios = [run["consumes_per_s"] / base["consumes_per_s"]
                  for run, base in zip(setup.runs, setups[0].runs, strict=True)]
        row: dict[str, Any] = {"backend": setup.name, "nodes": len(setup.backend.ports),
                               "tenantgate_processes": args.processes}
        for key in ("consumes_per_s", "redis_reads_per_consume", "tenantgate_cpu_us_per_consume",
                    "redis_cpu_us_per_consume", "h2load_cpu_us_per_consume", "tenantgate_cores_busy",
                    "redis_cores_busy", "h2load_cores_busy"):
            row[key] = statistics.median(run[key] for run in setup.runs)
        calls = [sum(column) for column in zip(*(run["script_calls_per_node"] for run in setup.runs), strict=True)]
        row.update(ratio_to_one_redis=statistics.median(ratios), ratio_range=[min(ratios), max(ratios)],
                   script_share_per_node=[count / max(1, sum(calls)) for count in calls],
                   failed=sum(run["failed"] for run in setup.runs),
                   counts_agree=all(run["counts_agree"] for run in setup.runs), rounds=setup.runs)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------------- model


def model(grpc_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Capacity if every component had cores of its own: a primary runs scripts on one core (Redis executes
    commands on one thread), a tenantgate process on one core (one Python event loop). Each consume runs on exactly
    one primary, so a primary's share of the work does not grow with their number; what could grow is the round
    trips per consume, as each process's batches split over more nodes. Over gRPC the batches are already small
    (Redis reads per consume, measured), so the CPU per consume measured on the 3-primary cluster is taken as it is
    for every size."""
    one, cluster = grpc_rows[0], grpc_rows[-1]
    tenantgate_us, redis_us = cluster["tenantgate_cpu_us_per_consume"], cluster["redis_cpu_us_per_consume"]
    per_primary = tenantgate_us / redis_us
    rows = [{"primaries": primaries, "tenantgate_processes": primaries * per_primary,
             "consumes_per_s": primaries * 1e6 / redis_us, "cores": primaries * (1 + per_primary)}
            for primaries in MODEL_PRIMARIES]
    single_tenantgate, single_redis = one["tenantgate_cpu_us_per_consume"], one["redis_cpu_us_per_consume"]
    return {"note": "a model, not a measurement: each tenantgate process and each Redis primary on a core of its own, "
                    "load spread evenly over tenants and so over slots, the network not a limit, CPU per consume as "
                    f"measured over gRPC on {GRPC_PRIMARIES} primaries at every size",
            "tenantgate_cpu_us_per_consume": tenantgate_us, "redis_cpu_us_per_consume": redis_us,
            "tenantgate_processes_per_primary": per_primary,
            "one_tenantgate_process_consumes_per_s": 1e6 / tenantgate_us,
            "one_redis": {"consumes_per_s": 1e6 / single_redis,
                          "tenantgate_processes": single_tenantgate / single_redis,
                          "tenantgate_cpu_us_per_consume": single_tenantgate, "redis_cpu_us_per_consume": single_redis},
            "rows": rows}


# ------------------------------------------------------------------------------------------------------ report


def markdown(report: dict[str, Any]) -> str:
    before, after = report["load_average_before_after"]
    lines = [f"Cores: {report['cores']}. {report['note']} Load average (1 min) {before:.2f} before the run, "
             f"{after:.2f} after; Redis {report['redis']}, Python {report['python']}.", "",
             f"In process: {report['concurrency']} concurrent consumers on {report['tenants']} tenants through the "
             f"counter store; {report['rounds']} rounds of {report['seconds']:g} s, backends alternating; medians "
             "(ratio range over rounds). Redis reads: read system calls of the Redis nodes, about one per round trip "
             "(a round trip of more than 16 KB of requests takes more).", "",
             "| backend | consumes/s | ratio to one Redis | round trips/consume | Redis reads/consume | "
             "client CPU µs/consume | Redis CPU µs/consume | cores busy: client / Redis | scripts per node |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['backend']} | {r['consumes_per_s']:,.0f} | {r['ratio_to_one_redis']:.2f} "
              f"({r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f}) | {r['round_trips_per_consume']:.3f} | "
              f"{r['redis_reads_per_consume']:.3f} | {r['client_cpu_us_per_consume']:.0f} | "
              f"{r['redis_cpu_us_per_consume']:.1f} | {r['client_cores_busy']:.2f} / {r['redis_cores_busy']:.2f} | "
              f"{' / '.join(f'{share:.0%}' for share in r['script_share_per_node'])} |" for r in report["in_process"]]
    one, *clusters = report["in_process"]
    lines += ["", f"Reading: in process the client spends {one['client_cpu_us_per_consume']:.0f} µs per consume on one "
              f"Redis and {statistics.fmean(r['client_cpu_us_per_consume'] for r in clusters):.0f} µs on the clusters "
              "(mean over sizes: each node's calls go on a connection of its own, as on one Redis), "
              f"Redis {one['redis_cpu_us_per_consume']:.0f} µs; with one pipeline in flight per Redis server, a "
              "process and one Redis alternate, while the primaries of a cluster work at once: more primaries "
              "overlap Redis's part, until the process is bound by its own CPU."]
    if report.get("grpc"):
        grpc_setup = report["grpc_setup"]
        lines += ["", f"Over gRPC: {grpc_setup['processes']} `tenantgate serve` processes per backend; "
                  f"{grpc_setup['generators']} h2load processes at once, one tenant each (each primary of the cluster "
                  f"owns as many), {grpc_setup['connections']} connections x {grpc_setup['streams']} streams each; "
                  f"{grpc_setup['rounds']} rounds of {grpc_setup['seconds']:g} s, backends alternating; medians. "
                  "Every call h2load counted as answered was counted in Redis too.", "",
                  "| backend | consumes/s | ratio to one Redis | Redis reads/consume | tenantgate CPU µs/consume | "
                  "Redis CPU µs/consume | h2load CPU µs/consume | cores busy: tenantgate / Redis / h2load | "
                  "scripts per node |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['backend']} | {r['consumes_per_s']:,.0f} | {r['ratio_to_one_redis']:.2f} "
                  f"({r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f}) | {r['redis_reads_per_consume']:.2f} | "
                  f"{r['tenantgate_cpu_us_per_consume']:.0f} | {r['redis_cpu_us_per_consume']:.1f} | "
                  f"{r['h2load_cpu_us_per_consume']:.0f} | {r['tenantgate_cores_busy']:.2f} / "
                  f"{r['redis_cores_busy']:.2f} / {r['h2load_cores_busy']:.2f} | "
                  f"{' / '.join(f'{share:.0%}' for share in r['script_share_per_node'])} |" for r in report["grpc"]]
        single, cluster = report["grpc"][0], report["grpc"][-1]
        lines += ["", f"Reading: a tenantgate process spends {single['tenantgate_cpu_us_per_consume']:.0f} µs per "
                  f"consume on one Redis and {cluster['tenantgate_cpu_us_per_consume']:.0f} µs on the cluster "
                  f"({cluster['tenantgate_cpu_us_per_consume'] / single['tenantgate_cpu_us_per_consume'] - 1:+.0%}), "
                  f"Redis {single['redis_cpu_us_per_consume']:.0f} and {cluster['redis_cpu_us_per_consume']:.0f} µs: "
                  f"the tenantgate processes are the bottleneck, about "
                  f"{cluster['tenantgate_cpu_us_per_consume'] / cluster['redis_cpu_us_per_consume']:.0f} times the "
                  "Redis CPU per consume, and on this machine they take the cores a cluster's extra nodes would need."]
        m = report["model"]
        lines += ["", f"Model ({m['note']}): one tenantgate process serves "
                  f"{m['one_tenantgate_process_consumes_per_s']:,.0f} consumes/s on a core of its own "
                  f"({m['tenantgate_cpu_us_per_consume']:.0f} µs), one primary "
                  f"{1e6 / m['redis_cpu_us_per_consume']:,.0f} ({m['redis_cpu_us_per_consume']:.1f} µs): one primary "
                  f"feeds {m['tenantgate_processes_per_primary']:.1f} tenantgate processes. One Redis (not a cluster): "
                  f"{m['one_redis']['consumes_per_s']:,.0f} consumes/s, fed by "
                  f"{m['one_redis']['tenantgate_processes']:.1f} tenantgate processes.", "",
                  "| primaries | tenantgate processes | cores (tenantgate + Redis) | consumes/s |", "|---|---|---|---|"]
        lines += [f"| {r['primaries']} | {r['tenantgate_processes']:.0f} | {r['cores']:.0f} | "
                  f"{r['consumes_per_s']:,.0f} |" for r in m["rows"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="in process: seconds per run")
    parser.add_argument("--rounds", type=int, default=5, help="in process: runs per backend, alternating")
    parser.add_argument("--concurrency", type=int, default=100, help="in process: concurrent consumers")
    parser.add_argument("--tenants", type=int, default=64)
    parser.add_argument("--grpc-seconds", type=float, default=5.0, help="gRPC: seconds per h2load run")
    parser.add_argument("--grpc-rounds", type=int, default=3, help="gRPC: runs per backend, alternating")
    parser.add_argument("--processes", type=int, default=2, help="gRPC: tenantgate processes per backend")
    parser.add_argument("--generators", type=int, default=6, help="gRPC: h2load processes at once, one tenant each")
    parser.add_argument("--connections", type=int, default=2, help="gRPC: connections per h2load")
    parser.add_argument("--streams", type=int, default=16, help="gRPC: concurrent streams per connection")
    parser.add_argument("--no-grpc", action="store_true", help="part 1 only (no h2load needed)")
    args = parser.parse_args()
    for program in ("redis-server", "redis-cli", *(() if args.no_grpc else ("h2load",))):
        if shutil.which(program) is None:
            print(f"{program} is missing (redis-server, redis-cli: apt-get install -y redis-server; h2load: "
                  "apt-get install -y nghttp2-client, or --no-grpc)", file=sys.stderr)
            return 2
    cores = os.cpu_count() or 1
    note = (f"tenantgate (or this process, in process), the Redis nodes and h2load share the same {cores} cores: "
            "rates are what this machine gives with all of them competing; CPU per consume of each component is "
            "the figure that carries to a machine where each has cores of its own.")
    print(f"cores: {cores}; {note}", flush=True)
    started = time.monotonic()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch_name, contextlib.ExitStack() as running:
        scratch = Path(scratch_name)
        one = OneRedis(scratch / "one-redis")
        running.callback(one.stop)
        one.start()
        backends: dict[str, Backend] = {"one Redis": one}
        clusters = {}
        for primaries in CLUSTER_SIZES:
            cluster = BenchCluster(scratch / f"cluster-{primaries}", primaries)
            running.callback(cluster.stop)
            clusters[primaries] = cluster.start()
            backends[f"Redis Cluster, {primaries} primar{'y' if primaries == 1 else 'ies'}"] = cluster
        local = in_process(backends, args)
        grpc_rows: list[dict[str, Any]] = []
        if not args.no_grpc:
            for primaries, cluster in clusters.items():  # only the nodes part 2 uses keep running
                if primaries != GRPC_PRIMARIES:
                    cluster.stop()
            grpc_rows = over_grpc(one, clusters[GRPC_PRIMARIES], args, scratch, running)
    report: dict[str, Any] = {
        "cores": cores, "python": platform.python_version(), "redis": redis_version(), "note": note,
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "seconds_taken": time.monotonic() - started, "concurrency": args.concurrency, "tenants": args.tenants,
        "rounds": args.rounds, "seconds": args.seconds, "in_process": local}
    if grpc_rows:
        report.update(grpc=grpc_rows, model=model(grpc_rows),
                      grpc_setup={"processes": args.processes, "generators": args.generators,
                                  "connections": args.connections, "streams": args.streams,
                                  "rounds": args.grpc_rounds, "seconds": args.grpc_seconds})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cluster.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (RESULTS / "cluster.md").write_text(text)
    print(text)
    problems = [f"{row['backend']}: {row['refused']} consumes refused or degraded" for row in local if row["refused"]]
    problems += [f"{row['backend']}: Redis ran a different number of scripts than consumes were sent"
                 for row in local if not row["redis_calls_match"]]
    problems += [f"{row['backend']} (gRPC): {row['failed']} calls failed" for row in grpc_rows if row["failed"]]
    problems += [f"{row['backend']} (gRPC): h2load's answered calls and Redis's counters disagree"
                 for row in grpc_rows if not row["counts_agree"]]
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if problems else 0


def redis_version() -> str:
    found = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    match = re.search(r"v=(\S+)", found)
    return match.group(1) if match else found.strip()


if __name__ == "__main__":
    sys.exit(main())
