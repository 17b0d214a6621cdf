"""Load benchmarks over gRPC with h2load, each scenario against tenantgate and against the bare baseline
server (benchmarks/baseline_server.py) in the same run; figures are ratios to the baseline.

Before a scenario is measured, its exact request is sent with a real gRPC client and must answer OK:
h2load counts any HTTP 200 as success, even when grpc-status says otherwise.
Needs h2load (Debian package nghttp2-client). Loopback only; every run is bounded in time.
Usage: python benchmarks/grpc_bench.py [--seconds 5] [--connections 4] [--streams 16] [--tenants 10]
Writes benchmarks/results/latest.json and latest.md (and latest.png when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from tenantgate.keywrap import MasterKey, generate_master_key_file, tenant_key_factory
from tenantgate.registry.sqlite import SQLiteStore
from tenantgate.v1 import decision_pb2 as pb

RESULTS = Path(__file__).resolve().parent / "results"
SERVICE = "/tenantgate.v1.DecisionService/"
STORAGE = ("x-tenantgate-caller", "service:storage")


@dataclass
class Scenario:
    name: str
    method: str
    request: Any
    server: str = "default"  # which tenantgate server answers it
    metadata: tuple[tuple[str, str], ...] = ()
    decisions_per_call: int = 1
    results: dict[str, Any] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tenant(tenant_id: str, jwk: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "tenantgate/v1", "kind": "Tenant", "metadata": {"id": tenant_id},
            "spec": {"state": "Active", "environments": ["prod"],
                     "quotas": {"api": {"rate": "100000000/second"}},
                     "access": {"roles": {"admin": {"allow": ["*"]}, "viewer": {"allow": ["read:*"],
                                                                               "deny": ["read:secrets/*"]}},
                                "bindings": [{"subject": "user:alice", "roles": ["viewer"]},
                                             {"subject": "user:owner", "roles": ["admin"]}],
                                "deny": ["delete:audit/*"]},
                     "tokens": {"issuers": [{"issuer": "https://idp.bench", "audience": "tenantgate",
                                             "jwks": {"keys": [jwk]}}]},
                     "keys": {"purposes": ["data"], "readers": ["service:storage"]}}}


def wait_ready(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
    time.sleep(0.3)


@contextmanager
def process(command: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, **(env or {})})
    try:
        yield child
    finally:
        child.terminate()
        child.wait(30)


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (from /proc): less noisy than throughput on a shared box."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def h2load(target: str, scenario: Scenario, body: Path, seconds: float, connections: int, streams: int,
           rate: float = 0.0, pid: int = 0) -> dict[str, float]:
    log = body.with_suffix(".log")
    command = ["h2load", f"--duration={max(1, round(seconds))}", "--warm-up-time=1", f"-c{connections}", f"-m{streams}",
               f"--data={body}", "-H", "content-type: application/grpc", "-H", "te: trailers",
               f"--log-file={log}"]
    command += [arg for name, value in scenario.metadata for arg in ("-H", f"{name}: {value}")]
    if rate:
        command.append(f"--rps={max(1.0, rate / connections):.2f}")
    cpu_before = cpu_seconds(pid) if pid else 0.0
    result = subprocess.run([*command, f"http://{target}{SERVICE}{scenario.method}"], capture_output=True,
                            text=True, timeout=seconds + 60)
    cpu_used = cpu_seconds(pid) - cpu_before if pid else 0.0
    output = result.stdout
    finished = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", output)
    if finished is None:
        raise RuntimeError(f"h2load failed: {result.stderr.strip() or output[-500:]}")
    rps = float(finished.group(1))
    done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", output)
    durations = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines() if line.count("\t") >= 2)
    log.unlink()

    def percentile(q: float) -> float:
        return durations[min(len(durations) - 1, int(q * len(durations)))] / 1000 if durations else 0.0

    answered = int(done.group(3)) if done else 0
    return {"rps": rps, "failed": int(done.group(4)) if done else -1, "p50_ms": percentile(0.50),
            "server_cpu_us_per_call": 1e6 * cpu_used / answered if answered and pid else 0.0,
            "p99_ms": percentile(0.99), "p999_ms": percentile(0.999)}


def verify(target: str, scenario: Scenario) -> bytes:
    """The scenario's request through a real gRPC client: it must answer OK. Returns the response bytes."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(f"{SERVICE}{scenario.method}", request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=lambda b: b)
        return bytes(call(scenario.request, timeout=5, metadata=scenario.metadata))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--streams", type=int, default=16, help="concurrent streams per connection")
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--redis", default=os.environ.get("TENANTGATE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--only", default="", help="scenario names, separated by semicolons")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        print("h2load is missing: apt-get install -y nghttp2-client", file=sys.stderr)
        return 2
    idp = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(idp.public_key()))
    jwk.update({"kid": "bench", "alg": "ES256"})
    token = jwt.encode({"iss": "https://idp.bench", "aud": "tenantgate", "sub": "alice", "tid": "t00001",
                        "exp": int(time.time()) + 3600}, idp, algorithm="ES256", headers={"kid": "bench"})
    check = pb.CheckAccessRequest(tenant_id="t00001", subject="user:alice", action="read", resource="docs/1")
    scenarios = [
        Scenario("CheckAccess by subject", "CheckAccess", check),
        Scenario("CheckAccess by JWT, cached", "CheckAccess",
                 pb.CheckAccessRequest(tenant_id="t00001", token=token, action="read", resource="docs/1")),
        Scenario("CheckAccess by JWT, cold", "CheckAccess",
                 pb.CheckAccessRequest(tenant_id="t00001", token=token, action="read", resource="docs/1"),
                 server="cold"),
        Scenario("CheckAccessBatch of 100", "CheckAccessBatch", pb.CheckAccessBatchRequest(items=[
            pb.CheckAccessBatchItem(correlation_id=str(i), check=pb.CheckAccessRequest(
                tenant_id=f"t{i % args.tenants:05d}", subject="user:alice", action="read", resource=f"docs/{i}"))
            for i in range(100)]), decisions_per_call=100),
        Scenario("ConsumeQuota, memory", "ConsumeQuota",
                 pb.ConsumeQuotaRequest(tenant_id="t00001", items=[pb.QuotaItem(quota="api", amount=1)])),
        Scenario("ConsumeQuota, Redis", "ConsumeQuota",
                 pb.ConsumeQuotaRequest(tenant_id="t00001", items=[pb.QuotaItem(quota="api", amount=1)]),
                 server="redis"),
        Scenario("GetTenantKey", "GetTenantKey", pb.GetTenantKeyRequest(tenant_id="t00001", purpose="data"),
                 metadata=(STORAGE,)),
    ]
    if args.only:
        wanted = {name.strip() for name in args.only.split(";")}
        scenarios = [s for s in scenarios if s.name in wanted]
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        key_file = scratch / "master.key"
        generate_master_key_file(key_file)
        store = SQLiteStore(scratch / "registry.db")
        store.apply({f"t{i:05d}": tenant(f"t{i:05d}", jwk) for i in range(args.tenants)},
                    key_factory=tenant_key_factory(MasterKey.from_file(key_file)))
        store.close()
        serve = [sys.executable, "-m", "tenantgate", "serve", "--registry", f"sqlite://{scratch}/registry.db",
                 "--admin-listen", "", "--snapshot-file", "", "--trust-caller-metadata", "--master-key-file",
                 str(key_file), "--log-level", "WARNING"]
        ports = {"default": free_port(), "cold": free_port(), "redis": free_port(), "baseline": free_port()}
        extra = {"default": [], "cold": [], "redis": ["--quota-backend", args.redis, "--quota-prefix",
                                                      f"tgbench-{os.getpid()}:"]}
        env = {"cold": {"TENANTGATE_TOKEN_CACHE_SIZE": "0"}}
        responses: dict[str, str] = {}
        for kind in sorted({s.server for s in scenarios}):
            with process([*serve, "--listen", f"127.0.0.1:{ports[kind]}", *extra[kind]], env.get(kind)) as child:
                target = f"127.0.0.1:{ports[kind]}"
                wait_ready(target)
                for scenario in (s for s in scenarios if s.server == kind):
                    response = verify(target, scenario)
                    responses.setdefault(scenario.method, response.hex())
                    scenario.results["response_bytes"] = len(response)
                    body = scratch / f"{scenario.method}.bin"
                    body.write_bytes(grpc_frame(scenario.request.SerializeToString()))
                    scenario.results["tenantgate"] = h2load(target, scenario, body, args.seconds, args.connections,
                                                            args.streams, pid=child.pid)
                    half = scenario.results["tenantgate"]["rps"] / 2
                    scenario.results["tenantgate_at_half_load"] = h2load(target, scenario, body, args.seconds,
                                                                         args.connections, args.streams, rate=half)
        responses_file = scratch / "responses.json"
        responses_file.write_text(json.dumps(responses))
        baseline = [sys.executable, str(Path(__file__).with_name("baseline_server.py")), "--port",
                    str(ports["baseline"]), "--responses", str(responses_file)]
        with process(baseline) as child:
            target = f"127.0.0.1:{ports['baseline']}"
            wait_ready(target)
            for scenario in scenarios:
                body = scratch / f"{scenario.method}.bin"
                body.write_bytes(grpc_frame(scenario.request.SerializeToString()))
                scenario.results["baseline"] = h2load(target, scenario, body, args.seconds, args.connections,
                                                      args.streams, pid=child.pid)
    rows = []
    for scenario in scenarios:
        ours, base = scenario.results["tenantgate"], scenario.results["baseline"]
        rows.append({"scenario": scenario.name, "rps": ours["rps"], "baseline_rps": base["rps"],
                     "ratio_to_baseline": ours["rps"] / base["rps"] if base["rps"] else 0.0,
                     "decisions_per_s": ours["rps"] * scenario.decisions_per_call,
                     "p50_ms": ours["p50_ms"], "p99_ms": ours["p99_ms"], "p999_ms": ours["p999_ms"],
                     "p99_ms_at_half_load": scenario.results["tenantgate_at_half_load"]["p99_ms"],
                     "failed": ours["failed"], "baseline_p99_ms": base["p99_ms"],
                     "server_cpu_us_per_call": ours["server_cpu_us_per_call"],
                     "baseline_cpu_us_per_call": base["server_cpu_us_per_call"],
                     "cpu_ratio_baseline_over_ours": (base["server_cpu_us_per_call"] / ours["server_cpu_us_per_call"]
                                                      if ours["server_cpu_us_per_call"] else 0.0)})
    report = {"cores": os.cpu_count(), "python": platform.python_version(), "connections": args.connections,
              "streams_per_connection": args.streams, "seconds": args.seconds, "tenants": args.tenants,
              "note": "load generator and servers on the same machine", "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"Cores: {report['cores']} (h2load shares them); {args.connections} connections x {args.streams} "
             f"streams; {args.tenants} tenants; {args.seconds:g} s per run.", "",
             "| scenario | RPS | baseline RPS | ratio | server CPU µs/call (baseline) | CPU ratio | decisions/s "
             "| p50 ms | p99 ms | p99.9 ms | p99 ms at 50% load |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['scenario']} | {r['rps']:,.0f} | {r['baseline_rps']:,.0f} | {r['ratio_to_baseline']:.2f} | "
              f"{r['server_cpu_us_per_call']:.0f} ({r['baseline_cpu_us_per_call']:.0f}) | "
              f"{r['cpu_ratio_baseline_over_ours']:.2f} | {r['decisions_per_s']:,.0f} | {r['p50_ms']:.2f} | "
              f"{r['p99_ms']:.2f} | {r['p999_ms']:.2f} | {r['p99_ms_at_half_load']:.2f} |" for r in rows]
    (RESULTS / "latest.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(9, 4))
        axis.barh([r["scenario"] for r in rows], [r["ratio_to_baseline"] for r in rows])
        axis.axvline(1.0, color="grey", linestyle="--")
        axis.set_xlabel("RPS as a ratio to the bare grpc.aio baseline (same run)")
        figure.tight_layout()
        figure.savefig(RESULTS / "latest.png", dpi=100)
    except ImportError:
        pass
    return 0 if all(r["failed"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
