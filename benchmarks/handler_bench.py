"""What a call costs inside the server process, before and after gRPC: the DecisionService handlers as
``tenantgate serve`` builds them (``handlers.service_handler``), called in process with each request's bytes
decoded afresh, and the parts of CheckAccess and ConsumeQuota measured apart. Also how much more a consume's
Python costs when it runs between two socket calls than when it runs alone (needs Redis; skipped without one).

Figures are microseconds per call (best of three runs) on uvloop, as the server runs; the README reads the
gRPC load results (grpc_bench.py) with them. Writes benchmarks/results/handler.json.
Usage: python benchmarks/handler_bench.py
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop
from measure import async_rate, rate
from stream_bench import decider_of

from tenantgate.counters.redis import RedisCounterStore
from tenantgate.counters.scripts import send_calls
from tenantgate.engines.keys import KeyEngine
from tenantgate.engines.quota import CounterOp, QuotaRequestItem
from tenantgate.server import handlers, requests
from tenantgate.server.decision import DecisionServicer
from tenantgate.server.identity import CallerIdentity
from tenantgate.v1 import decision_pb2 as pb
from tenantgate.wiretime import set_seconds

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SERVICE = "/tenantgate.v1.DecisionService/"


class _Details:
    def __init__(self, method: str) -> None:
        self.method = SERVICE + method
        self.invocation_metadata = ()


class _Context:
    """What the handlers read of a call's context on these paths."""

    def time_remaining(self) -> float:
        return 5.0

    def invocation_metadata(self) -> tuple[()]:
        return ()


def _us(loop: asyncio.AbstractEventLoop, operation: Callable[[], Awaitable[object]]) -> float:
    return 1e6 / async_rate(loop, operation, 1.0, 500)


def _us_sync(operation: Callable[[], object]) -> float:
    return 1e6 / rate(operation, 1.0, 2000)


def handler_rows(loop: asyncio.AbstractEventLoop) -> dict[str, float]:
    decider = decider_of(10)
    servicer = DecisionServicer(decider, KeyEngine(), CallerIdentity(trust_metadata=False))
    served = handlers.service_handler(servicer, pb.DESCRIPTOR.services_by_name["DecisionService"],
                                      handlers.Admission(), serialized=DecisionServicer.SERIALIZED_ANSWERS)
    context = _Context()
    snapshot = decider.snapshot()
    tenant = next(iter(snapshot.tenants))
    check = pb.CheckAccessRequest(tenant_id=tenant, subject="user:alice", action="read", resource="docs/1")
    consume = pb.ConsumeQuotaRequest(tenant_id=tenant, items=[pb.QuotaItem(quota="api", amount=1)])
    figures: dict[str, float] = {}
    for method, request in (("CheckAccess", check), ("ConsumeQuota", consume)):
        handler = served.service(_Details(method))  # type: ignore[arg-type]
        assert handler is not None
        data = request.SerializeToString()
        decode, answer, encode = handler.request_deserializer, handler.unary_unary, handler.response_serializer

        async def call(decode: Any = decode, answer: Any = answer, encode: Any = encode, data: bytes = data) -> Any:
            response = await answer(decode(data), context)
            return response if encode is None else encode(response)

        message_class = type(request)
        decoded = message_class.FromString(data)
        unwrapped = getattr(DecisionServicer, method).__wrapped__  # without the error mapping and its metrics
        figures[f"{method}: served, request decoded afresh"] = _us(loop, call)
        figures[f"{method}: handler body alone"] = _us(loop, lambda u=unwrapped, r=decoded: u(servicer, r, context))
        figures[f"{method}: request decoded"] = _us_sync(lambda c=message_class, d=data: c.FromString(d))

    principal, action, resource = requests.read_check(check, snapshot.tenants)
    ruling = decider.ruling(snapshot, principal)
    decision = ruling.decide(action, resource)
    figures["CheckAccess: fields read and checked"] = _us_sync(lambda: requests.read_check(check, snapshot.tenants))
    figures["CheckAccess: ruling found"] = _us_sync(lambda: decider.ruling(snapshot, principal))
    figures["CheckAccess: decided"] = _us_sync(lambda: ruling.decide(action, resource))
    figures["CheckAccess: recorded"] = _us_sync(
        lambda: decider.record(snapshot, principal[0], action, resource, principal[4], decision))
    figures["CheckAccess: answer encoded"] = _us_sync(
        lambda: servicer._encoded.encode(snapshot.revision, decision, "0123456789abcdef-1"))
    items = [QuotaRequestItem("api", 1)]
    figures["ConsumeQuota: items read and checked"] = _us_sync(
        lambda: (requests.tenant_id(consume.tenant_id, known_tenants=snapshot.tenants),
                 requests.quota_items(consume)))
    figures["ConsumeQuota: consumed and metered (decider)"] = _us(
        loop, lambda: decider.consume(snapshot, tenant, items))
    outcome = loop.run_until_complete(decider.consume(snapshot, tenant, items))

    def answer() -> bytes:  # as DecisionServicer.ConsumeQuota builds it
        response = pb.ConsumeQuotaResponse(allowed=outcome.allowed, revision=outcome.revision)
        for item in outcome.items:
            result = response.results.add(quota=item.quota, allowed=item.allowed, limit=item.limit,
                                          remaining=item.remaining)
            if item.reset_after:
                set_seconds(result.reset_after, item.reset_after)
            if item.retry_after:
                set_seconds(result.retry_after, item.retry_after)
        return response.SerializeToString()

    figures["ConsumeQuota: answer built and serialized"] = _us_sync(answer)
    return figures


def _cpu_us(loop: asyncio.AbstractEventLoop, operation: Callable[[], Awaitable[object]], calls: int = 20000) -> float:
    async def run() -> None:
        for _ in range(calls):
            await operation()

    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        loop.run_until_complete(run())
        best = min(best, (time.process_time() - started) / calls * 1e6)
    return best


def between_socket_calls(loop: asyncio.AbstractEventLoop, url: str) -> dict[str, float] | None:
    """CPU per consume of the Redis store one at a time, of the same store's Python alone (a transport that
    answers at once with the reply Redis gave), and of the bare round trip with the same command: how much the
    store's Python costs once socket calls surround it, against alone."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.RedisError as exc:
        print(f"(skipping the Redis rows: {exc})")
        client.close()
        return None
    decider = decider_of(1)
    spec = decider.snapshot().tenants["t00000"].spec.quotas["api"]
    ops = [CounterOp(spec, 1)]
    store = RedisCounterStore(url, prefix=f"tghandler-{os.getpid()}:")
    sent: list[Any] = []
    evaluate = store._transport.evaluate

    async def recording(lane: str, calls: list[Any]) -> list[Any]:
        sent.extend(calls)
        return await evaluate(lane, calls)

    store._transport.evaluate = recording  # type: ignore[method-assign]
    loop.run_until_complete(store.consume("t00000", ops, 0.0))
    store._transport.evaluate = evaluate  # type: ignore[method-assign]
    connection = store._transport._connection  # type: ignore[attr-defined]
    reply = loop.run_until_complete(send_calls(connection, sent[-1:]))

    class Answering:
        round_trips = 0
        healthy = True

        def lane_of(self, key: str) -> str:
            return ""

        async def evaluate(self, lane: str, calls: list[Any]) -> list[Any]:
            return reply

    alone = RedisCounterStore(url, prefix="unused:")
    alone._transport = Answering()  # type: ignore[assignment]
    async def timeout_armed_and_cancelled() -> None:  # what each round trip paid before counters.deadlines
        async with asyncio.timeout(1.0):
            pass

    figures = {"store, one at a time": _cpu_us(loop, lambda: store.consume("t00000", ops, 0.0)),
               "asyncio.timeout armed and cancelled": _cpu_us(loop, timeout_armed_and_cancelled),
               "store, transport answering at once": _cpu_us(loop, lambda: alone.consume("t00000", ops, 0.0)),
               "bare round trip, same command": _cpu_us(loop, lambda: send_calls(connection, sent[-1:]))}
    figures["store's Python between socket calls over alone"] = (
        (figures["store, one at a time"] - figures["bare round trip, same command"])
        / figures["store, transport answering at once"])
    found = list(client.scan_iter(match=f"tghandler-{os.getpid()}:*"))
    if found:
        client.delete(*found)
    client.close()
    loop.run_until_complete(store.close())
    return figures


def main() -> None:
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    report: dict[str, Any] = {"cores": os.cpu_count(), "python": platform.python_version(),
                              "microseconds_per_call": handler_rows(loop)}
    redis_cpu = between_socket_calls(loop, os.environ.get("TENANTGATE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    if redis_cpu is not None:
        report["redis_consume_cpu_microseconds"] = redis_cpu
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "handler.json"), "w") as out:
        out.write(json.dumps(report, indent=2) + "\n")
    print(f"cores: {report['cores']}")
    for name, value in {**report["microseconds_per_call"], **report.get("redis_consume_cpu_microseconds", {})}.items():
        print(f"{name:<55} {value:8.2f}")
    loop.close()


if __name__ == "__main__":
    main()
