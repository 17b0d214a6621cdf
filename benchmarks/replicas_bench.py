"""Many replicas on one PostgreSQL registry: commit -> answered by every replica, and the registry's load per follower.

For N = 1, 4, 8 `tenantgate serve` processes (each on its own loopback port) following one registry, in a database
this run creates and drops:

- latency: a writer commits a change to one tenant (a deny on a resource nobody was denied before) and, as soon as
  the commit returns its revision, asks every replica at once CheckAccess(min_revision=that revision) for that
  resource. A replica answers once its snapshot holds the change, and the answer must be the new deny. Recorded per
  replica and for the last replica to answer ("all replicas answered"), against the same fan-out when nothing has
  to propagate (the floor) and against the sync interval (the poll period; NOTIFY should wake followers well before).
- load: registry queries (scans of the registry's tables, pg_stat_user_tables: pg_stat_statements is rarely
  loaded), the rows they read, and transactions (pg_stat_database) over an idle window and over the window the
  changes flow, less the writer's own (measured first, with no follower running): per follower per second idle,
  and per change beyond that; connections per follower (pg_stat_activity); the followers' CPU. From these and
  the server's max_connections, how many followers one PostgreSQL carries, with the throughput of the follower's
  poll transaction on this server measured in the same run (pgbench where it is installed).

One more configuration repeats the largest N with a 10x longer --sync-interval: with NOTIFY the latency should not
move while the idle load drops tenfold. Needs PostgreSQL (TENANTGATE_BENCH_POSTGRES_DSN, default
postgresql://postgres@127.0.0.1:5432/postgres); skipped with a message when it is not reachable.
Loopback only; bounded in time (about two minutes); every process started here is stopped here.
Usage: python benchmarks/replicas_bench.py [--replicas 1,4,8] [--changes 30] [--tenants 50] [--idle-seconds 10]
       [--slow-interval 2.0] [--dsn URL]
Writes benchmarks/results/replicas.json and replicas.md.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import psycopg
from grpc_bench import RESULTS, cpu_seconds, free_port
from registry_scale import tenant

from tenantgate.config import ServeConfig
from tenantgate.keywrap import MasterKey, generate_master_key_file, tenant_key_factory
from tenantgate.registry.backends import open_store
from tenantgate.registry.manifest import manifests_from_documents
from tenantgate.registry.records import RegistryStore
from tenantgate.v1 import decision_pb2 as pb
from tenantgate.v1 import decision_pb2_grpc

TENANTGATE = str(Path(sys.executable).with_name("tenantgate"))
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
# application_name of each party's connections, so that pg_stat_activity tells them apart.
FOLLOWER_APP = "tenantgate-replicas-bench-follower"
WRITER_APP = "tenantgate-replicas-bench-writer"
PROBE_APP = "tenantgate-replicas-bench-probe"
MONITOR_APP = "tenantgate-replicas-bench-monitor"
CHECK_TIMEOUT = 5.0
FLOOR_SAMPLES = 20
# Connections a follower may hold at most, from the code: its pool (psycopg_pool, max_size 4 in
# registry/postgres.py) and its LISTEN connection.
POOL_MAX = 4
HEADROOM_CONNECTIONS = 10  # kept for writers, admin tools and the CLI when estimating followers by connections
STATS_SETTLE = 11.0  # seconds
QUERY_BUDGET_SHARE = 0.5  # share of the measured poll-transaction throughput followers may take, in the estimate


def database_url(base: str, name: str, app: str) -> str:
    parts = urlsplit(base)
    query = "&".join(q for q in (parts.query, f"application_name={app}") if q)
    return urlunsplit(parts._replace(path=f"/{name}", query=query))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary_ms(seconds: list[float]) -> dict[str, float]:
    return {"median_ms": 1000 * statistics.median(seconds), "p95_ms": 1000 * percentile(seconds, 0.95),
            "max_ms": 1000 * max(seconds)}


class Monitor:
    """Reads the bench database's statistics: database-wide ones from another database, the registry tables' from a
    connection of its own in the bench database (that reads only catalogs, which those figures leave out)."""

    def __init__(self, base: str, database: str, bench_url: str) -> None:
        self._conn = psycopg.connect(base, autocommit=True, connect_timeout=5, application_name=MONITOR_APP)
        self._tables = psycopg.connect(bench_url, autocommit=True, connect_timeout=5)
        self._database = database

    def counters(self) -> dict[str, int]:
        """Cumulative counts in the bench database, as its backends have flushed them (a busy backend at most once a
        second, an idle one within ten seconds, one that exits at once):
        - queries: scans of the registry's tables (seq_scan + idx_scan): one per table a statement reads;
        - rows: rows those scans read (seq_tup_read + idx_tup_fetch);
        - transactions: committed and rolled back in the database, autovacuum's included."""
        row = self._tables.execute("SELECT coalesce(sum(seq_scan + coalesce(idx_scan, 0)), 0), "
                                   "coalesce(sum(seq_tup_read + coalesce(idx_tup_fetch, 0)), 0) "
                                   "FROM pg_stat_user_tables").fetchone()
        database = self._conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                                      (self._database,)).fetchone()
        assert row is not None and database is not None
        return {"queries": int(row[0]), "rows": int(row[1]), "transactions": int(database[0])}

    def connections(self, app: str) -> tuple[int, int]:
        """(connections of ``app`` to the bench database, how many of them last ran LISTEN)."""
        row = self._conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE query ILIKE 'LISTEN%%') FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = %s", (self._database, app)).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def wait_gone(self, app: str, timeout: float = 10.0) -> None:
        """Until no connection of ``app`` is left (their backends have exited and flushed their statistics)."""
        deadline = time.monotonic() + timeout
        while self.connections(app)[0] and time.monotonic() < deadline:
            time.sleep(0.05)

    def setting(self, name: str) -> str:
        row = self._conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
        assert row is not None
        return str(row[0])

    def close(self) -> None:
        self._tables.close()
        self._conn.close()


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before[key] for key in after}


@dataclass
class Writer:
    """Commits changes to the registry, each one a deny on a resource of its own, on one tenant after another."""

    url: str
    master_key: MasterKey
    tenants: int
    count: int = 0

    @contextmanager
    def session(self) -> Iterator[RegistryStore]:
        store = open_store(self.url)
        try:
            yield store
        finally:
            store.close()

    def change(self, store: RegistryStore) -> tuple[str, str, int]:
        """Commits one change; returns (tenant id, the resource now denied, the revision committed)."""
        index = self.count % self.tenants
        resource = f"docs/change-{self.count}"
        document = tenant(index)
        document["spec"]["access"]["deny"] = ["delete:audit/*", f"read:{resource}"]
        tenant_id = document["metadata"]["id"]
        result = store.apply(manifests_from_documents([document]), key_factory=tenant_key_factory(self.master_key))
        self.count += 1
        return tenant_id, resource, result.revision


@contextmanager
def followers(count: int, url: str, key_file: Path, interval: float,
              logs: Path) -> Iterator[list[tuple[str, int]]]:
    """``count`` servers following the registry at ``url``; yields their (target, pid) once each answers from a
    snapshot, stops them all at the end."""
    children: list[subprocess.Popen[bytes]] = []
    targets = []
    try:
        for index in range(count):
            port = free_port()
            log = (logs / f"follower-{count}-{interval:g}-{index}.log").open("wb")
            command = [TENANTGATE, "serve", "--registry", url, "--listen", f"127.0.0.1:{port}", "--admin-listen", "",
                       "--snapshot-file", "", "--master-key-file", str(key_file), "--log-level", "WARNING",
                       "--drain-delay", "0", "--sync-interval", f"{interval:g}"]
            children.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
            log.close()
            targets.append(f"127.0.0.1:{port}")
        for index, target in enumerate(targets):
            try:
                wait_serving(target, children[index])
            except RuntimeError as exc:
                tail = (logs / f"follower-{count}-{interval:g}-{index}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{exc}\n{tail}") from None
        yield [(target, child.pid) for target, child in zip(targets, children, strict=True)]
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(10)


def wait_serving(target: str, child: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Until the server at ``target`` answers a CheckAccess from a loaded snapshot (bounded)."""
    deadline = time.monotonic() + timeout
    request = pb.CheckAccessRequest(tenant_id="t000000", subject="user:owner0", action="read", resource="docs/1")
    with grpc.insecure_channel(target) as channel:
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        while True:
            if child.poll() is not None:
                raise RuntimeError(f"the follower on {target} exited with status {child.returncode}")
            try:
                if stub.CheckAccess(request, timeout=2).allowed:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the follower on {target} did not answer within {timeout:g} s")
            time.sleep(0.1)


class FanOut:
    """Sends one CheckAccess to every replica at once and times each answer."""

    def __init__(self, targets: list[str]) -> None:
        self._channels = [grpc.insecure_channel(target) for target in targets]
        self._stubs = [decision_pb2_grpc.DecisionServiceStub(channel) for channel in self._channels]

    def ask(self, request: pb.CheckAccessRequest) -> tuple[float, list[tuple[float, pb.CheckAccessResponse]]]:
        """(when the calls went out, [(when each replica answered, its answer)]), in perf_counter seconds."""
        answered: list[float] = [0.0] * len(self._stubs)

        def done(index: int, _: Any) -> None:
            answered[index] = time.perf_counter()

        sent = time.perf_counter()
        futures = []
        for index, stub in enumerate(self._stubs):
            future = stub.CheckAccess.future(request, timeout=CHECK_TIMEOUT)
            future.add_done_callback(functools.partial(done, index))
            futures.append(future)
        responses = [future.result() for future in futures]  # raises the first error: the run fails
        # The callbacks run in grpc's threads, possibly just after result() has returned.
        deadline = time.monotonic() + 1.0
        while not all(answered) and time.monotonic() < deadline:
            time.sleep(0.0001)
        return sent, list(zip(answered, responses, strict=True))

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


def measure(count: int, interval: float, args: argparse.Namespace, follower_url: str, writer: Writer,
            writer_cost: dict[str, int], monitor: Monitor, key_file: Path, logs: Path) -> dict[str, Any]:
    with followers(count, follower_url, key_file, interval, logs) as running:
        ready = time.monotonic()
        targets, pids = [target for target, _ in running], [pid for _, pid in running]
        fan_out = FanOut(targets)
        try:
            # The floor: the same fan-out when every replica already has the revision asked for.
            floor = []
            for sample in range(FLOOR_SAMPLES):
                request = pb.CheckAccessRequest(tenant_id="t000000", subject="user:owner0", action="read",
                                                resource=f"docs/floor-{sample}", min_revision=1)
                sent, answers = fan_out.ask(request)
                floor.append(max(at for at, _ in answers) - sent)

            # A backend that went idle flushes its statistics within PGSTAT_IDLE_INTERVAL (10 s): let what the
            # followers read at start be counted before the windows open.
            time.sleep(max(0.0, ready + STATS_SETTLE - time.monotonic()))

            # Idle: nothing changes; the followers only poll (and listen).
            idle_connections: list[tuple[int, int]] = []
            before, started, cpu_before = monitor.counters(), time.monotonic(), cpu(pids)
            while time.monotonic() - started < args.idle_seconds:
                idle_connections.append(monitor.connections(FOLLOWER_APP))
                time.sleep(0.5)
            idle = delta(monitor.counters(), before)
            idle_seconds = time.monotonic() - started
            idle_cpu = cpu(pids) - cpu_before

            # Changes flow: commit, then ask every replica for the change at the revision committed.
            per_replica: list[list[float]] = [[] for _ in targets]
            all_answered, first_answered, apply_seconds = [], [], []
            flow_connections: list[tuple[int, int]] = []
            wrong = 0
            before, started, cpu_before = monitor.counters(), time.monotonic(), cpu(pids)
            with writer.session() as store:
                for _ in range(args.changes):
                    time.sleep(random.uniform(0.05, 0.25))  # pacing, at a random phase of the followers' poll
                    start = time.perf_counter()
                    tenant_id, resource, revision = writer.change(store)
                    committed = time.perf_counter()
                    subject = f"user:owner{int(tenant_id[1:])}"  # an admin of the tenant: allowed * but the deny
                    _, answers = fan_out.ask(pb.CheckAccessRequest(
                        tenant_id=tenant_id, subject=subject, action="read", resource=resource,
                        min_revision=revision))
                    wrong += sum(1 for _, answer in answers if answer.allowed or answer.revision < revision
                                 or answer.reason != pb.DECISION_REASON_EXPLICIT_DENY)
                    latencies = [at - committed for at, _ in answers]
                    for index, latency in enumerate(latencies):
                        per_replica[index].append(latency)
                    all_answered.append(max(latencies))
                    first_answered.append(min(latencies))
                    apply_seconds.append(committed - start)
                    flow_connections.append(monitor.connections(FOLLOWER_APP))
            flow_seconds = time.monotonic() - started
            monitor.wait_gone(WRITER_APP)  # the writer's backend has exited, so its statistics are all counted
            # A follower flushes its statistics at its first transaction a second after its last flush: past one
            # more poll, what it read for the last change is counted. The window's idle share is taken off below.
            time.sleep(max(1.5, 1.25 * interval))
            window = time.monotonic() - started
            flow_cpu = cpu(pids) - cpu_before
            flowing = delta(monitor.counters(), before)
        finally:
            fan_out.close()

    # What one change costs each follower: the window's counts less the writer's own and less what the followers
    # would have sent idle over the window. Rates while changes flow follow from it.
    per_change = {key: (value - writer_cost[key] - idle[key] / idle_seconds * window) / args.changes / count
                  for key, value in flowing.items()}
    change_rate = args.changes / flow_seconds
    idle_per_s = {key: value / idle_seconds / count for key, value in idle.items()}

    connections = idle_connections + flow_connections
    idle_rate = idle_cpu / idle_seconds
    return {
        "replicas": count, "sync_interval_s": interval, "changes": args.changes, "wrong_answers": wrong,
        "commit_to_all_answered": summary_ms(all_answered),
        "commit_to_first_answered": summary_ms(first_answered),
        "all_answered_median_over_sync_interval": statistics.median(all_answered) / interval,
        "all_answered_p95_over_sync_interval": percentile(all_answered, 0.95) / interval,
        "fan_out_floor": summary_ms(floor),
        "apply": summary_ms(apply_seconds),
        "per_replica": [summary_ms(latencies) for latencies in per_replica],
        "load_per_follower": {
            "idle": {"seconds": idle_seconds, **{f"{key}_per_s": value for key, value in idle_per_s.items()}},
            "per_change": per_change,
            "changes_flowing": {"seconds": flow_seconds, "changes_per_s": change_rate,
                                **{f"{key}_per_s": idle_per_s[key] + per_change[key] * change_rate
                                   for key in per_change}},
        },
        # CPU of all the followers together: idle, as a share of one core per follower; with changes flowing, per
        # change and follower beyond the idle rate (the sync, the compile and the CheckAccess answered).
        "follower_cpu": {"idle_share_of_a_core": idle_cpu / idle_seconds / count,
                         "ms_per_change_per_follower": 1000 * max(0.0, flow_cpu - idle_rate * window)
                         / args.changes / count},
        "load_average_1m_after": os.getloadavg()[0],
        "connections": {"max_total": max(total for total, _ in connections),
                        "max_per_follower": max(total for total, _ in connections) / count,
                        "listening_max": max(listening for _, listening in connections)},
    }


def cpu(pids: list[int]) -> float:
    """User and system CPU seconds the processes have used so far (from /proc)."""
    return sum(cpu_seconds(pid) for pid in pids)


def writer_cost(writer: Writer, changes: int, monitor: Monitor) -> dict[str, int]:
    """What one writer session of ``changes`` changes adds to the bench database's counters, with no follower."""
    monitor.wait_gone(WRITER_APP)
    before = monitor.counters()
    with writer.session() as store:
        for _ in range(changes):
            writer.change(store)
    monitor.wait_gone(WRITER_APP)
    # The writer's backend has flushed its statistics on exit; wait for nothing else: no one else is connected.
    return delta(monitor.counters(), before)


def poll_capacity(url: str, seconds: float = 3.0) -> tuple[float, str]:
    """(follower poll transactions per second this server answers on this machine, how that was measured): the
    transaction an idle follower sends every interval (registry/postgres.py and SqlRegistry.current_revision), from
    pgbench where it is installed (prepared statements, two connections per core), else from Python threads through
    the store itself (the GIL makes that a lower bound)."""
    pgbench = shutil.which("pgbench")
    cores = os.cpu_count() or 1
    if pgbench:
        with tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
            script.write("BEGIN;\nSET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY;\n"
                         "SELECT value FROM meta WHERE key = 'revision';\nCOMMIT;\n")
            script.flush()
            result = subprocess.run([pgbench, "-n", "-f", script.name, "-M", "prepared", f"-c{2 * cores}",
                                     f"-j{cores}", f"-T{max(1, round(seconds))}", url], capture_output=True,
                                    text=True, timeout=seconds + 60)
        found = re.search(r"tps = ([\d.]+)", result.stdout)
        if found is None:
            raise RuntimeError(f"pgbench failed: {result.stderr.strip() or result.stdout[-500:]}")
        return float(found.group(1)), f"pgbench, {2 * cores} connections, prepared statements, sharing the cores"
    threads = 4
    store = open_store(url, create=False)
    done = [0] * threads
    store.current_revision()
    deadline = time.monotonic() + seconds

    def loop(index: int) -> None:
        while time.monotonic() < deadline:
            store.current_revision()
            done[index] += 1

    started = time.monotonic()
    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.monotonic() - started
    store.close()
    return sum(done) / elapsed, f"Python, {threads} threads through the store (no pgbench): a lower bound"


def estimate(rows: list[dict[str, Any]], max_connections: int, reserved: int, capacity: float, client: str,
             default_interval: float) -> dict[str, Any]:
    default_rows = [r for r in rows if r["sync_interval_s"] == default_interval]
    per_follower_connections = max(r["connections"]["max_per_follower"] for r in default_rows)
    idle_queries = max(r["load_per_follower"]["idle"]["queries_per_s"] for r in default_rows)
    flowing_queries = max(r["load_per_follower"]["changes_flowing"]["queries_per_s"] for r in default_rows)
    connection_budget = max_connections - reserved - HEADROOM_CONNECTIONS
    query_budget = capacity * QUERY_BUDGET_SHARE
    return {
        "connections_per_follower_observed": per_follower_connections,
        "connections_per_follower_ceiling": POOL_MAX + 1,
        "connection_budget": connection_budget,
        "followers_by_connections_observed": int(connection_budget // per_follower_connections),
        "followers_by_connections_ceiling": connection_budget // (POOL_MAX + 1),
        "poll_transactions_per_s_measured": capacity,
        "poll_transactions_measured_with": client,
        "query_budget_per_s": query_budget,
        "queries_per_follower_per_s": {"idle": idle_queries, "changes_flowing": flowing_queries},
        "followers_by_queries_idle": int(query_budget // idle_queries) if idle_queries else None,
        "followers_by_queries_changes_flowing": int(query_budget // flowing_queries) if flowing_queries else None,
        "assumptions": f"connections: max_connections {max_connections} less {reserved} reserved for superusers "
                       f"and {HEADROOM_CONNECTIONS} kept for writers and admin tools; queries: "
                       f"{QUERY_BUDGET_SHARE:.0%} of the follower poll transactions per second this server answered "
                       f"in this run ({client}), each registry query a follower sends counted as one whole poll "
                       "transaction (BEGIN, SET TRANSACTION, SELECT, COMMIT): conservative, a sync after a change "
                       "runs several queries in one transaction",
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [f"Cores: {report['cores']} (the followers, the writer and PostgreSQL {report['postgres']} share them); "
             f"{report['tenants']} tenants; {report['changes']} changes per row, each committed and then asked of "
             "every replica with CheckAccess(min_revision); default --sync-interval "
             f"{report['default_sync_interval_s']:g} s (the poll; PostgreSQL NOTIFY wakes followers at once). "
             "Load per follower: registry queries (table scans), rows they read, transactions (autovacuum's "
             "included), less the writer's own; per change: beyond the idle polls, so that the rate while changes flow "
             "is the idle rate plus that times the change rate.", "",
             "| followers | --sync-interval s | commit → all answered, median / p95 / max ms | median ÷ sync interval "
             "| fan-out floor ms (nothing to wait for) | commit → first answered, median ms "
             "| queries/s per follower, idle / changes flowing (changes/s) | queries per change per follower "
             "| rows/s, idle / flowing "
             "| transactions/s, idle / flowing | follower CPU ms per change | connections per follower (listening) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        all_ms, idle, flowing = r["commit_to_all_answered"], r["load_per_follower"]["idle"], \
            r["load_per_follower"]["changes_flowing"]
        lines.append(
            f"| {r['replicas']} | {r['sync_interval_s']:g} | {all_ms['median_ms']:.1f} / {all_ms['p95_ms']:.1f} / "
            f"{all_ms['max_ms']:.1f} | {r['all_answered_median_over_sync_interval']:.3f} | "
            f"{r['fan_out_floor']['median_ms']:.1f} | {r['commit_to_first_answered']['median_ms']:.1f} | "
            f"{idle['queries_per_s']:.1f} / {flowing['queries_per_s']:.1f} ({flowing['changes_per_s']:.1f}) | "
            f"{r['load_per_follower']['per_change']['queries']:.1f} | "
            f"{idle['rows_per_s']:.0f} / {flowing['rows_per_s']:.0f} | "
            f"{idle['transactions_per_s']:.1f} / {flowing['transactions_per_s']:.1f} | "
            f"{r['follower_cpu']['ms_per_change_per_follower']:.1f} | "
            f"{r['connections']['max_per_follower']:.1f} ({r['connections']['listening_max']}) |")
    e = report["estimate"]
    load_averages = ", ".join(f"{r['load_average_1m_after']:.1f}" for r in report["rows"])
    lines += ["", f"One PostgreSQL (max_connections {report['max_connections']}): about "
              f"{e['followers_by_connections_observed']} followers by connections "
              f"({e['connections_per_follower_observed']:.1f} each as observed; "
              f"{e['followers_by_connections_ceiling']} if every pool grew to its ceiling of "
              f"{e['connections_per_follower_ceiling']}); about {e['followers_by_queries_idle']:,} idle or "
              f"{e['followers_by_queries_changes_flowing']:,} with changes flowing by queries, against a budget of "
              f"{e['query_budget_per_s']:,.0f} queries/s ({e['assumptions']}; "
              f"{e['poll_transactions_per_s_measured']:,.0f} poll transactions/s measured).",
              f"pg_stat_statements loaded: {report['pg_stat_statements']} (queries are counted from "
              "pg_stat_user_tables). A follower is a server process: `serve --workers W` counts W. Load average "
              f"(1 min) after each row: {load_averages}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", default="1,4,8", help="follower counts, separated by commas")
    parser.add_argument("--changes", type=int, default=30, help="changes committed per follower count")
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--slow-interval", type=float, default=2.0,
                        help="also run the largest count with this --sync-interval (0: don't)")
    parser.add_argument("--dsn", default=os.environ.get("TENANTGATE_BENCH_POSTGRES_DSN", DEFAULT_DSN))
    args = parser.parse_args()
    counts = [int(n) for n in args.replicas.split(",")]
    default_interval = ServeConfig().sync_interval
    configurations = [(n, default_interval) for n in counts]
    if args.slow_interval:
        configurations.append((max(counts), args.slow_interval))
    name = f"tenantgate_bench_replicas_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(args.dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        reason = " ".join(str(exc).split())
        print(f"PostgreSQL at {args.dsn} is not reachable ({reason}): skipping the replicas benchmark "
              "(set TENANTGATE_BENCH_POSTGRES_DSN)", file=sys.stderr)
        return 0
    try:
        with tempfile.TemporaryDirectory() as scratch_name, contextlib.closing(
                Monitor(args.dsn, name, database_url(args.dsn, name, MONITOR_APP))) as monitor:
            scratch = Path(scratch_name)
            key_file = scratch / "master.key"
            generate_master_key_file(key_file)
            master_key = MasterKey.from_file(key_file)
            writer = Writer(database_url(args.dsn, name, WRITER_APP), master_key, args.tenants)
            with writer.session() as store:
                store.apply(manifests_from_documents(tenant(i) for i in range(args.tenants)),
                            key_factory=tenant_key_factory(master_key))
            cost = writer_cost(writer, args.changes, monitor)
            rows = []
            for count, interval in configurations:
                print(f"{count} follower(s), --sync-interval {interval:g} s ...", flush=True)
                rows.append(measure(count, interval, args, database_url(args.dsn, name, FOLLOWER_APP), writer, cost,
                                    monitor, key_file, scratch))
            capacity, client = poll_capacity(database_url(args.dsn, name, PROBE_APP))
            max_connections = int(monitor.setting("max_connections"))
            reserved = int(monitor.setting("superuser_reserved_connections"))
            preload = monitor.setting("shared_preload_libraries")
            version = monitor.setting("server_version")
    finally:
        with psycopg.connect(args.dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    report = {
        "cores": os.cpu_count(), "python": platform.python_version(), "postgres": version,
        "max_connections": max_connections, "superuser_reserved_connections": reserved,
        "pg_stat_statements": "pg_stat_statements" in preload, "tenants": args.tenants, "changes": args.changes,
        "default_sync_interval_s": default_interval, "writer_cost_per_session": cost,
        "note": "followers, writer and PostgreSQL on one machine; latencies from the commit returning to each "
                "replica's answer (which must be the new deny) to CheckAccess(min_revision=the commit's revision); "
                "load from pg_stat_user_tables / pg_stat_database deltas less the writer's own, per follower",
        "rows": rows,
        "estimate": estimate(rows, max_connections, reserved, capacity, client, default_interval),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "replicas.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (RESULTS / "replicas.md").write_text(text)
    print(text)
    return 0 if all(r["wrong_answers"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
