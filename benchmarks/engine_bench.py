"""Engine micro-benchmarks: decisions per second of the access and quota engines.

Every figure is reported as a ratio to a baseline measured in the same run (a call that only looks the
tenant up in the same snapshot; for Redis consumes, the memory store; for checks against resources built to
defeat many-star rules, the normal access check), because absolute times on shared machines vary from run
to run.
Writes benchmarks/results/engine.json and prints a table.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from measure import rate
from redis.exceptions import RedisError

from tenantgate.counters.memory import MemoryCounterStore
from tenantgate.counters.redis import RedisCounterStore
from tenantgate.engines.access import AccessEngine, AccessRequest
from tenantgate.engines.quota import QuotaEngine, QuotaRequestItem
from tenantgate.engines.tokens import TokenVerifier
from tenantgate.registry.manifest import parse_document
from tenantgate.snapshot import Snapshot, build_snapshot, build_tenant

RESULTS = Path(__file__).resolve().parent / "results"
ROLES = {"admin": {"allow": ["*"]}, "editor": {"allow": ["read:docs/*", "write:docs/*"]},
         "viewer": {"allow": ["read:*"], "deny": ["read:secrets/*"]}}


def tenant(tenant_id: str) -> dict[str, Any]:
    return {"apiVersion": "tenantgate/v1", "kind": "Tenant", "metadata": {"id": tenant_id},
            "spec": {"state": "Active", "environments": ["dev", "prod"],
                     "quotas": {"api": {"rate": "1000000/second"}},
                     "access": {"roles": ROLES, "groups": {"support": ["user:carol"]},
                                "bindings": [{"subject": "user:alice", "roles": ["admin"]},
                                             {"subject": "user:bob", "roles": ["editor"], "environments": ["dev"]},
                                             {"subject": "group:support", "roles": ["viewer"]}],
                                "deny": ["delete:audit/*"]}}}


def snapshot_with(count: int) -> Snapshot:
    """``count`` tenants, t000001 compiled (the one the benchmarks ask about); the others as a server holds
    tenants no call has needed yet."""
    views = [build_tenant(parse_document(tenant(f"t{i:06d}")).tenant, 1, compiled=i == 1) for i in range(count)]
    return build_snapshot(1, views, time.time())


# Rules with many stars, and resources of the maximum size (1024) chosen so that every rule is tried and
# fails after as much work as its glob allows: a backtracking matcher spends minutes on each.
MANY_STAR_RULES = ["read:*/*/*/*.pdf", "read:*a*a*a*a*a*b", "read:*aaaaaaaaaaaaaaab*", "read:*a?a?a?a?a?a?a?b*"]
CHOSEN_RESOURCES = {"ordinary resource": "reports/2024/q3/summary.pdf", "1024 '/' (worst case)": "/" * 1024,
                    "1024 'a' (worst case)": "a" * 1024}


def worst_case_rows(engine: AccessEngine, normal: dict[str, Any]) -> list[dict[str, Any]]:
    """Access checks on a tenant with many-star rules, as a ratio to the normal check of this run."""
    document = tenant("many-stars")
    document["spec"]["access"] = {"roles": {"reader": {"allow": MANY_STAR_RULES}},
                                  "bindings": [{"subject": "user:alice", "roles": ["reader"]}]}
    snapshot = build_snapshot(1, [build_tenant(parse_document(document).tenant, 1)], time.time())
    rows = []
    for label, resource in CHOSEN_RESOURCES.items():
        request = AccessRequest("many-stars", "read", resource, "user:alice")
        assert engine.check(snapshot, request).allowed is (label == "ordinary resource")

        def decide(request: AccessRequest = request) -> object:
            return engine.check(snapshot, request)

        rows.append({"scenario": f"access check, many-star rules, {label}", "ops_per_s": rate(decide),
                     "baseline_ops_per_s": normal["ops_per_s"], "baseline": normal["scenario"]})
    return rows



def redis_rows(snapshot: Snapshot, memory_ops_per_s: float) -> list[dict[str, Any]]:
    """Quota consumes on Redis, one at a time and 100 at once, against the memory store's rate; with the
    round trips each consume cost (concurrent consumes share pipelines)."""
    url = os.environ.get("TENANTGATE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"tgbench-{os.getpid()}:"
    rows: list[dict[str, Any]] = []

    async def run(concurrency: int, seconds: float = 2.0) -> tuple[float, float]:
        store = RedisCounterStore(url, prefix=prefix)
        engine = QuotaEngine(store)
        items = [QuotaRequestItem("api", 1)]
        done = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            await asyncio.gather(*(engine.consume(snapshot, "t000001", items) for _ in range(concurrency)))
            done += concurrency
        elapsed = time.perf_counter() - start
        trips = store.round_trips / max(1, store.consumes)
        keys = [key async for key in store._redis.scan_iter(match=f"{prefix}*")]
        if keys:
            await store._redis.delete(*keys)
        await store.close()
        return done / elapsed, trips

    for concurrency in (1, 100):
        try:
            ops, trips = asyncio.run(run(concurrency))
        except (OSError, RedisError) as exc:
            print(f"(Redis at {url} not reachable, skipping its rows: {exc})")
            return []
        rows.append({"scenario": f"quota consume (Redis, {concurrency} concurrent)", "ops_per_s": ops,
                     "baseline_ops_per_s": memory_ops_per_s, "redis_round_trips_per_consume": trips})
    return rows


def main() -> None:
    engine = AccessEngine(TokenVerifier())
    requests = [AccessRequest("t000001", "read", "docs/readme", "user:bob", environment="dev"),
                AccessRequest("t000001", "read", "secrets/key", "user:carol"),
                AccessRequest("t000001", "delete", "audit/1", "user:alice"),
                AccessRequest("t000001", "write", "docs/x", "user:nobody")]
    rows: list[dict[str, Any]] = []
    cursor = itertools.count()
    for tenants in (10, int(os.environ.get("TENANTGATE_BENCH_TENANTS", "100000"))):
        snapshot = snapshot_with(tenants)

        def baseline(snapshot: Snapshot = snapshot) -> object:
            return snapshot.tenants.get(requests[next(cursor) & 3].tenant_id)

        def decide(snapshot: Snapshot = snapshot) -> object:
            return engine.check(snapshot, requests[next(cursor) & 3])

        base = rate(baseline)
        rows.append({"scenario": f"access check, {tenants} tenants", "ops_per_s": rate(decide),
                     "baseline_ops_per_s": base})
    rows.extend(worst_case_rows(engine, rows[0]))

    snapshot = snapshot_with(10)
    quota = QuotaEngine(MemoryCounterStore())
    items = [QuotaRequestItem("api", 1)]
    loop = asyncio.new_event_loop()

    def consume() -> object:
        return loop.run_until_complete(quota.consume(snapshot, "t000001", items))

    async def nothing() -> object:
        return snapshot.tenants.get("t000001")

    def baseline_async() -> object:
        return loop.run_until_complete(nothing())

    rows.append({"scenario": "quota consume (memory)", "ops_per_s": rate(consume),
                 "baseline_ops_per_s": rate(baseline_async)})
    loop.close()

    rows.extend(redis_rows(snapshot, rows[-1]["ops_per_s"]))

    for row in rows:
        row["ratio_to_baseline"] = row["ops_per_s"] / row["baseline_ops_per_s"]
    report = {"cores": os.cpu_count(), "python": platform.python_version(), "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "engine.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"cores: {report['cores']}  python: {report['python']}")
    print(f"{'scenario':<60} {'ops/s':>12} {'baseline ops/s':>15} {'ratio':>7}  round trips/consume")
    for row in rows:
        trips = row.get("redis_round_trips_per_consume")
        print(f"{row['scenario']:<60} {row['ops_per_s']:>12,.0f} {row['baseline_ops_per_s']:>15,.0f} "
              f"{row['ratio_to_baseline']:>7.3f}  {'' if trips is None else f'{trips:.3f}'}")
    print("(many-star rows: the baseline is the normal access check of this run, "
          f"{rows[0]['scenario']!r})")


if __name__ == "__main__":
    main()
