"""Zero-loss rolling restarts, end to end: three `tenantgate serve` processes on one PostgreSQL registry with
Redis quotas, steady mixed load (checks, quota consumes, key reads) through one SDK client that knows all
three, and each server restarted in turn with SIGTERM while the load runs. No call fails, a calendar-window
quota consumed across the restarts admits exactly its limit, and an apply made mid-run is answered by every
replica asked with its revision as ``min_revision``."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import re
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tenantgate.client import AsyncClient, ClientConfig, Reason
from tenantgate.v1 import decision_pb2
from tests.conftest import TENANTGATE, tenant_doc
from tests.integration.test_workers import free_port

DECISION_SERVICE = decision_pb2.DESCRIPTOR.services_by_name["DecisionService"].full_name
TENANT = "acme"
QUOTA = "jobs"
LIMIT = 300
# Consumes let through at each step of one restart (SIGTERM sent, process exited, back SERVING): 3 x 3 x 25
# stays below LIMIT, so the limit is reached only after the last restart, with units spent all along the way.
CONSUMES_PER_STEP = 25
KEY_READER = "service:storage"
# Long enough for the SDK's health watch to see NOT_SERVING and stop picking the replica; short, to keep the
# test short. A call that still lands in the refusing phase after it is retried elsewhere.
DRAIN_DELAY = "0.5"
# Generous for a loaded 2-core CI machine: a start imports, connects to PostgreSQL and loads the registry.
START_TIMEOUT = 60.0
LOAD_CONCURRENCY = 8
# Calls the load answers on all three replicas before the first restart, and after the last one.
STEADY_CALLS = 300

log = logging.getLogger(__name__)


def tenant(*, with_zed: bool) -> dict[str, Any]:
    """acme: alice reads; ``with_zed``, zed too (the change applied mid-run). A calendar-window quota, and a
    key that KEY_READER may read."""
    subjects = ["user:alice", "user:zed"] if with_zed else ["user:alice"]
    return tenant_doc(TENANT,
                      access={"roles": {"reader": {"allow": ["read:*"]}},
                              "bindings": [{"subject": subject, "roles": ["reader"]} for subject in subjects]},
                      quotas={QUOTA: {"limit": LIMIT, "period": "month"}},
                      keys={"purposes": ["data"], "readers": [KEY_READER]})


async def until(condition: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
    """Polls ``condition`` (cheap, no I/O) until it holds."""
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"not within {timeout} s: {what}")


class Replica:
    """One `tenantgate serve` process on a loopback port of its own, restarted on the same port."""

    def __init__(self, index: int, command: list[str], logs: Path) -> None:
        self.index = index
        self.target = f"127.0.0.1:{free_port()}"
        self._command = [*command, "--listen", self.target]
        self._logs = logs
        self.starts = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self._logs / f"replica-{self.index}-start-{self.starts}.log"

    def output(self) -> str:
        return f"--- {self.log.name}:\n{self.log.read_text(errors='replace')[-3000:]}"

    def start(self) -> None:
        self.starts += 1
        # The test's own settings only: no TENANTGATE_* from the environment (a developer's registry, say).
        environment = {name: value for name, value in os.environ.items() if not name.startswith("TENANTGATE_")}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(self._command, stdout=out, stderr=subprocess.STDOUT, env=environment,
                                            start_new_session=True)

    async def wait_serving(self) -> None:
        """Polls the replica's health until DecisionService is SERVING (it has loaded the registry)."""
        assert self.process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        async with grpc.aio.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                assert self.process.poll() is None, f"replica {self.index} exited at start\n{self.output()}"
                with contextlib.suppress(grpc.aio.AioRpcError):
                    answer = await health.Check(health_pb2.HealthCheckRequest(service=DECISION_SERVICE), timeout=1)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                assert loop.time() < deadline, f"replica {self.index} not SERVING in {START_TIMEOUT} s\n{self.output()}"
                await asyncio.sleep(0.05)

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    async def exit_code(self) -> int:
        assert self.process is not None
        return await asyncio.to_thread(self.process.wait, START_TIMEOUT)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


async def apply(registry: str, master_key_file: Path, manifest: Path) -> int:
    """`tenantgate apply` of ``manifest``, as an operator runs it; the registry revision it answers."""
    process = await asyncio.create_subprocess_exec(
        TENANTGATE, "apply", "--registry", registry, "--master-key-file", str(master_key_file), "-f", str(manifest),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output = (await asyncio.wait_for(process.communicate(), START_TIMEOUT))[0].decode(errors="replace")
    assert process.returncode == 0, output
    found = re.search(r"the registry is at revision (\d+)", output)
    assert found, output
    return int(found[1])


class MixedLoad:
    """Steady load through one client: tasks cycling CheckAccess, ConsumeQuota and GetTenantKey, recording
    every answer and every failure. Consumes are let through in counted allowances (the test hands them out
    at each step of a restart), and each carries an idempotency key of its own, so that a retried consume
    counts once."""

    KINDS = ("check", "consume", "key")

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.phase = "warm-up"
        self.answered: collections.Counter[str] = collections.Counter()
        self.failures: list[str] = []
        self.wrong_answers: list[str] = []
        self.consume_allowance = 0
        self.consumes_allowed = 0
        self.consumes_denied = 0
        self.key_materials: set[bytes] = set()
        self.applied_revision = 0  # set once the client observed the mid-run apply's revision
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def calls(self) -> int:
        return sum(self.answered.values())

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(index)) for index in range(LOAD_CONCURRENCY)]

    async def stop(self) -> None:
        self._stopping = True
        await asyncio.gather(*self._tasks)

    def allow_consumes(self, count: int) -> None:
        self.consume_allowance += count

    async def _run(self, index: int) -> None:
        step = index
        while not self._stopping:
            step += 1
            kind = self.KINDS[step % len(self.KINDS)]
            if kind == "consume":
                if self.consume_allowance <= 0:
                    kind = "check"
                else:
                    self.consume_allowance -= 1
            try:
                await getattr(self, f"_{kind}")()
            except Exception as error:  # every failure is recorded; the test asserts there is none
                self.failures.append(f"[{self.phase}] {kind}: {error!r}")
            else:
                self.answered[kind] += 1

    async def _check(self) -> None:
        # Once the apply is observed, zed (granted by it) too; every check then carries its revision.
        applied = self.applied_revision
        subject = "user:zed" if applied and self.answered["check"] % 2 else "user:alice"
        decision = await self.client.check_access(TENANT, "read", "docs/1", subject=subject)
        if not decision.allowed or decision.revision < applied:
            self.wrong_answers.append(f"[{self.phase}] {subject} asked at revision >= {applied}: {decision}")

    async def _consume(self) -> None:
        result = await self.client.consume_quota(TENANT, {QUOTA: 1}, idempotency_key=uuid.uuid4().hex)
        if result.allowed:
            self.consumes_allowed += 1
        else:
            self.consumes_denied += 1

    async def _key(self) -> None:
        key = await self.client.get_tenant_key(TENANT, "data")
        self.key_materials.add(key.material)

    def summary(self) -> str:
        return (f"{self.calls} calls answered {dict(self.answered)}, {len(self.failures)} failed, consumes "
                f"{self.consumes_allowed} allowed / {self.consumes_denied} denied")


@pytest.fixture
def replicas(tmp_path: Path, postgres_url: str, redis_url: str, redis_prefix: str,
             master_key_file: Path) -> Iterator[list[Replica]]:
    """Three replicas of one PostgreSQL registry and one Redis (this test's key prefix), not started yet;
    whatever is left of them is killed at the end."""
    command = [TENANTGATE, "serve", "--registry", postgres_url, "--admin-listen", "", "--snapshot-file", "",
               "--sync-interval", "0.05", "--drain-delay", DRAIN_DELAY, "--grace-period", "10",
               "--quota-backend", redis_url, "--quota-prefix", redis_prefix,
               "--master-key-file", str(master_key_file), "--trust-caller-metadata"]
    started = [Replica(index, command, tmp_path) for index in range(3)]
    yield started
    for replica in started:
        replica.kill()


async def test_rolling_restart_under_load_loses_no_call_and_counts_every_unit_once(
        tmp_path: Path, replicas: list[Replica], postgres_url: str, master_key_file: Path) -> None:
    manifest = tmp_path / "acme.yaml"
    manifest.write_text(yaml.safe_dump(tenant(with_zed=False)))
    assert await apply(postgres_url, master_key_file, manifest) == 1
    for replica in replicas:
        replica.start()
    for replica in replicas:
        await replica.wait_serving()

    applied = 0  # the revision of the apply made mid-run
    config = ClientConfig([replica.target for replica in replicas], caller=KEY_READER)
    async with AsyncClient(config) as client:
        load = MixedLoad(client)
        load.start()
        try:
            await until(lambda: load.calls >= STEADY_CALLS, f"the load answers {STEADY_CALLS} calls")
            for replica in replicas:
                # The next restart as soon as the last one's consumes are spent, as an operator goes on once a
                # restarted replica is SERVING.
                await until(lambda: load.consume_allowance == 0, f"consumes spent before restart {replica.index}")
                load.phase = f"replica {replica.index} draining"
                replica.terminate()
                load.allow_consumes(CONSUMES_PER_STEP)
                assert await replica.exit_code() == 0, replica.output()

                load.phase = f"replica {replica.index} down"
                load.allow_consumes(CONSUMES_PER_STEP)
                if replica.index == 1:
                    # The change, made while one replica is down and the others serve: the restarted one loads
                    # it at start, the others from the change feed.
                    manifest.write_text(yaml.safe_dump(tenant(with_zed=True)))
                    applied = await apply(postgres_url, master_key_file, manifest)
                    client.observe_revision(applied)
                    load.applied_revision = applied
                replica.start()
                await replica.wait_serving()

                load.phase = f"replica {replica.index} restarted"
                load.allow_consumes(CONSUMES_PER_STEP)
            answered = load.calls
            await until(lambda: load.calls >= answered + STEADY_CALLS and load.consume_allowance == 0,
                        f"the load answers {STEADY_CALLS} calls after the last restart")

            # The rest of the limit and more: the load consumes until it is refused.
            load.phase = "spending the rest"
            load.allow_consumes(10 * LIMIT)
            await until(lambda: load.consumes_denied > 0, f"the quota of {LIMIT} runs out")
        finally:
            await load.stop()
        log.info("rolling restart: %s", load.summary())

        assert load.failures == [], f"{load.summary()}\n" + "\n".join(load.failures[:20])
        assert load.wrong_answers == [], "\n".join(load.wrong_answers[:20])
        assert len(load.key_materials) == 1, "replicas answered different keys"
        assert load.consumes_allowed == LIMIT, load.summary()
        for _ in range(3):
            later = await client.consume_quota(TENANT, {QUOTA: 1}, idempotency_key=uuid.uuid4().hex)
            assert not later.allowed and later.items[0].remaining == 0, later

    # Every replica, asked directly, answers the mid-run apply when asked with its revision.
    for replica in replicas:
        async with AsyncClient(ClientConfig(replica.target)) as one:
            decision = await one.check_access(TENANT, "read", "docs/1", subject="user:zed", min_revision=applied)
            assert decision.allowed and decision.reason is Reason.ALLOWED, (replica.index, decision)
            assert decision.revision >= applied, (replica.index, decision)
    for replica in replicas:
        replica.terminate()
    for replica in replicas:
        assert await replica.exit_code() == 0, replica.output()
