"""Side by side with well-known libraries, same rules and requests, same run and machine:

- the access engine against pycasbin's RBAC-with-domains enforcer (allow rules only: casbin's model here
  has no deny, so neither side uses one);
- the quota engine against the `limits` library: in memory, and on Redis (one call at a time on both sides).

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
from pathlib import Path
from typing import Any

import casbin
import limits
from limits import storage as limits_storage
from limits import strategies
from measure import async_rate, rate

from tenantgate.counters.memory import MemoryCounterStore
from tenantgate.counters.redis import RedisCounterStore
from tenantgate.engines.access import AccessEngine, AccessRequest
from tenantgate.engines.quota import QuotaEngine, QuotaRequestItem
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


def quota_rows(redis_url: str) -> list[dict[str, Any]]:
    document = {"apiVersion": "tenantgate/v1", "kind": "Tenant", "metadata": {"id": "acme"},
                "spec": {"state": "Active", "quotas": {"api": {"rate": "1000000000/second"}}}}
    snapshot = build_snapshot(1, [build_tenant(parse_document(document).tenant, 1)], time.time())
    items = [QuotaRequestItem("api", 1)]
    item = limits.parse("1000000000/second")
    rows = []
    loop = asyncio.new_event_loop()
    engine = QuotaEngine(MemoryCounterStore())
    peer = strategies.FixedWindowRateLimiter(limits_storage.MemoryStorage())
    rows.append({"scenario": "quota consume, in memory",
                 "tenantgate_ops_per_s": async_rate(loop, lambda: engine.consume(snapshot, "acme", items)),
                 "peer": f"limits {limits.__version__} fixed window, memory",
                 "peer_ops_per_s": rate(lambda: peer.hit(item, "acme", "api"), 1.5, 200)})
    prefix = f"tgpeers-{os.getpid()}:"
    try:
        redis_store = RedisCounterStore(redis_url, prefix=prefix)
        redis_engine = QuotaEngine(redis_store)
        redis_peer = strategies.FixedWindowRateLimiter(limits_storage.RedisStorage(redis_url, key_prefix=prefix))
        rows.append({"scenario": "quota consume, Redis, one at a time",
                     "tenantgate_ops_per_s": async_rate(loop, lambda: redis_engine.consume(snapshot, "acme", items)),
                     "peer": f"limits {limits.__version__} fixed window, Redis",
                     "peer_ops_per_s": rate(lambda: redis_peer.hit(item, "acme", "api"), 1.5, 200)})
        loop.run_until_complete(redis_store.close())
        import redis

        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
    except Exception as exc:  # Redis missing: the memory rows still stand
        print(f"(skipping the Redis rows: {exc})")
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
        print(f"{row['scenario']:<38} tenantgate {row['tenantgate_ops_per_s']:>10,.0f}/s   {row['peer']:<40} "
              f"{row['peer_ops_per_s']:>10,.0f}/s   ratio {row['ratio_to_peer']:.2f}")


if __name__ == "__main__":
    main()
