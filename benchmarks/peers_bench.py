"""Side by side with well-known libraries, same rules and requests, same run and machine:

- the access engine against pycasbin's RBAC-with-domains enforcer (allow rules only: casbin's model here
  has no deny, so neither side uses one);
- the quota engine against the `limits` library's fixed window: in memory, and on Redis (one call at a time,
  and 100 at a time in one process), with the parts of tenantgate's path that limits has no counterpart for
  measured apart (see quota_rows).

Figures are ratios: tenantgate's operations per second over the peer's. Needs the bench extra
(pip install -e '.[bench]'). Writes benchmarks/results/peers.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import casbin
import limits
import uvloop
from limits import storage as limits_storage
from limits import strategies
from limits.aio import storage as aio_storage
from limits.aio import strategies as aio_strategies
from measure import async_rate, rate

from tenantgate.counters.memory import MemoryCounterStore
from tenantgate.counters.redis import RedisCounterStore
from tenantgate.engines.access import AccessEngine, AccessRequest
from tenantgate.engines.quota import CounterOp, QuotaEngine, QuotaRequestItem
from tenantgate.engines.tokens import TokenVerifier
from tenantgate.registry.manifest import parse_document
from tenantgate.snapshot import build_snapshot, build_tenant

RESULTS = Path(__file__).resolve().parent / "results"
TENANTS = 100
MODEL = """
[request_definition]
r = sub, dom, obj, act
[policy_definition]
p = sub, dom, obj, act
[role_definition]
g = _, _, _
[policy_effect]
e = some(where (p.eft == allow))
[matchers]
m = g(r.sub, p.sub, r.dom) && r.dom == p.dom && keyMatch(r.obj, p.obj) && (r.act == p.act || p.act == "*")
"""
ROLES = {"admin": ("*", "*"), "editor": ("write", "docs/*"), "viewer": ("read", "*")}
BINDINGS = {"user:alice": "admin", "user:bob": "editor", "user:carol": "viewer"}
REQUESTS = [("user:bob", "write", "docs/1"), ("user:carol", "read", "reports/q3"), ("user:carol", "write", "docs/1"),
            ("user:mallory", "read", "docs/1")]




def access_rows() -> list[dict[str, Any]]:
    documents = [{"apiVersion": "tenantgate/v1", "kind": "Tenant", "metadata": {"id": f"t{i:04d}"},
                  "spec": {"state": "Active", "access": {
                      "roles": {name: {"allow": [f"{action}:{glob}"]} for name, (action, glob) in ROLES.items()},
                      "bindings": [{"subject": subject, "roles": [role]} for subject, role in BINDINGS.items()]}}}
                 for i in range(TENANTS)]
    snapshot = build_snapshot(1, [build_tenant(parse_document(d).tenant, 1) for d in documents], time.time())
    engine = AccessEngine(TokenVerifier())
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as model:
        model.write(MODEL)
    enforcer = casbin.Enforcer(model.name)
    os.unlink(model.name)
    for i in range(TENANTS):
        for name, (action, glob) in ROLES.items():
            enforcer.add_policy(name, f"t{i:04d}", glob, action)
        for subject, role in BINDINGS.items():
            enforcer.add_grouping_policy(subject, role, f"t{i:04d}")
    ours = [AccessRequest("t0042", action, resource, subject) for subject, action, resource in REQUESTS]
    theirs = [(subject, "t0042", resource, action) for subject, action, resource in REQUESTS]
    assert [engine.check(snapshot, r).allowed for r in ours] == [enforcer.enforce(*r) for r in theirs]
    cursor = iter(range(10**12))
    ours_rate = rate(lambda: engine.check(snapshot, ours[next(cursor) & 3]), 1.5, 200)
    theirs_rate = rate(lambda: enforcer.enforce(*theirs[next(cursor) & 3]), 1.5, 200)
    return [{"scenario": f"access decision, {TENANTS} tenants", "tenantgate_ops_per_s": ours_rate,
             "peer": f"pycasbin {casbin.__name__} RBAC with domains", "peer_ops_per_s": theirs_rate}]


QUOTAS = {"api": {"rate": "1000000000/second"},  # a token bucket that never runs dry
          "daily": {"limit": 10**15, "period": "day"}}  # a UTC calendar window: like limits' fixed window
CONCURRENT = 100


def _redis_calls(client: Any) -> tuple[int, int]:
    """EVALSHA calls and the microseconds Redis spent in them so far (both sides call one Lua script per hit)."""
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


def _side_by_side(ours: Callable[[], float], theirs: Callable[[], float], client: Any = None) -> dict[str, Any]:
    """Each side measured three times, taking turns, its best figure kept; with ``client``, also the microseconds
    Redis spent per script call on each side."""
    best = {"tenantgate": 0.0, "peer": 0.0}
    spent = {"tenantgate": [0, 0], "peer": [0, 0]}
    for _ in range(3):
        for side, measure in (("tenantgate", ours), ("peer", theirs)):
            before = _redis_calls(client) if client is not None else (0, 0)
            best[side] = max(best[side], measure())
            if client is not None:
                after = _redis_calls(client)
                spent[side] = [spent[side][0] + after[0] - before[0], spent[side][1] + after[1] - before[1]]
    figures: dict[str, Any] = {"tenantgate_ops_per_s": best["tenantgate"], "peer_ops_per_s": best["peer"]}
    if client is not None:
        figures["tenantgate_redis_us_per_call"] = spent["tenantgate"][1] / max(1, spent["tenantgate"][0])
        figures["peer_redis_us_per_call"] = spent["peer"][1] / max(1, spent["peer"][0])
    return figures


def _concurrent_rate(loop: asyncio.AbstractEventLoop, operation: Callable[[], Awaitable[object]]) -> float:
    """Operations per second, ``CONCURRENT`` at a time (as many callers of one server process)."""
    return async_rate(loop, lambda: asyncio.gather(*(operation() for _ in range(CONCURRENT))), 1.5, 20) * CONCURRENT


def quota_rows(redis_url: str) -> list[dict[str, Any]]:
    """tenantgate's quota engine, as the server calls it (on uvloop, as the server runs), beside limits' fixed
    window strategy on the same backend; and the parts of tenantgate's path measured apart: the counter store
    alone (no request validation, tenant state, outcome), a calendar window instead of the token bucket, an
    idempotency key."""
    document = {"apiVersion": "tenantgate/v1", "kind": "Tenant", "metadata": {"id": "acme"},
                "spec": {"state": "Active", "quotas": QUOTAS}}
    snapshot = build_snapshot(1, [build_tenant(parse_document(document).tenant, 1)], time.time())
    rate_items, window_items = [QuotaRequestItem("api", 1)], [QuotaRequestItem("daily", 1)]
    rate_ops = [CounterOp(snapshot.tenants["acme"].spec.quotas["api"], 1)]
    item = limits.parse("1000000000/second")
    peer_name = f"limits {limits.__version__} fixed window"
    rows = []
    loop = uvloop.new_event_loop()
    store = MemoryCounterStore()
    engine = QuotaEngine(store)
    peer = strategies.FixedWindowRateLimiter(limits_storage.MemoryStorage())
    hit = lambda: rate(lambda: peer.hit(item, "acme", "api"), 1.5, 200)  # noqa: E731
    rows.append({"scenario": "quota consume, memory", "peer": f"{peer_name}, memory", **_side_by_side(
        lambda: async_rate(loop, lambda: engine.consume(snapshot, "acme", rate_items)), hit)})
    rows.append({"scenario": "quota consume, memory, counter store alone", "peer": f"{peer_name}, memory",
                 **_side_by_side(lambda: async_rate(loop, lambda: store.consume("acme", rate_ops, time.time())), hit)})
    prefix = f"tgpeers-{os.getpid()}:"
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        client.ping()
    except redis.RedisError as exc:  # Redis missing: the memory rows still stand
        print(f"(skipping the Redis rows: {exc})")
        loop.close()
        return rows
    redis_store = RedisCounterStore(redis_url, prefix=prefix)
    redis_engine = QuotaEngine(redis_store)
    redis_peer = strategies.FixedWindowRateLimiter(limits_storage.RedisStorage(redis_url, key_prefix=prefix))
    redis_hit = lambda: rate(lambda: redis_peer.hit(item, "acme", "api"), 1.5, 200)  # noqa: E731
    # limits' asyncio flavour on redis-py's asyncio client, for many callers at once in one process.
    async_peer = aio_strategies.FixedWindowRateLimiter(aio_storage.RedisStorage(
        redis_url.replace("redis://", "async+redis://", 1), implementation="redispy", key_prefix=prefix))
    keys = iter(range(10**12))
    one_at_a_time = [
        ("quota consume, Redis, one at a time", lambda: redis_engine.consume(snapshot, "acme", rate_items)),
        ("quota consume, Redis, one at a time, calendar window",
         lambda: redis_engine.consume(snapshot, "acme", window_items)),
        ("quota consume, Redis, one at a time, idempotency key",
         lambda: redis_engine.consume(snapshot, "acme", rate_items, idempotency_key=f"k{next(keys)}")),
        ("quota consume, Redis, one at a time, counter store alone",
         lambda: redis_store.consume("acme", rate_ops, 0.0)),
    ]
    for scenario, operation in one_at_a_time:
        rows.append({"scenario": scenario, "peer": f"{peer_name}, Redis", **_side_by_side(
            lambda operation=operation: async_rate(loop, operation), redis_hit, client)})
    # The same consume one at a time against limits' asyncio flavour, what an asyncio service would call.
    rows.append({"scenario": "quota consume, Redis, one at a time, beside limits.aio",
                 "peer": f"{peer_name}, Redis (limits.aio, redis-py asyncio)", **_side_by_side(
                     lambda: async_rate(loop, lambda: redis_engine.consume(snapshot, "acme", rate_items)),
                     lambda: async_rate(loop, lambda: async_peer.hit(item, "acme", "api")), client)})
    rows.append({"scenario": f"quota consume, Redis, {CONCURRENT} at a time",
                 "peer": f"{peer_name}, Redis (limits.aio, redis-py asyncio)", **_side_by_side(
                     lambda: _concurrent_rate(loop, lambda: redis_engine.consume(snapshot, "acme", rate_items)),
                     lambda: _concurrent_rate(loop, lambda: async_peer.hit(item, "acme", "api")), client)})
    loop.run_until_complete(redis_store.close())
    found = list(client.scan_iter(match=f"{prefix}*"))
    if found:
        client.delete(*found)
    client.close()
    loop.close()
    return rows


def main() -> None:
    rows = access_rows() + quota_rows(os.environ.get("TENANTGATE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    for row in rows:
        row["ratio_to_peer"] = row["tenantgate_ops_per_s"] / row["peer_ops_per_s"]
    report = {"cores": os.cpu_count(), "python": platform.python_version(), "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "peers.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"cores: {report['cores']}")
    for row in rows:
        inside = (f"   Redis us/call {row['tenantgate_redis_us_per_call']:.1f} vs {row['peer_redis_us_per_call']:.1f}"
                  if "peer_redis_us_per_call" in row else "")
        print(f"{row['scenario']:<58} tenantgate {row['tenantgate_ops_per_s']:>10,.0f}/s   "
              f"peer {row['peer_ops_per_s']:>10,.0f}/s   ratio {row['ratio_to_peer']:.2f}{inside}")


if __name__ == "__main__":
    main()
