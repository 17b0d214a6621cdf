"""How throughput grows with ``serve --workers N`` (processes sharing the port through SO_REUSEPORT).

CheckAccess and ConsumeQuota (Redis; several workers need Redis quotas) under h2load, for N = 1 up to the
cores there are, each figure a ratio to N = 1 measured in the same run. SO_REUSEPORT spreads connections,
not calls, so h2load opens 4 connections per worker. h2load runs on the same machine and uses a core of
its own when it can: the report says how many cores the run had.
Needs h2load (Debian package nghttp2-client) and Redis. Loopback only; every run is bounded in time.
Usage: python benchmarks/workers_bench.py [--seconds 5] [--max-workers N] [--redis URL]
Writes benchmarks/results/workers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_bench import RESULTS, Scenario, free_port, grpc_frame, h2load, process, verify, wait_ready, write_registry

from tenantgate.v1 import decision_pb2 as pb

CONNECTIONS_PER_WORKER = 4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--max-workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--redis", default=os.environ.get("TENANTGATE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        print("h2load is missing: apt-get install -y nghttp2-client", file=sys.stderr)
        return 2
    scenarios = [
        Scenario("CheckAccess by subject", "CheckAccess",
                 pb.CheckAccessRequest(tenant_id="t00001", subject="user:alice", action="read", resource="docs/1")),
        Scenario("ConsumeQuota, Redis", "ConsumeQuota",
                 pb.ConsumeQuotaRequest(tenant_id="t00001", items=[pb.QuotaItem(quota="api", amount=1)])),
    ]
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key()))
    jwk.update({"kid": "bench", "alg": "ES256"})
    rows = []
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        key_file = write_registry(scratch, 10, jwk)
        for scenario in scenarios:
            body = scratch / f"{scenario.method}.bin"
            body.write_bytes(grpc_frame(scenario.request.SerializeToString()))
        for workers in range(1, args.max_workers + 1):
            port = free_port()
            command = [sys.executable, "-m", "tenantgate", "serve", "--registry", f"sqlite://{scratch}/registry.db",
                       "--admin-listen", "", "--snapshot-file", "", "--master-key-file", str(key_file),
                       "--log-level", "WARNING", "--workers",
                       str(workers), "--listen", f"127.0.0.1:{port}", "--quota-backend", args.redis,
                       "--quota-prefix", f"tgworkers-{os.getpid()}-{workers}:"]
            with process(command):
                target = f"127.0.0.1:{port}"
                wait_ready(target)
                for scenario in scenarios:
                    verify(target, scenario)
                    result = h2load(target, scenario, scratch / f"{scenario.method}.bin", args.seconds,
                                    CONNECTIONS_PER_WORKER * workers, 16)
                    rows.append({"scenario": scenario.name, "workers": workers, "rps": result["rps"],
                                 "failed": result["failed"], "p99_ms": result["p99_ms"]})
    for row in rows:
        one = next(r["rps"] for r in rows if r["scenario"] == row["scenario"] and r["workers"] == 1)
        row["ratio_to_one_worker"] = row["rps"] / one if one else 0.0
    report = {"cores": os.cpu_count(), "note": "h2load (one thread) on the same machine", "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "workers.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"cores: {report['cores']} (h2load shares them)")
    for row in rows:
        print(f"{row['scenario']:26s} workers={row['workers']}  {row['rps']:8,.0f} req/s  "
              f"{row['ratio_to_one_worker']:.2f} x one worker  p99 {row['p99_ms']:.1f} ms")
    return 0 if all(r["failed"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
