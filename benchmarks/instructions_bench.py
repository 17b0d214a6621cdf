"""User-space instructions per call, tenantgate against the bare baseline server, counted by callgrind.

Throughput on a shared machine moves by half between runs; instruction counts do not. Each server runs
under valgrind's callgrind with instrumentation off until it is warm; then 1,000 calls from h2load are
counted. The kernel's share of a call (socket work, about half its CPU on a 2-core VM) is not counted and is
the same for both servers. The registry is polled every 30 s so that background work stays out of the count.
Needs valgrind and h2load (Debian packages valgrind, nghttp2-client). Not part of `make bench` (minutes).
The Envoy adapters (ext_authz Check, rate limit ShouldRateLimit) are compared with their DecisionService twins
(CheckAccess with the same token, ConsumeQuota of the same quota) on the same tenantgate: what the
translation costs beyond the decision.
Usage: python benchmarks/instructions_bench.py [--calls 1000]
Writes benchmarks/results/instructions.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from envoy.service.auth.v3 import external_auth_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from grpc_bench import RESULTS, STORAGE, Scenario, free_port, grpc_frame, verify, wait_ready, write_registry

from tenantgate.v1 import decision_pb2 as pb


def counted_instructions(command: list[str], port: int, scenario: Scenario, body: Path, calls: int,
                         scratch: Path) -> float:
    """Instructions per call of the server that ``command`` starts, over ``calls`` calls."""
    out = scratch / f"callgrind.{port}"
    server = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                               f"--callgrind-out-file={out}", *command],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    load = ["h2load", "-c4", "-m16", f"--data={body}", "-H", "content-type: application/grpc", "-H",
            "te: trailers", *(arg for name, value in scenario.metadata for arg in ("-H", f"{name}: {value}")),
            f"http://127.0.0.1:{port}{scenario.service}{scenario.method}"]
    try:
        wait_ready(f"127.0.0.1:{port}")
        subprocess.run([*load[:1], "-n200", *load[1:]], capture_output=True, timeout=300, check=True)
        subprocess.run(["callgrind_control", "--instr=on", str(server.pid)], capture_output=True, check=True)
        subprocess.run([*load[:1], "-n100", *load[1:]], capture_output=True, timeout=300, check=True)
        subprocess.run(["callgrind_control", "--zero", str(server.pid)], capture_output=True, check=True)
        subprocess.run([*load[:1], f"-n{calls}", *load[1:]], capture_output=True, timeout=600, check=True)
        subprocess.run(["callgrind_control", "--dump", str(server.pid)], capture_output=True, check=True)
        time.sleep(1)
    finally:
        server.terminate()
        server.wait(60)
    dumps = [path for path in glob.glob(f"{out}*") if path.endswith(".1")]
    if not dumps:
        raise RuntimeError(f"callgrind wrote no dump for port {port}")
    for line in Path(dumps[0]).read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1]) / calls
    raise RuntimeError(f"no totals in {dumps[0]}")


def envoy_check(token: str) -> external_auth_pb2.CheckRequest:
    """What Envoy sends with the shipped bootstrap (allowed_headers: authorization, x-tenant-id and
    x-tenant-environment; method and path in their own fields)."""
    request = external_auth_pb2.CheckRequest()
    attributes = request.attributes
    attributes.source.address.socket_address.address = "127.0.0.1"
    attributes.source.address.socket_address.port_value = 40000
    attributes.destination.address.socket_address.address = "127.0.0.1"
    attributes.destination.address.socket_address.port_value = 8080
    http = attributes.request.http
    http.id, http.method, http.path, http.host, http.scheme, http.protocol = (
        "9e5f1c6a-8d1e-4f3b-9a57-3f0c2b6d7e10", "GET", "/docs/1", "api.example", "http", "HTTP/2")
    http.headers.update({"authorization": f"Bearer {token}", "x-tenant-id": "t00001"})
    attributes.request.time.GetCurrentTime()
    return request


def envoy_limit() -> rls_pb2.RateLimitRequest:
    request = rls_pb2.RateLimitRequest(domain="tenantgate", hits_addend=1)
    descriptor = request.descriptors.add()
    descriptor.entries.add(key="tenant_id", value="t00001")
    descriptor.entries.add(key="quota", value="api")
    return request


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    missing = [tool for tool in ("valgrind", "callgrind_control", "h2load") if shutil.which(tool) is None]
    if missing:
        print(f"missing: {', '.join(missing)} (apt-get install -y valgrind nghttp2-client)", file=sys.stderr)
        return 2
    idp = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(idp.public_key()))
    jwk.update({"kid": "bench", "alg": "ES256"})
    token = jwt.encode({"iss": "https://idp.bench", "aud": "tenantgate", "sub": "alice", "tid": "t00001",
                        "exp": int(time.time()) + 3600}, idp, algorithm="ES256", headers={"kid": "bench"})
    scenarios = [
        Scenario("CheckAccess by subject", "CheckAccess",
                 pb.CheckAccessRequest(tenant_id="t00001", subject="user:alice", action="read", resource="docs/1")),
        Scenario("CheckAccessBatch of 100", "CheckAccessBatch", pb.CheckAccessBatchRequest(items=[
            pb.CheckAccessBatchItem(correlation_id=str(i), check=pb.CheckAccessRequest(
                tenant_id=f"t{i % 10:05d}", subject="user:alice", action="read", resource=f"docs/{i}"))
            for i in range(100)]), decisions_per_call=100),
        Scenario("ConsumeQuota, memory", "ConsumeQuota",
                 pb.ConsumeQuotaRequest(tenant_id="t00001", items=[pb.QuotaItem(quota="api", amount=1)])),
        Scenario("GetTenantKey", "GetTenantKey", pb.GetTenantKeyRequest(tenant_id="t00001", purpose="data"),
                 metadata=(STORAGE,)),
    ]
    twins = [  # (the Envoy call, its DecisionService twin)
        (Scenario("ext_authz Check (JWT)", "Check", envoy_check(token),
                  service="/envoy.service.auth.v3.Authorization/"),
         Scenario("CheckAccess by JWT", "CheckAccess", pb.CheckAccessRequest(tenant_id="t00001", token=token,
                                                                             action="read", resource="docs/1"))),
        (Scenario("ShouldRateLimit", "ShouldRateLimit", envoy_limit(),
                  service="/envoy.service.ratelimit.v3.RateLimitService/"),
         next(s for s in scenarios if s.method == "ConsumeQuota")),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        key_file = write_registry(scratch, 10, jwk)
        serve = [sys.executable, "-m", "tenantgate", "serve", "--registry", f"sqlite://{scratch}/registry.db",
                 "--admin-listen", "", "--snapshot-file", "", "--trust-caller-metadata", "--master-key-file",
                 str(key_file), "--log-level", "WARNING", "--sync-interval", "30"]
        responses: dict[str, str] = {}
        port = free_port()
        with subprocess.Popen([*serve, "--listen", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) as probe:
            wait_ready(f"127.0.0.1:{port}")
            for scenario in scenarios:
                responses[scenario.method] = verify(f"127.0.0.1:{port}", scenario).hex()
            for envoy, _ in twins:
                verify(f"127.0.0.1:{port}", envoy)
            probe.terminate()
        responses_file = scratch / "responses.json"
        responses_file.write_text(json.dumps(responses))
        for scenario in scenarios:
            body = scratch / f"{scenario.method}.bin"
            body.write_bytes(grpc_frame(scenario.request.SerializeToString()))
            port = free_port()
            ours = counted_instructions([*serve, "--listen", f"127.0.0.1:{port}"], port, scenario, body,
                                        args.calls, scratch)
            port = free_port()
            base = counted_instructions([sys.executable, str(Path(__file__).with_name("baseline_server.py")),
                                         "--port", str(port), "--responses", str(responses_file)],
                                        port, scenario, body, args.calls, scratch)
            rows.append({"scenario": scenario.name, "instructions_per_call": round(ours),
                         "baseline_instructions_per_call": round(base), "ratio_baseline_over_ours": base / ours,
                         "instructions_per_decision": round(ours / scenario.decisions_per_call)})
            print(f"{scenario.name:24s} {ours / 1000:6.0f}k instructions per call, baseline {base / 1000:4.0f}k, "
                  f"ratio {base / ours:.2f}")
        adapters = []
        for envoy, twin in twins:
            counts = []
            for scenario in (envoy, twin):
                body = scratch / f"{scenario.method}.bin"
                body.write_bytes(grpc_frame(scenario.request.SerializeToString()))
                port = free_port()
                counts.append(counted_instructions([*serve, "--listen", f"127.0.0.1:{port}"], port, scenario, body,
                                                   args.calls, scratch))
            adapters.append({"scenario": envoy.name, "instructions_per_call": round(counts[0]), "twin": twin.name,
                             "twin_instructions_per_call": round(counts[1]),
                             "ratio_twin_over_adapter": counts[1] / counts[0]})
            print(f"{envoy.name:24s} {counts[0] / 1000:6.0f}k instructions per call, {twin.name} "
                  f"{counts[1] / 1000:4.0f}k, ratio {counts[1] / counts[0]:.2f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "instructions.json").write_text(json.dumps(
        {"cores": os.cpu_count(), "calls": args.calls, "rows": rows, "envoy_adapters": adapters}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
