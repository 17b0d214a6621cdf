"""Registry scale: a registry of many tenants (default 100,000), measured end to end.

- apply: all tenants in one transaction (keys generated and wrapped);
- full snapshot build (what a server does at start), against the bare read of the registry it needs;
- memory per tenant of the loaded snapshot, and after every tenant has been asked about once;
- a server's start until it serves (its first snapshot swapped in: health SERVING);
- propagation: one tenant's change committed by another writer until a running server answers with it.

Figures are printed with their baseline from the same run and written to benchmarks/results/registry_scale.json.
Usage: python benchmarks/registry_scale.py [--tenants N] [--registry URL]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import grpc

from tenantgate.config import ServeConfig
from tenantgate.keywrap import MasterKey, tenant_key_factory
from tenantgate.registry.backends import open_store
from tenantgate.registry.manifest import manifests_from_documents
from tenantgate.registry.records import RegistryStore
from tenantgate.server.app import TenantgateServer
from tenantgate.snapshot import SnapshotHolder, compile_all
from tenantgate.sync.syncer import Syncer
from tenantgate.v1 import decision_pb2 as pb
from tenantgate.v1 import decision_pb2_grpc

RESULTS = Path(__file__).resolve().parent / "results"
SHARED_IDP = {"issuer": "https://login.example", "audience": "tenantgate", "tenant_claim": "tid",
              "jwks": {"keys": [{"kty": "EC", "crv": "P-256", "kid": "idp-1", "alg": "ES256",
                                 "x": "9R_UheSUhy1-DYxnXzo-Tk6Mmc6w4ku3YHFU0bJF4NM",
                                 "y": "jzWRxGRyrtHoXSpxUdSrfEs6jHj8-iBbSbW4HFw594Q"}]}}
PLANS = {
    "free": {"api-requests": {"rate": "60/minute"}, "users": {"allocation": 5}},
    "team": {"api-requests": {"rate": "1000/minute", "burst": 100}, "users": {"allocation": 50},
             "ai-requests": {"limit": 10000, "period": "month"}},
    "enterprise": {"api-requests": {"rate": "100/second", "burst": 500}, "users": {"allocation": 5000},
                   "ai-requests": {"limit": 1000000, "period": "month"},
                   "concurrent-requests": {"concurrency": 50, "lease_ttl": "30s"},
                   "storage-bytes": {"allocation": "1Ti"}},
}
ROLES = {"admin": {"allow": ["*"]}, "editor": {"allow": ["read:docs/*", "write:docs/*"]},
         "viewer": {"allow": ["read:*"], "deny": ["read:secrets/*"]}}


def tenant(index: int, plan: str = "") -> dict[str, Any]:
    """A typical tenant: a plan's quotas, three roles, its own people, the shared identity provider, a data key."""
    tenant_id = f"t{index:06d}"
    plan = plan or list(PLANS)[index % len(PLANS)]
    return {"apiVersion": "tenantgate/v1", "kind": "Tenant",
            "metadata": {"id": tenant_id, "name": f"Tenant {index}",
                         "labels": {"region": ["eu", "us", "ap"][index % 3], "plan": plan}},
            "spec": {"state": "Active", "plan": plan, "environments": ["dev", "prod"], "features": ["sso"],
                     "quotas": PLANS[plan],
                     "access": {"roles": ROLES, "groups": {"support": [f"user:s{index}a", f"user:s{index}b"]},
                                "bindings": [{"subject": f"user:owner{index}", "roles": ["admin"]},
                                             {"subject": f"user:dev{index}", "roles": ["editor"],
                                              "environments": ["dev"]},
                                             {"subject": "group:support", "roles": ["viewer"]}],
                                "deny": ["delete:audit/*"]},
                     "tokens": {"issuers": [SHARED_IDP]},
                     "keys": {"purposes": ["data"], "readers": ["service:storage"]}}}


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def timed(function: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def propagation(store: RegistryStore, registry_url: str, master_key: MasterKey,
                samples: int) -> tuple[float, list[float]]:
    """Seconds from a server's start to its first snapshot served (health SERVING), and the delays of changes."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    config = ServeConfig(registry=registry_url, listen="127.0.0.1:0", admin_listen="", snapshot_file="")

    async def start() -> TenantgateServer:
        server = TenantgateServer(config, master_key)
        await server.start()
        await server.holder.wait_for_revision(0, 300)
        return server

    started_at = time.perf_counter()
    server = asyncio.run_coroutine_threadsafe(start(), loop).result(600)
    start_seconds = time.perf_counter() - started_at
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = decision_pb2_grpc.DecisionServiceStub(channel)
    delays = []
    for sample in range(samples):
        document = tenant(7)
        document["spec"]["features"] = [f"feature-{sample}"]
        start_time = time.perf_counter()
        store.apply(manifests_from_documents([document]))
        while stub.ResolveTenant(pb.ResolveTenantRequest(tenant_id="t000007")).features != [f"feature-{sample}"]:
            time.sleep(0.001)
        delays.append(time.perf_counter() - start_time)
    channel.close()
    asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(60)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    return start_seconds, delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=100_000)
    parser.add_argument("--registry", default="", help="registry URL (default: a new SQLite file)")
    parser.add_argument("--samples", type=int, default=10, help="propagation measurements")
    args = parser.parse_args()
    master_key = MasterKey(os.urandom(32))
    with tempfile.TemporaryDirectory() as scratch:
        registry_url = args.registry or f"sqlite://{scratch}/registry.db"
        store = open_store(registry_url)
        documents = {f"t{i:06d}": tenant(i) for i in range(args.tenants)}
        parsed = manifests_from_documents(documents.values())
        _, apply_seconds = timed(lambda: store.apply(parsed, key_factory=tenant_key_factory(master_key)))
        documents.clear()

        state, load_seconds = timed(store.load)
        del state
        gc.collect()
        syncer = Syncer(store, SnapshotHolder(), master_key)
        before = rss_bytes()
        snapshot, build_seconds = timed(syncer.build_full)
        gc.collect()
        loaded_rss = rss_bytes() - before
        views = list(snapshot.tenants.values())
        _, compile_seconds = timed(lambda: compile_all(views))
        gc.collect()
        compiled_rss = rss_bytes() - before
        views.clear()
        del snapshot
        gc.collect()

        tracemalloc.start()
        snapshot = syncer.build_full()
        loaded_traced = tracemalloc.get_traced_memory()[0]
        for view in snapshot.tenants.values():
            view.compile()
        compiled_traced = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        del snapshot
        gc.collect()

        start_seconds, delays = propagation(store, registry_url, master_key, args.samples)
        store.close()

    n = args.tenants
    report = {
        "cores": os.cpu_count(), "python": platform.python_version(), "tenants": n,
        "registry": "sqlite" if not args.registry else args.registry.partition("://")[0],
        "apply_all_seconds": apply_seconds,
        "registry_read_seconds": load_seconds,
        "snapshot_build_seconds": build_seconds,
        "server_start_to_serving_seconds": start_seconds,
        "snapshot_build_ratio_to_registry_read": build_seconds / load_seconds,
        "compile_every_tenant_seconds": compile_seconds,
        "bytes_per_tenant_loaded": {"rss": loaded_rss / n, "python_heap": loaded_traced / n},
        "bytes_per_tenant_all_compiled": {"rss": compiled_rss / n, "python_heap": compiled_traced / n},
        "propagation_seconds": {"median": statistics.median(delays), "max": max(delays),
                                "poll_interval": ServeConfig().sync_interval},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "registry_scale.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
