"""The Python SDK's overhead per call: ``Client`` and ``AsyncClient`` next to the raw generated stubs, on channels
with the same settings (the SDK's own channel plan: target, service config, retries, health checks) and the same
call options (deadline, wait-for-ready), against one tenantgate server process on loopback.

CheckAccess (by subject, allowed) and ConsumeQuota (one item, memory backend, never refused), blocking and
asyncio, one call in flight at a time. A raw call builds its request and reads one field of the answer, as the
least a caller does; the SDK builds the same request from its arguments and reads the answer into a typed result.
Each round runs ``--calls`` calls of every variant, raw and SDK interleaved in blocks of ``--block`` calls that
take turns going first; figures are medians over the rounds, and each ratio is the median of the rounds' SDK/raw
ratios.

Two figures per call: wall time (what a caller waits: mostly the server and the loopback) and the client
process's CPU time (every thread of it, gRPC's included: what the SDK adds to the caller's machine, and the
steadier of the two on a shared box, as it leaves out waiting for the server). The target is an SDK/raw ratio
of at most 1.05.
Usage: python benchmarks/sdk_bench.py [--calls 2000] [--rounds 7] [--block 100]
Writes benchmarks/results/sdk.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from tenantgate.client import AsyncClient, Client, ClientConfig
from tenantgate.client._channels import plan_channel
from tenantgate.registry.manifest import manifests_from_documents
from tenantgate.registry.sqlite import SQLiteStore
from tenantgate.v1 import decision_pb2 as pb
from tenantgate.v1 import decision_pb2_grpc

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_RATIO = 1.05
TENANT = {"apiVersion": "tenantgate/v1", "kind": "Tenant", "metadata": {"id": "acme"},
          "spec": {"state": "Active", "quotas": {"api": {"rate": "100000000/second"}},
                   "access": {"roles": {"viewer": {"allow": ["read:*"]}},
                              "bindings": [{"subject": "user:alice", "roles": ["viewer"]}]}}}

Blocking = Callable[[], object]
Awaited = Callable[[], Awaitable[object]]


@dataclass
class Scenario:
    name: str
    raw: Blocking | Awaited
    sdk: Blocking | Awaited
    awaited: bool
    rounds: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # variant -> (wall, cpu) per call


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def server(scratch: Path) -> Iterator[str]:
    store = SQLiteStore(scratch / "registry.db")
    store.apply(manifests_from_documents([TENANT]))
    store.close()
    target = f"127.0.0.1:{free_port()}"
    child = subprocess.Popen([sys.executable, "-m", "tenantgate", "serve", "--registry",
                              f"sqlite://{scratch}/registry.db", "--listen", target, "--admin-listen", "",
                              "--snapshot-file", "", "--log-level", "WARNING", "--drain-delay", "0"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with Client(ClientConfig(target, wait_for_ready=True, timeout=60)) as client:
            client.check_access("acme", "read", "docs/1", subject="user:alice")  # serving: the registry is loaded
        yield target
    finally:
        child.terminate()
        child.wait(30)


def measure(call: Blocking, calls: int) -> tuple[float, float]:
    """Seconds of wall time and of this process's CPU time per call, over ``calls`` calls."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        call()
    return (time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls


def measure_awaited(loop: asyncio.AbstractEventLoop, call: Awaited, calls: int) -> tuple[float, float]:
    async def run() -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            await call()
        return (time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls

    return loop.run_until_complete(run())


def blocking_scenarios(target: str) -> tuple[list[Scenario], Callable[[], None]]:
    config = ClientConfig(target)
    plan = plan_channel(config)
    channel = grpc.insecure_channel(plan.target, options=plan.options)
    stub = decision_pb2_grpc.DecisionServiceStub(channel)
    client = Client(config)
    options = {"timeout": config.timeout, "metadata": None, "wait_for_ready": config.wait_for_ready}

    def raw_check() -> bool:
        return bool(stub.CheckAccess(pb.CheckAccessRequest(tenant_id="acme", subject="user:alice", action="read",
                                                           resource="docs/1"), **options).allowed)

    def raw_consume() -> bool:
        return bool(stub.ConsumeQuota(pb.ConsumeQuotaRequest(tenant_id="acme", items=[pb.QuotaItem(
            quota="api", amount=1)]), **options).allowed)

    def close() -> None:
        client.close()
        channel.close()

    return [Scenario("CheckAccess, blocking", raw_check,
                     lambda: client.check_access("acme", "read", "docs/1", subject="user:alice"), False),
            Scenario("ConsumeQuota, blocking", raw_consume, lambda: client.consume_quota("acme", {"api": 1}),
                     False)], close


async def awaited_scenarios(target: str) -> tuple[list[Scenario], Callable[[], Awaitable[None]]]:
    config = ClientConfig(target)
    plan = plan_channel(config)
    channel = grpc.aio.insecure_channel(plan.target, options=plan.options)
    stub = decision_pb2_grpc.DecisionServiceStub(channel)
    client = AsyncClient(config)
    options = {"timeout": config.timeout, "metadata": None, "wait_for_ready": config.wait_for_ready}

    async def raw_check() -> bool:
        return bool((await stub.CheckAccess(pb.CheckAccessRequest(
            tenant_id="acme", subject="user:alice", action="read", resource="docs/1"), **options)).allowed)

    async def raw_consume() -> bool:
        return bool((await stub.ConsumeQuota(pb.ConsumeQuotaRequest(tenant_id="acme", items=[pb.QuotaItem(
            quota="api", amount=1)]), **options)).allowed)

    async def close() -> None:
        await client.close()
        await channel.close()

    return [Scenario("CheckAccess, asyncio", raw_check,
                     lambda: client.check_access("acme", "read", "docs/1", subject="user:alice"), True),
            Scenario("ConsumeQuota, asyncio", raw_consume, lambda: client.consume_quota("acme", {"api": 1}),
                     True)], close


def run_rounds(scenarios: list[Scenario], rounds: int, calls: int, block: int,
               loop: asyncio.AbstractEventLoop) -> None:
    """Each round: ``calls`` calls of each variant, raw and SDK interleaved in blocks of ``block`` calls, which go
    first in turn, so that the two share the machine's moments (drift on a shared box favours neither)."""
    def once(scenario: Scenario, variant: str, count: int) -> tuple[float, float]:
        call: Any = getattr(scenario, variant)
        return measure_awaited(loop, call, count) if scenario.awaited else measure(call, count)

    for scenario in scenarios:  # warm: connections up, caches filled, code paths taken once
        for variant in ("raw", "sdk"):
            once(scenario, variant, calls // 4)
    for _ in range(rounds):
        for scenario in scenarios:
            totals = {"raw": [0.0, 0.0], "sdk": [0.0, 0.0]}
            blocks = max(1, calls // block)
            for number in range(blocks):
                for variant in ("raw", "sdk") if number % 2 == 0 else ("sdk", "raw"):
                    wall, cpu = once(scenario, variant, block)
                    totals[variant][0] += wall / blocks
                    totals[variant][1] += cpu / blocks
            for variant, (wall, cpu) in totals.items():
                scenario.rounds.setdefault(variant, []).append((wall, cpu))


def summary(scenario: Scenario) -> dict[str, Any]:
    raw, sdk = scenario.rounds["raw"], scenario.rounds["sdk"]
    wall_ratios = [s[0] / r[0] for r, s in zip(raw, sdk, strict=True)]
    cpu_ratios = [s[1] / r[1] for r, s in zip(raw, sdk, strict=True)]
    return {
        "scenario": scenario.name,
        "raw_wall_us": statistics.median(r[0] for r in raw) * 1e6,
        "sdk_wall_us": statistics.median(s[0] for s in sdk) * 1e6,
        "wall_ratio": statistics.median(wall_ratios),
        "wall_ratio_range": [min(wall_ratios), max(wall_ratios)],
        "raw_cpu_us": statistics.median(r[1] for r in raw) * 1e6,
        "sdk_cpu_us": statistics.median(s[1] for s in sdk) * 1e6,
        "cpu_ratio": statistics.median(cpu_ratios),
        "cpu_ratio_range": [min(cpu_ratios), max(cpu_ratios)],
        "sdk_cpu_added_us": statistics.median((s[1] - r[1]) for r, s in zip(raw, sdk, strict=True)) * 1e6,
        "target_ratio": TARGET_RATIO,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per variant and round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--block", type=int, default=100, help="calls of one variant before the other's turn")
    args = parser.parse_args()
    loop = asyncio.new_event_loop()
    with tempfile.TemporaryDirectory() as scratch, server(Path(scratch)) as target:
        blocking, close_blocking = blocking_scenarios(target)
        awaited, close_awaited = loop.run_until_complete(awaited_scenarios(target))
        try:
            run_rounds(blocking + awaited, args.rounds, args.calls, args.block, loop)
        finally:
            close_blocking()
            loop.run_until_complete(close_awaited())
            loop.close()
    rows = [summary(scenario) for scenario in blocking + awaited]
    report = {"cores": os.cpu_count(), "python": platform.python_version(), "grpc": grpc.__version__,
              "calls_per_round": args.calls, "block": args.block, "rounds": args.rounds, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sdk.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'scenario':24} {'raw µs':>8} {'SDK µs':>8} {'ratio':>6} {'(range)':>14}   "
          f"{'raw CPU':>8} {'SDK CPU':>8} {'ratio':>6} {'(range)':>14}")
    for row in rows:
        print(f"{row['scenario']:24} {row['raw_wall_us']:8.1f} {row['sdk_wall_us']:8.1f} {row['wall_ratio']:6.3f} "
              f"({row['wall_ratio_range'][0]:.3f}-{row['wall_ratio_range'][1]:.3f})   {row['raw_cpu_us']:8.1f} "
              f"{row['sdk_cpu_us']:8.1f} {row['cpu_ratio']:6.3f} "
              f"({row['cpu_ratio_range'][0]:.3f}-{row['cpu_ratio_range'][1]:.3f})")
    print(f"target: SDK/raw at most {TARGET_RATIO} ({os.cpu_count()} cores; wall = what a caller waits, CPU = the "
          "client process, all threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
