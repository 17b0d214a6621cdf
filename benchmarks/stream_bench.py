"""Would a bidirectional check stream be worth shipping? One client process, unary CheckAccess against a stream
of checks (each message a check with a correlation id, answered as decided), on the same server process.

The stream is a measurement, not part of the contract: the bench serves it itself, next to the real DecisionService
handlers (``handlers.service_handler``, as ``tenantgate serve`` does) over a snapshot of the grpc_bench registry,
and decides each streamed check with the same parsing, rulings and decision records as CheckAccessBatch. The
same-run baseline is the bare grpc.aio server's unary and stream rates (constant answers) with the same client.
The bar to ship the stream: at least twice the unary decisions per second of one client process.

The client is the SDK's transport, grpc.aio with uvloop: unary with ``--in-flight`` calls outstanding, the stream
with ``--in-flight`` checks outstanding (a window, as flow control would keep). Rounds alternate the order of
the variants; figures are medians. Each row also gives the server's and the client's CPU time per check.
Usage: python benchmarks/stream_bench.py [--seconds 4] [--rounds 5] [--in-flight 64]
Writes benchmarks/results/stream.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_bench import RESULTS, cpu_seconds, free_port, tenant, wait_ready

from tenantgate.counters.memory import MemoryCounterStore
from tenantgate.engines.access import AccessEngine, Undecided
from tenantgate.engines.keys import KeyEngine
from tenantgate.engines.quota import QuotaEngine
from tenantgate.engines.tokens import TokenVerifier
from tenantgate.registry.manifest import parse_document
from tenantgate.server import handlers, requests
from tenantgate.server.answers import Answered
from tenantgate.server.decider import Decider
from tenantgate.server.decision import DecisionServicer
from tenantgate.server.identity import CallerIdentity
from tenantgate.snapshot import SnapshotHolder, build_snapshot, build_tenant
from tenantgate.v1 import decision_pb2 as pb

SERVICE = "tenantgate.v1.DecisionService"
STREAM = f"/{SERVICE}/CheckAccessStream"
UNARY = f"/{SERVICE}/CheckAccess"
CHECK = pb.CheckAccessRequest(tenant_id="t00001", subject="user:alice", action="read", resource="docs/1")
# Any EC public key: no token is checked here, the tenants just need a valid JWKS.
JWK = {"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
       "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0", "kid": "bench", "alg": "ES256"}


def decider_of(tenants: int) -> Decider:
    holder = SnapshotHolder()
    views = [build_tenant(parse_document(tenant(f"t{i:05d}", JWK)).tenant, 1) for i in range(tenants)]
    holder.swap(build_snapshot(1, views, time.time()))
    holder.confirmed_at = time.time()
    tokens = TokenVerifier()
    return Decider(holder, tokens, AccessEngine(tokens), QuotaEngine(MemoryCounterStore()))


def stream_handler(decider: Decider) -> grpc.RpcMethodHandler:
    """Each streamed CheckAccessBatchItem answered with a CheckAccessBatchResult, as a batch of one."""

    async def stream(items: AsyncIterator[pb.CheckAccessBatchItem],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[pb.CheckAccessBatchResult]:
        async for item in items:
            snapshot = decider.snapshot()
            ((correlation_id, who, action, resource),), principals = requests.parse_checks((item,), snapshot.tenants)
            result = pb.CheckAccessBatchResult(correlation_id=correlation_id)
            if isinstance(who, int):
                principal = principals[who]
                decision = decider.ruling(snapshot, principal).decide(action, resource)
                if not isinstance(decision, Undecided):
                    result.decision.CopyFrom(Answered(decision, principal[0], snapshot.revision).answer)
                    result.decision.decision_id = decider.record(snapshot, principal[0], action, resource,
                                                                 principal[4], decision)
            yield result

    return grpc.stream_stream_rpc_method_handler(stream, request_deserializer=pb.CheckAccessBatchItem.FromString,
                                                 response_serializer=pb.CheckAccessBatchResult.SerializeToString)


def bare_handlers() -> dict[str, grpc.RpcMethodHandler]:
    answer = pb.CheckAccessResponse(allowed=True, reason=pb.DECISION_REASON_ALLOWED, rule="t00001/roles/viewer/allow/0",
                                    revision=1, decision_id="0123456789abcdef-1000")

    async def unary(request: pb.CheckAccessRequest, context: grpc.aio.ServicerContext) -> pb.CheckAccessResponse:
        return answer

    async def stream(items: AsyncIterator[pb.CheckAccessBatchItem],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[pb.CheckAccessBatchResult]:
        async for item in items:
            yield pb.CheckAccessBatchResult(correlation_id=item.correlation_id, decision=answer)

    return {"CheckAccess": grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=pb.CheckAccessRequest.FromString,
                response_serializer=pb.CheckAccessResponse.SerializeToString),
            "CheckAccessStream": grpc.stream_stream_rpc_method_handler(
                stream, request_deserializer=pb.CheckAccessBatchItem.FromString,
                response_serializer=pb.CheckAccessBatchResult.SerializeToString)}


async def serve(port: int, kind: str) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)], maximum_concurrent_rpcs=1000)
    if kind == "bare":
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, bare_handlers()),))
    else:
        decider = decider_of(10)
        servicer = DecisionServicer(decider, KeyEngine(), CallerIdentity(trust_metadata=False))
        # The stream first: the DecisionService handler does not know the method and would answer UNIMPLEMENTED.
        server.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler(SERVICE, {"CheckAccessStream": stream_handler(decider)}),
            handlers.service_handler(servicer, pb.DESCRIPTOR.services_by_name["DecisionService"],
                                     handlers.Admission(), serialized=DecisionServicer.SERIALIZED_ANSWERS)))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def unary_rate(target: str, seconds: float, in_flight: int) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(UNARY, request_serializer=pb.CheckAccessRequest.SerializeToString,
                                   response_deserializer=pb.CheckAccessResponse.FromString)
        if not (await call(CHECK, timeout=5)).allowed:
            raise RuntimeError("the check is not allowed")
        done, stop = 0, time.perf_counter() + seconds

        async def caller() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                await call(CHECK, timeout=10)
                done += 1

        await asyncio.gather(*(caller() for _ in range(in_flight)))
        return done


async def stream_rate(target: str, seconds: float, in_flight: int) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        method = channel.stream_stream(STREAM, request_serializer=pb.CheckAccessBatchItem.SerializeToString,
                                       response_deserializer=pb.CheckAccessBatchResult.FromString)
        call = method(timeout=seconds + 30)
        window = asyncio.Semaphore(in_flight)
        stop = time.perf_counter() + seconds

        async def send() -> None:
            number = 0
            while time.perf_counter() < stop:
                await window.acquire()
                await call.write(pb.CheckAccessBatchItem(correlation_id=str(number), check=CHECK))
                number += 1
            await call.done_writing()

        sender = asyncio.ensure_future(send())
        done = 0
        async for result in call:
            if not result.decision.allowed:
                raise RuntimeError(f"a streamed check was not allowed: {result}")
            done += 1
            window.release()
        await sender
        return done


def client(target: str, mode: str, seconds: float, in_flight: int) -> None:
    """One client process's run: prints JSON with its checks per second and CPU seconds per check."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    started = time.perf_counter()
    done = asyncio.run((unary_rate if mode == "unary" else stream_rate)(target, seconds, in_flight))
    elapsed = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"checks_per_s": done / elapsed, "checks": done,
                      "client_cpu_us_per_check": 1e6 * (usage.ru_utime + usage.ru_stime) / done}))


def measure(target: str, pid: int, mode: str, seconds: float, in_flight: int) -> dict[str, float]:
    before = cpu_seconds(pid)
    result = subprocess.run([sys.executable, __file__, "--client", target, mode, str(seconds), str(in_flight)],
                            capture_output=True, text=True, timeout=seconds + 120, check=True)
    run: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    run["server_cpu_us_per_check"] = 1e6 * (cpu_seconds(pid) - before) / run["checks"]
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "KIND"), help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=4, metavar=("TARGET", "MODE", "SECONDS", "IN_FLIGHT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        asyncio.run(serve(int(args.serve[0]), args.serve[1]))
        return 0
    if args.client:
        client(args.client[0], args.client[1], float(args.client[2]), int(args.client[3]))
        return 0
    servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        for kind in ("tenantgate", "bare"):
            port = free_port()
            child = subprocess.Popen([sys.executable, __file__, "--serve", str(port), kind],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            servers[kind] = (child, f"127.0.0.1:{port}")
            wait_ready(f"127.0.0.1:{port}")
        runs: dict[str, list[dict[str, float]]] = {}
        variants = [(kind, mode) for kind in ("tenantgate", "bare") for mode in ("unary", "stream")]
        for round_number in range(args.rounds):
            for kind, mode in variants if round_number % 2 == 0 else variants[::-1]:
                child, target = servers[kind]
                runs.setdefault(f"{kind} {mode}", []).append(
                    measure(target, child.pid, mode, args.seconds, args.in_flight))
    finally:
        for child, _ in servers.values():
            child.terminate()
            child.wait(30)

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[name])

    rows: list[dict[str, Any]] = []
    for kind in ("tenantgate", "bare"):
        ratios = [s["checks_per_s"] / u["checks_per_s"] for s, u in zip(runs[f"{kind} stream"], runs[f"{kind} unary"],
                                                                          strict=True)]
        rows.append({"server": kind, "unary_checks_per_s": median(f"{kind} unary", "checks_per_s"),
                     "stream_checks_per_s": median(f"{kind} stream", "checks_per_s"),
                     "stream_over_unary": statistics.median(ratios), "stream_over_unary_range": [min(ratios),
                                                                                                  max(ratios)],
                     "server_cpu_us_per_check": {mode: median(f"{kind} {mode}", "server_cpu_us_per_check")
                                                 for mode in ("unary", "stream")},
                     "client_cpu_us_per_check": {mode: median(f"{kind} {mode}", "client_cpu_us_per_check")
                                                 for mode in ("unary", "stream")}})
    ours = rows[0]
    report = {"cores": os.cpu_count(), "python": platform.python_version(), "seconds": args.seconds,
              "rounds": args.rounds, "in_flight": args.in_flight, "bar": 2.0,
              "ships": ours["stream_over_unary"] >= 2.0,
              "note": "one client process (grpc.aio, uvloop) and the server on the same machine; medians over rounds "
                      "that alternate the variants; 'bare' is a grpc.aio server answering constants, the baseline",
              "rows": rows, "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "stream.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"cores: {report['cores']}; one client process, {args.in_flight} checks in flight; medians of "
          f"{args.rounds} rounds of {args.seconds:g} s")
    for row in rows:
        low, high = row["stream_over_unary_range"]
        server_cpu, client_cpu = row["server_cpu_us_per_check"], row["client_cpu_us_per_check"]
        print(f"{row['server']:10s} unary {row['unary_checks_per_s']:7,.0f}/s  stream "
              f"{row['stream_checks_per_s']:7,.0f}/s  stream/unary {row['stream_over_unary']:.2f} ({low:.2f}-"
              f"{high:.2f})  server CPU µs/check unary {server_cpu['unary']:.0f} stream {server_cpu['stream']:.0f}"
              f"  client CPU µs/check unary {client_cpu['unary']:.0f} stream {client_cpu['stream']:.0f}")
    print("ships" if report["ships"] else "does not reach 2x: not shipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
