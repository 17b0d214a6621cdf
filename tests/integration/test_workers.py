"""`tenantgate serve --workers N`: processes sharing one port, and one limit through Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tenantgate.config import ServeConfig
from tenantgate.errors import ConfigurationError
from tenantgate.registry.sqlite import SQLiteStore
from tenantgate.server.app import TenantgateServer
from tenantgate.v1 import decision_pb2 as pb
from tenantgate.v1 import decision_pb2_grpc
from tests.conftest import TENANTGATE, RunningServer, manifests, tenant_doc


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def running(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def wait_serving(target: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, "workers did not start serving"
            time.sleep(0.1)


STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")


def json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def started_workers(lines: list[dict[str, Any]]) -> dict[int, int]:
    """pid -> worker index, from the parent's "worker N started (pid P)" lines."""
    return {int(match[2]): int(match[1]) for line in lines if (match := STARTED.fullmatch(line["message"]))}


def wait_for_log(path: Path, pattern: str, server: subprocess.Popen[bytes], timeout: float = 60.0) -> str:
    """The log's text once ``pattern`` appears in it."""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, text := path.read_text()):
        assert server.poll() is None, f"the server exited with {server.returncode}:\n{text[-3000:]}"
        assert time.monotonic() < deadline, f"no {pattern!r} in the log:\n{text[-3000:]}"
        time.sleep(0.05)
    return text


@contextlib.contextmanager
def held_metrics_ports() -> Iterator[str]:
    """HOST:PORT for --metrics-listen where another program already listens on PORT and PORT+1, the metrics
    ports of workers 0 and 1: every worker fails at start."""
    for _ in range(100):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            first.listen()
            second.listen()
            yield f"127.0.0.1:{port}"
            return
    raise AssertionError("no two consecutive free ports")


def serve_workers(registry_path: Path, redis_url: str, redis_prefix: str, log: Path, *extra: str,
                  workers: int = 2) -> subprocess.Popen[bytes]:
    with log.open("w") as output:
        return subprocess.Popen(
            [TENANTGATE, "serve", "--registry", f"sqlite://{registry_path}", "--listen", f"127.0.0.1:{free_port()}",
             "--admin-listen", "", "--snapshot-file", "", "--workers", str(workers), "--quota-backend", redis_url,
             "--quota-prefix", redis_prefix, *extra], stdout=output, stderr=subprocess.STDOUT)


def test_more_than_one_worker_on_memory_counters_is_refused(registry_path: Path) -> None:
    result = subprocess.run([TENANTGATE, "serve", "--registry", f"sqlite://{registry_path}",
                             "--workers", "2", "--snapshot-file", ""], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "admit up to 2 times every limit" in result.stderr and "--quota-backend redis://" in result.stderr


def test_workers_share_the_port_and_one_limit(tmp_path: Path, registry_path: Path, sqlite_store: SQLiteStore,
                                              redis_url: str, redis_prefix: str) -> None:
    sqlite_store.apply(manifests({"acme": tenant_doc("acme", quotas={"jobs": {"limit": 100, "period": "day"}})}))
    port, admin_port = free_port(), free_port()
    target = f"127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [TENANTGATE, "serve", "--registry", f"sqlite://{registry_path}", "--listen", target,
         "--admin-listen", f"127.0.0.1:{admin_port}", "--snapshot-file", "", "--workers", "4",
         "--quota-backend", redis_url, "--quota-prefix", redis_prefix], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_serving(target)
        assert len(children(server.pid)) == 4

        async def hammer() -> list[bool]:
            # SO_REUSEPORT spreads connections, not calls: many channels reach many workers.
            channels = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                        for _ in range(8)]
            request = pb.ConsumeQuotaRequest(tenant_id="acme", items=[pb.QuotaItem(quota="jobs", amount=1)])
            calls = [decision_pb2_grpc.DecisionServiceStub(channels[i % 8]).ConsumeQuota(request, timeout=30)
                     for i in range(200)]
            responses = await asyncio.gather(*calls)
            for channel in channels:
                await channel.close()
            return [response.allowed for response in responses]

        assert asyncio.run(hammer()).count(True) == 100

        first = children(server.pid)
        victim = first[0]
        os.kill(victim, signal.SIGKILL)
        while running(victim):  # its sockets close when it has died
            time.sleep(0.01)
        with grpc.insecure_channel(target) as channel:
            stub = decision_pb2_grpc.DecisionServiceStub(channel)
            for _ in range(20):  # the others keep serving (a connection caught mid-churn is retried)
                response = stub.ResolveTenant(pb.ResolveTenantRequest(tenant_id="acme"), timeout=5, wait_for_ready=True)
                assert response.tenant_id == "acme"
        deadline = time.monotonic() + 10
        while len(children(server.pid)) < 4 or victim in children(server.pid):
            assert time.monotonic() < deadline, "the killed worker was not replaced"
            time.sleep(0.1)
        replacement = next(pid for pid in children(server.pid) if pid not in first)
        wait_for_log(tmp_path / "serve.log", rf'"pid": {replacement}, "message": "snapshot at revision 1', server)
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(30)
        log.close()
    assert code == 0, (tmp_path / "serve.log").read_text()[-2000:]

    lines = json_lines(tmp_path / "serve.log")
    workers = started_workers(lines)
    assert len(workers) == 5 and workers[victim] in range(4)
    for pid, index in workers.items():  # each worker's own lines reach the log, tagged with it
        mine = [line["message"] for line in lines if line.get("pid") == pid]
        assert all(line["worker"] == index for line in lines if line.get("pid") == pid)
        assert sum(message.startswith("serving DecisionService") for message in mine) == 1, mine
        assert any(message.startswith("snapshot at revision 1") for message in mine), mine
    parent = [line["message"] for line in lines if line["logger"] == "tenantgate.workers" and "pid" not in line]
    assert any(re.fullmatch(rf"worker {workers[victim]} \(pid {victim}\) killed by SIGKILL after [\d.]+ s "
                            r"\(served [\d.]+ s\); restarting it in 0\.5 s", message) for message in parent), parent


def test_a_second_single_worker_server_cannot_share_the_port(registry_path: Path, sqlite_store: SQLiteStore,
                                                             start_server: Callable[..., RunningServer]) -> None:
    sqlite_store.apply(manifests({"acme": tenant_doc("acme")}))
    first = start_server(registry_url=f"sqlite://{registry_path}")
    config = ServeConfig(registry=f"sqlite://{registry_path}", listen=first.target, admin_listen="",
                         snapshot_file="")

    async def start_second() -> None:
        await TenantgateServer(config, None).start()

    with pytest.raises(ConfigurationError, match=f"cannot listen on {first.target}"):
        first.call(start_second())


def test_workers_failing_at_start_stop_the_server(tmp_path: Path, registry_path: Path, sqlite_store: SQLiteStore,
                                                  redis_url: str, redis_prefix: str) -> None:
    sqlite_store.apply(manifests({"acme": tenant_doc("acme")}))
    log = tmp_path / "serve.log"
    with held_metrics_ports() as metrics:
        server = serve_workers(registry_path, redis_url, redis_prefix, log, "--metrics-listen", metrics,
                               "--log-format", "text")
        try:
            code = server.wait(120)  # restarts back off, then the parent gives up: not restarted for ever
        finally:
            server.kill()
    text = log.read_text()
    assert code == 1, text[-3000:]
    assert len(STARTED.findall(text)) <= 10, text[-3000:]
    failures = re.findall(r"worker (\d+) \(pid (\d+)\) exited with status 1 after [\d.]+ s \(never served\)", text)
    assert len(failures) >= 5, text[-3000:]
    for index, pid in failures:  # each crash was written before the worker exited, tagged with it
        assert re.search(rf"\[worker {index} pid {pid}\] ERROR tenantgate\.workers: worker {index} failed: "
                         r".*Address already in use", text), text[-3000:]
    assert "restarting it in 0.5 s" in text and "restarting it in 1.0 s" in text
    assert re.search(r"failed 5 times in a row within 30 s of starting: stopping the server", text)
    assert text.rstrip().endswith("failed 5 times in a row within 30 s of starting"), text[-500:]


def test_a_stop_while_workers_wait_to_restart_is_prompt_and_fails(
        tmp_path: Path, registry_path: Path, sqlite_store: SQLiteStore, redis_url: str, redis_prefix: str) -> None:
    sqlite_store.apply(manifests({"acme": tenant_doc("acme")}))
    log = tmp_path / "serve.log"
    with held_metrics_ports() as metrics:
        server = serve_workers(registry_path, redis_url, redis_prefix, log, "--metrics-listen", metrics)
        try:
            # Worker 0 has failed a fourth time and waits 4 s before its fifth start.
            wait_for_log(log, r"worker 0 \(pid \d+\) .* restarting it in 4\.0 s", server, timeout=90)
            server.send_signal(signal.SIGTERM)
            code = server.wait(2)  # the wait for a restart does not hold a stop up
        finally:
            server.kill()
    lines = json_lines(log)
    assert code == 1, lines[-5:]  # nothing ever served: not a clean stop
    assert lines[-1]["message"] == "stopped, but worker(s) 0, 1 never served"


def test_workers_stop_with_their_parent(tmp_path: Path, registry_path: Path, sqlite_store: SQLiteStore,
                                        redis_url: str, redis_prefix: str) -> None:
    sqlite_store.apply(manifests({"acme": tenant_doc("acme")}))
    log = tmp_path / "serve.log"
    server = serve_workers(registry_path, redis_url, redis_prefix, log, "--log-format", "text", "--drain-delay", "0")
    try:
        for index in range(2):
            wait_for_log(log, rf"\[worker {index} pid \d+\] INFO tenantgate\.server: serving DecisionService", server)
        workers = [int(pid) for _, pid in STARTED.findall(log.read_text())]
        assert len(workers) == 2
    finally:
        server.kill()  # SIGKILL: the parent cannot pass anything on
        server.wait(10)
    deadline = time.monotonic() + 60
    try:
        while any(running(pid) for pid in workers):  # no orphan keeps serving unsupervised: each drains and exits
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
