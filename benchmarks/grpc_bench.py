"""Load benchmarks over gRPC with h2load, each scenario against tenantgate and against the bare baseline
server (benchmarks/baseline_server.py) in the same run; figures are ratios to the baseline.

Before a scenario is measured, its exact request is sent with a real gRPC client and must answer OK:
h2load counts any HTTP 200 as success, even when grpc-status says otherwise.
Needs h2load (Debian package nghttp2-client). Loopback only; every run is bounded in time.
Usage: python benchmarks/grpc_bench.py [--seconds 5] [--rounds 3] [--connections 4] [--streams 16]
       [--tenants 10] [--only 'NAME;NAME']
Writes benchmarks/results/latest.json and latest.md (and latest.png when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
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
from tenantgate.registry.manifest import manifests_from_documents
from tenantgate.registry.sqlite import SQLiteStore
from tenantgate.v1 import decision_pb2 as pb

RESULTS = Path(__file__).resolve().parent / "results"
SERVICE = "/tenantgate.v1.DecisionService/"
STORAGE = ("x-tenantgate-caller", "service:storage")
HALF_LOAD_CONNECTIONS = 2


@dataclass
class Scenario:
    name: str
    method: str
    request: Any
    server: str = "default"  # which tenantgate server answers it
    metadata: tuple[tuple[str, str], ...] = ()
    decisions_per_call: int = 1
    results: dict[str, Any] = field(default_factory=dict)
    service: str = SERVICE  # the method's path prefix


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


def body_file(scratch: Path, scenario: Scenario) -> Path:
    return scratch / (re.sub(r"\W+", "-", scenario.name) + ".bin")


def write_registry(scratch: Path, tenants: int, jwk: dict[str, Any]) -> Path:
    """``scratch``/registry.db with tenants t00000, t00001, ... and their data keys; returns the master
    key file those keys are wrapped under."""
    key_file = scratch / "master.key"
    generate_master_key_file(key_file)
    store = SQLiteStore(scratch / "registry.db")
    store.apply(manifests_from_documents(tenant(f"t{i:05d}", jwk) for i in range(tenants)),
                key_factory=tenant_key_factory(MasterKey.from_file(key_file)))
    store.close()
    return key_file


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
    result = subprocess.run([*command, f"http://{target}{scenario.service}{scenario.method}"], capture_output=True,
                            text=True, timeout=seconds + 60)
    cpu_used = cpu_seconds(pid) - cpu_before if pid else 0.0
    output = result.stdout
    finished = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", output)
    if finished is None:
        raise RuntimeError(f"h2load failed: {result.stderr.strip() or output[-500:]}")
    rps = float(finished.group(1))
    done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", output)
    durations = logged_durations(log)
    answered = int(done.group(3)) if done else 0
    return {"rps": rps, "failed": int(done.group(4)) if done else -1, "p50_ms": percentile(durations, 0.50),
            "server_cpu_us_per_call": 1e6 * cpu_used / answered if answered and pid else 0.0,
            "p99_ms": percentile(durations, 0.99), "p999_ms": percentile(durations, 0.999)}


def logged_durations(log: Path) -> list[int]:
    """Request durations (µs) from an h2load --log-file, sorted; the file is removed."""
    durations = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines() if line.count("\t") >= 2)
    log.unlink()
    return durations


def percentile(durations: list[int], q: float) -> float:
    """The q-th quantile of sorted durations (µs), in milliseconds."""
    return durations[min(len(durations) - 1, int(q * len(durations)))] / 1000 if durations else 0.0


def verify(target: str, scenario: Scenario) -> bytes:
    """The scenario's request through a real gRPC client: it must answer OK. Returns the response bytes."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(f"{scenario.service}{scenario.method}",
                                   request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=lambda b: b)
        return bytes(call(scenario.request, timeout=5, metadata=scenario.metadata))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="runs per server and scenario, alternating")
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
    with tempfile.TemporaryDirectory() as scratch_name, contextlib.ExitStack() as running:
        scratch = Path(scratch_name)
        key_file = write_registry(scratch, args.tenants, jwk)
        serve = [sys.executable, "-m", "tenantgate", "serve", "--registry", f"sqlite://{scratch}/registry.db",
                 "--admin-listen", "", "--snapshot-file", "", "--trust-caller-metadata", "--master-key-file",
                 str(key_file), "--log-level", "WARNING"]
        ports = {"default": free_port(), "cold": free_port(), "redis": free_port(), "baseline": free_port()}
        extra = {"default": [], "cold": [], "redis": ["--quota-backend", args.redis, "--quota-prefix",
                                                      f"tgbench-{os.getpid()}:"]}
        env = {"cold": {"TENANTGATE_TOKEN_CACHE_SIZE": "0"}}
        pids: dict[str, int] = {}
        responses: dict[str, str] = {}
        for kind in sorted({s.server for s in scenarios}):
            child = running.enter_context(process([*serve, "--listen", f"127.0.0.1:{ports[kind]}", *extra[kind]],
                                                  env.get(kind)))
            pids[kind] = child.pid
            wait_ready(f"127.0.0.1:{ports[kind]}")
        for scenario in scenarios:
            response = verify(f"127.0.0.1:{ports[scenario.server]}", scenario)
            responses.setdefault(scenario.method, response.hex())
            scenario.results["response_bytes"] = len(response)
            body = body_file(scratch, scenario)
            body.write_bytes(grpc_frame(scenario.request.SerializeToString()))
        responses_file = scratch / "responses.json"
        responses_file.write_text(json.dumps(responses))
        baseline = running.enter_context(process([sys.executable, str(Path(__file__).with_name("baseline_server.py")),
                                                  "--port", str(ports["baseline"]), "--responses",
                                                  str(responses_file)]))
        pids["baseline"] = baseline.pid
        wait_ready(f"127.0.0.1:{ports['baseline']}")
        for round_number in range(args.rounds):
            for scenario in scenarios:
                body = body_file(scratch, scenario)
                # Alternate which server goes first, so that drift on a shared machine favours neither.
                order = ["tenantgate", "baseline"] if round_number % 2 == 0 else ["baseline", "tenantgate"]
                for server in order:
                    kind = scenario.server if server == "tenantgate" else "baseline"
                    scenario.results.setdefault(server, []).append(h2load(
                        f"127.0.0.1:{ports[kind]}", scenario, body, args.seconds, args.connections, args.streams,
                        pid=pids[kind]))
        # Latency at half load: both servers at the same rate, half of what tenantgate sustained. Paced
        # over 2 connections of 1 stream each: h2load's --rps sends each tick's requests at once on every
        # stream and connection, so with more of them the figure measures its bursts, not the server.
        for scenario in scenarios:
            body = body_file(scratch, scenario)
            half = statistics.median(run["rps"] for run in scenario.results["tenantgate"]) / 2
            for server in ("tenantgate", "baseline"):
                kind = scenario.server if server == "tenantgate" else "baseline"
                scenario.results[f"{server}_at_half_load"] = h2load(
                    f"127.0.0.1:{ports[kind]}", scenario, body, args.seconds, HALF_LOAD_CONNECTIONS, 1, rate=half)
    rows = []
    for scenario in scenarios:
        ours, base = scenario.results["tenantgate"], scenario.results["baseline"]
        ratios = [o["rps"] / b["rps"] for o, b in zip(ours, base, strict=True) if b["rps"]]

        def median(runs: list[dict[str, float]], key: str) -> float:
            return statistics.median(run[key] for run in runs)

        cpu, base_cpu = median(ours, "server_cpu_us_per_call"), median(base, "server_cpu_us_per_call")
        rows.append({"scenario": scenario.name, "rps": median(ours, "rps"), "baseline_rps": median(base, "rps"),
                     "ratio_to_baseline": statistics.median(ratios) if ratios else 0.0,
                     "ratio_range": [min(ratios), max(ratios)] if ratios else [0.0, 0.0],
                     "decisions_per_s": median(ours, "rps") * scenario.decisions_per_call,
                     # Decisions made in the time the baseline answers one call, a round at a time: how far a call
                     # carries past the per-call ceiling, steadier than decisions/s as the machine's speed moves.
                     "decisions_per_baseline_call": statistics.median(
                         o["rps"] * scenario.decisions_per_call / b["rps"] for o, b in zip(ours, base, strict=True)
                         if b["rps"]) if ratios else 0.0,
                     "p50_ms": median(ours, "p50_ms"), "p99_ms": median(ours, "p99_ms"),
                     "p999_ms": median(ours, "p999_ms"), "baseline_p99_ms": median(base, "p99_ms"),
                     "half_load_rps": scenario.results["tenantgate_at_half_load"]["rps"],
                     "p99_ms_at_half_load": scenario.results["tenantgate_at_half_load"]["p99_ms"],
                     "baseline_p99_ms_at_half_load": scenario.results["baseline_at_half_load"]["p99_ms"],
                     "failed": sum(run["failed"] for run in ours),
                     "server_cpu_us_per_call": cpu, "baseline_cpu_us_per_call": base_cpu,
                     "cpu_ratio_baseline_over_ours": base_cpu / cpu if cpu else 0.0})
    report = {"cores": os.cpu_count(), "python": platform.python_version(), "connections": args.connections,
              "streams_per_connection": args.streams, "seconds": args.seconds, "rounds": args.rounds,
              "tenants": args.tenants, "note": "load generator and servers on the same machine; figures are "
              "medians over rounds that alternate tenantgate and the baseline", "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"Cores: {report['cores']} (h2load shares them); {args.connections} connections x {args.streams} "
             f"streams; {args.tenants} tenants; {args.rounds} rounds of {args.seconds:g} s per server, "
             "alternating tenantgate and the baseline; medians.", "",
             "| scenario | RPS | baseline RPS | ratio (range) | server CPU µs/call (baseline) | CPU ratio "
             "| decisions/s | decisions per baseline call | p50 ms | p99 ms | p99.9 ms "
             "| p99 ms at 50% load, paced (baseline at the same rate) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['scenario']} | {r['rps']:,.0f} | {r['baseline_rps']:,.0f} | {r['ratio_to_baseline']:.2f} "
              f"({r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f}) | "
              f"{r['server_cpu_us_per_call']:.0f} ({r['baseline_cpu_us_per_call']:.0f}) | "
              f"{r['cpu_ratio_baseline_over_ours']:.2f} | {r['decisions_per_s']:,.0f} | "
              f"{r['decisions_per_baseline_call']:.1f} | {r['p50_ms']:.2f} | "
              f"{r['p99_ms']:.2f} | {r['p999_ms']:.2f} | {r['p99_ms_at_half_load']:.2f} "
              f"({r['baseline_p99_ms_at_half_load']:.2f}) at {r['half_load_rps']:,.0f}/s |" for r in rows]
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
