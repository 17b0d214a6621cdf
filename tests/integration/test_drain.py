"""Draining on SIGTERM as `tenantgate serve` does it under load: NOT_SERVING while calls are still answered
for the drain delay, then new calls refused with UNAVAILABLE while the calls being handled finish, then exit 0.
No call the server received is answered CANCELLED, with one process or with workers."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tenantgate.registry.sqlite import SQLiteStore
from tenantgate.server.app import RESPONSE_LINGER
from tenantgate.server.handlers import SHUTTING_DOWN
from tenantgate.v1 import decision_pb2 as pb
from tenantgate.v1 import decision_pb2_grpc
from tests.conftest import TENANTGATE, manifests, tenant_doc
from tests.integration.test_workers import free_port, wait_serving

ACCESS = {"roles": {"r": {"allow": ["read:*"]}}, "bindings": [{"subject": "user:alice", "roles": ["r"]}]}
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
ALLOWED = pb.CheckAccessRequest(tenant_id="acme", subject="user:alice", action="read", resource="x")
DRAIN_DELAY = 1.0
LONG_DRAIN_DELAY = 60.0
# Each channel its own connection (channels to one target otherwise share one), so that with workers the
# kernel spreads them over the processes.
CHANNELS = 8
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@dataclass
class Serving:
    process: subprocess.Popen[bytes]
    target: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    async def exit_code(self, timeout: float = 30) -> int:
        return await asyncio.to_thread(self.process.wait, timeout)


@pytest.fixture
def serve(tmp_path: Path, registry_path: Path, sqlite_store: SQLiteStore,
          request: pytest.FixtureRequest) -> Iterator[Callable[..., Serving]]:
    """Starts `tenantgate serve` on a SQLite registry holding acme, with ``workers`` processes (more than one:
    on the test Redis) and the test's short drain delay; kills what is left of it at the end."""
    sqlite_store.apply(manifests({"acme": tenant_doc("acme", access=ACCESS)}))
    started: list[Serving] = []

    def start(workers: int, drain_delay: float = DRAIN_DELAY) -> Serving:
        target = f"127.0.0.1:{free_port()}"
        more = []
        if workers > 1:
            more = ["--workers", str(workers), "--quota-backend", request.getfixturevalue("redis_url"),
                    "--quota-prefix", request.getfixturevalue("redis_prefix")]
        log = tmp_path / f"serve-{len(started)}.log"
        environment = {name: value for name, value in os.environ.items() if not name.startswith("TENANTGATE_")}
        with log.open("wb") as out:
            process = subprocess.Popen(
                [TENANTGATE, "serve", "--registry", f"sqlite://{registry_path}", "--listen", target,
                 "--admin-listen", "", "--snapshot-file", "", "--sync-interval", "0.05",
                 "--drain-delay", str(drain_delay), "--grace-period", "30", *more],
                stdout=out, stderr=subprocess.STDOUT, env=environment, start_new_session=True)
        started.append(Serving(process, target, log))
        wait_serving(target)
        return started[-1]

    yield start
    for server in started:
        if server.process.poll() is None:
            os.killpg(server.process.pid, signal.SIGKILL)  # its own session: the workers go with it
            server.process.wait(10)


async def until(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 10) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not await condition():
                await asyncio.sleep(0.005)
    except TimeoutError:
        pytest.fail(f"not within {timeout} s: {what}")


@contextlib.asynccontextmanager
async def connected(target: str) -> AsyncIterator[list[decision_pb2_grpc.DecisionServiceStub]]:
    """One stub per connection, each connection answering (with workers: its worker has loaded the registry)."""
    channels = [grpc.aio.insecure_channel(target, options=OWN_CONNECTION) for _ in range(CHANNELS)]
    stubs = [decision_pb2_grpc.DecisionServiceStub(channel) for channel in channels]

    async def answers(stub: decision_pb2_grpc.DecisionServiceStub) -> bool:
        with contextlib.suppress(grpc.aio.AioRpcError):
            return bool((await stub.CheckAccess(ALLOWED, timeout=2)).allowed)
        return False

    try:
        for stub in stubs:
            await until(lambda stub=stub: answers(stub), "every connection answers")
        yield stubs
    finally:
        for channel in channels:
            await channel.close()


async def health_status(health: health_pb2_grpc.HealthStub, service: str = "") -> int:
    return int((await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)).status)


async def not_serving(health: health_pb2_grpc.HealthStub) -> bool:
    return await health_status(health) == NOT_SERVING


async def refused(stub: decision_pb2_grpc.DecisionServiceStub) -> bool:
    """Whether a new call is refused because the server shuts down."""
    try:
        await stub.CheckAccess(ALLOWED, timeout=2)
    except grpc.aio.AioRpcError as error:
        assert error.code() is grpc.StatusCode.UNAVAILABLE and error.details() == SHUTTING_DOWN, error
        return True
    return False


@pytest.fixture(params=[1, 2], ids=["one-process", "two-workers"])
def workers(request: pytest.FixtureRequest) -> int:
    return int(request.param)


async def test_hundreds_of_calls_in_flight_at_sigterm_are_all_answered(
        serve: Callable[..., Serving], sqlite_store: SQLiteStore, workers: int) -> None:
    server = serve(workers)
    # Every call waits for revision 2, applied only once the server refuses new calls: all of them are in flight
    # from just before SIGTERM, through the drain delay and the refusing, to the end.
    waiting = pb.CheckAccessRequest(tenant_id="acme", subject="user:alice", action="read", resource="x",
                                    min_revision=2)
    async with connected(server.target) as stubs:
        calls = [asyncio.ensure_future(stubs[index % CHANNELS].CheckAccess(waiting, timeout=60))
                 for index in range(320)]
        await asyncio.sleep(0.005)  # sent, a few milliseconds before SIGTERM
        server.process.send_signal(signal.SIGTERM)

        async with grpc.aio.insecure_channel(server.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            await until(lambda: not_serving(health), "NOT_SERVING after SIGTERM")
            assert await health_status(health, "liveness") == SERVING  # the process runs: no probe kills it
        await until(lambda: refused(stubs[0]), "new calls refused after the drain delay")
        # Refusing for longer than the server lingers before it ends: it is still there, waiting for the calls.
        await asyncio.sleep(2 * RESPONSE_LINGER)
        assert server.process.poll() is None, server.output()
        # Revision 2: every waiting call can be answered.
        sqlite_store.apply(manifests({"globex": tenant_doc("globex")}))
        answers = await asyncio.gather(*calls, return_exceptions=True)

    problems = collections.Counter(error.code().name for error in answers if isinstance(error, grpc.aio.AioRpcError))
    assert problems == collections.Counter(), problems
    assert all(answer.allowed and answer.revision == 2 for answer in answers)
    assert await server.exit_code() == 0, server.output()


async def test_continuous_load_across_sigterm_gets_no_cancelled_call(
        serve: Callable[..., Serving], workers: int) -> None:
    server = serve(workers)
    loop = asyncio.get_running_loop()
    outcomes: list[tuple[float, str, str]] = []  # (sent at, status code, details) of every call
    loading = True

    async def load(stub: decision_pb2_grpc.DecisionServiceStub) -> None:
        while loading:
            sent_at = loop.time()
            try:
                await stub.CheckAccess(ALLOWED, timeout=10)
                outcomes.append((sent_at, "OK", ""))
            except grpc.aio.AioRpcError as error:
                outcomes.append((sent_at, error.code().name, error.details() or ""))

    async def loaded() -> bool:
        return len(outcomes) >= 200

    async def health_turns_not_serving() -> float | None:
        """When health was first seen NOT_SERVING; None if the server went first."""
        async with grpc.aio.insecure_channel(server.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            with contextlib.suppress(grpc.aio.AioRpcError):
                while not await not_serving(health):
                    await asyncio.sleep(0.005)
                return loop.time()
        return None

    async with connected(server.target) as stubs:
        loads = [asyncio.create_task(load(stubs[index % CHANNELS])) for index in range(64)]
        try:
            await until(loaded, "calls answered before SIGTERM")
            server.process.send_signal(signal.SIGTERM)
            not_serving_at = await health_turns_not_serving()
            exit_code = await server.exit_code()
        finally:
            loading = False
            await asyncio.gather(*loads)

    codes = collections.Counter(code for _, code, _ in outcomes)
    assert set(codes) <= {"OK", "UNAVAILABLE"}, codes  # never CANCELLED, never anything else
    # The drain delay: calls sent after health turned NOT_SERVING are still answered.
    assert not_serving_at is not None, server.output()
    assert any(code == "OK" and sent_at > not_serving_at for sent_at, code, _ in outcomes)
    # Then the refusing phase: new calls refused, before the process ends and its connections close.
    assert any(details == SHUTTING_DOWN for _, _, details in outcomes), codes
    assert exit_code == 0, server.output()


def test_a_negative_drain_delay_is_refused(registry_path: Path) -> None:
    result = subprocess.run([TENANTGATE, "serve", "--registry", f"sqlite://{registry_path}", "--snapshot-file", "",
                             "--drain-delay", "-1"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "drain delay must not be negative, got -1.0" in result.stderr


async def test_sigint_while_draining_cuts_the_delay_short_and_a_repeated_sigterm_does_not(
        serve: Callable[..., Serving]) -> None:
    server = serve(1, LONG_DRAIN_DELAY)
    server.process.send_signal(signal.SIGTERM)
    async with grpc.aio.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        await until(lambda: not_serving(health), "NOT_SERVING after SIGTERM")
        # A worker can get each SIGTERM twice (systemd signals every process, the parent passes it on): calls
        # are still answered through the drain delay.
        server.process.send_signal(signal.SIGTERM)
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        loop = asyncio.get_running_loop()
        answered_until = loop.time() + 0.5
        while loop.time() < answered_until:
            assert (await stub.CheckAccess(ALLOWED, timeout=5)).allowed
    server.process.send_signal(signal.SIGINT)  # Ctrl-C: the rest of the delay is not waited for
    assert await server.exit_code(timeout=LONG_DRAIN_DELAY / 2) == 0, server.output()
