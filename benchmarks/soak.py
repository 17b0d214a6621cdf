"""Soak: mixed load against a real server process for a while (default 10 minutes), loopback only.

Reports errors (must be zero), requests per second over time, and the server's RSS over time, which must
level off: growth over the second half of the run stays within 5% (or 8 MiB). Exits 1 otherwise.
Writes benchmarks/results/soak.json. Usage: python benchmarks/soak.py [--seconds N] [--concurrency N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from tenantgate.keywrap import MasterKey, generate_master_key_file, tenant_key_factory
from tenantgate.registry.manifest import manifests_from_documents
from tenantgate.registry.sqlite import SQLiteStore
from tenantgate.v1 import decision_pb2 as pb
from tenantgate.v1 import decision_pb2_grpc

RESULTS = Path(__file__).resolve().parent / "results"
TENANTS = 200


def registry(path: Path, master: MasterKey, idp_jwk: dict[str, Any]) -> None:
    store = SQLiteStore(path)
    documents = {}
    for i in range(TENANTS):
        tenant_id = f"t{i:04d}"
        documents[tenant_id] = {
            "apiVersion": "tenantgate/v1", "kind": "Tenant", "metadata": {"id": tenant_id},
            "spec": {"state": "Active", "environments": ["prod"],
                     "quotas": {"api": {"rate": "100000/second"}, "conc": {"concurrency": 1000, "lease_ttl": "5s"}},
                     "access": {"roles": {"r": {"allow": ["read:*"], "deny": ["read:secret/*"]}},
                                "bindings": [{"subject": "user:alice", "roles": ["r"]}]},
                     "tokens": {"issuers": [{"issuer": "https://idp.soak", "audience": "tenantgate",
                                             "jwks": {"keys": [idp_jwk]}}]},
                     "keys": {"purposes": ["data"], "readers": ["service:storage"]}}}
    store.apply(manifests_from_documents(documents.values()), key_factory=tenant_key_factory(master))
    store.close()


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def load(target: str, seconds: float, concurrency: int, tokens: list[str], samples: list[dict[str, Any]],
               pid: int) -> dict[str, int]:
    counts = {"calls": 0, "errors": 0}
    errors: list[str] = []
    channels = [grpc.aio.insecure_channel(target) for _ in range(4)]
    stubs = [decision_pb2_grpc.DecisionServiceStub(channel) for channel in channels]
    storage = (("x-tenantgate-caller", "service:storage"),)
    deadline = time.monotonic() + seconds

    async def one(stub: Any) -> None:
        tenant = f"t{random.randrange(TENANTS):04d}"
        kind = random.random()
        if kind < 0.4:
            await stub.CheckAccess(pb.CheckAccessRequest(tenant_id=tenant, subject="user:alice", action="read",
                                                         resource=random.choice(["docs/1", "secret/k"])), timeout=5)
        elif kind < 0.55:
            await stub.CheckAccess(pb.CheckAccessRequest(tenant_id=tenant, token=random.choice(tokens),
                                                         action="read", resource="docs/1"), timeout=5)
        elif kind < 0.65:
            await stub.CheckAccessBatch(pb.CheckAccessBatchRequest(items=[pb.CheckAccessBatchItem(
                check=pb.CheckAccessRequest(tenant_id=tenant, subject="user:alice", action="read", resource=f"d/{n}"))
                for n in range(20)]), timeout=5)
        elif kind < 0.85:
            lease = await stub.ConsumeQuota(pb.ConsumeQuotaRequest(tenant_id=tenant, items=[
                pb.QuotaItem(quota="api", amount=1), pb.QuotaItem(quota="conc", amount=1)]), timeout=5)
            await stub.ConsumeQuota(pb.ConsumeQuotaRequest(tenant_id=tenant, release=True, items=[
                pb.QuotaItem(quota="conc", amount=1, lease_id=lease.results[1].lease_id)]), timeout=5)
        elif kind < 0.95:
            await stub.GetTenantKey(pb.GetTenantKeyRequest(tenant_id=tenant, purpose="data"), timeout=5,
                                    metadata=storage)
        else:
            await stub.ResolveTenant(pb.ResolveTenantRequest(tenant_id=tenant), timeout=5)

    async def worker(index: int) -> None:
        stub = stubs[index % len(stubs)]
        while time.monotonic() < deadline:
            try:
                await one(stub)
                counts["calls"] += 1
            except grpc.aio.AioRpcError as error:
                counts["errors"] += 1
                if len(errors) < 5:
                    errors.append(f"{error.code().name}: {error.details()}")

    async def sampler() -> None:
        start, last_calls = time.monotonic(), 0
        while time.monotonic() < deadline:
            await asyncio.sleep(min(10.0, max(0.5, seconds / 20)))
            calls = counts["calls"]
            samples.append({"t": round(time.monotonic() - start, 1), "rps": (calls - last_calls) /
                            max(1e-9, min(10.0, max(0.5, seconds / 20))), "rss_bytes": rss(pid),
                            "errors": counts["errors"]})
            last_calls = calls

    await asyncio.gather(sampler(), *(worker(i) for i in range(concurrency)))
    for channel in channels:
        await channel.close()
    if errors:
        print("first errors:", *errors, sep="\n  ")
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 600)))
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    idp = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(idp.public_key()))
    jwk.update({"kid": "soak", "alg": "ES256"})
    tokens = [jwt.encode({"iss": "https://idp.soak", "aud": "tenantgate", "sub": "alice", "tid": f"t{i:04d}",
                          "exp": int(time.time()) + int(args.seconds) + 600}, idp, algorithm="ES256",
                         headers={"kid": "soak"}) for i in range(TENANTS)]
    with tempfile.TemporaryDirectory() as scratch:
        key_file = Path(scratch) / "master.key"
        generate_master_key_file(key_file)
        master = MasterKey.from_file(key_file)
        registry(Path(scratch) / "registry.db", master, jwk)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        target = f"127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "tenantgate", "serve", "--registry", f"sqlite://{scratch}/registry.db",
             "--listen", target, "--admin-listen", "", "--snapshot-file", "", "--trust-caller-metadata",
             "--master-key-file", str(key_file), "--log-level", "WARNING"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(2)
            samples: list[dict[str, Any]] = []
            counts = asyncio.run(load(target, args.seconds, args.concurrency, tokens, samples, server.pid))
        finally:
            server.terminate()
            server.wait(30)
    half = samples[len(samples) // 2 - 1]["rss_bytes"] if len(samples) >= 2 else 0
    end = samples[-1]["rss_bytes"] if samples else 0
    growth = end - half
    levelled = growth <= max(0.05 * half, 8 << 20)
    report = {"cores": os.cpu_count(), "python": platform.python_version(), "seconds": args.seconds,
              "concurrency": args.concurrency, "calls": counts["calls"], "errors": counts["errors"],
              "rss_second_half_growth_bytes": growth, "rss_levelled_off": levelled, "samples": samples}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'t (s)':>7} {'rps':>9} {'RSS MiB':>9} {'errors':>7}")
    for sample in samples:
        print(f"{sample['t']:>7} {sample['rps']:>9,.0f} {sample['rss_bytes'] / 2**20:>9.1f} {sample['errors']:>7}")
    print(f"calls {counts['calls']}, errors {counts['errors']}, RSS growth over the second half "
          f"{growth / 2**20:.1f} MiB ({'levelled off' if levelled else 'STILL GROWING'}); cores {os.cpu_count()}")
    return 0 if counts["errors"] == 0 and levelled else 1


if __name__ == "__main__":
    sys.exit(main())
