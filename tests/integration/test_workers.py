"""`tenantgate serve --workers N`: processes sharing one port, and one limit through Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tenantgate.config import ServeConfig
from tenantgate.errors import ConfigurationError
from tenantgate.registry.sqlite import SQLiteStore
from tenantgate.server.app import TenantgateServer
from tenantgate.v1 import decision_pb2 as pb
from tenantgate.v1 import decision_pb2_grpc
from tests.conftest import TENANTGATE, RunningServer, tenant_doc


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


def test_more_than_one_worker_on_memory_counters_is_refused(registry_path: Path) -> None:
    result = subprocess.run([TENANTGATE, "serve", "--registry", f"sqlite://{registry_path}",
                             "--workers", "2", "--snapshot-file", ""], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "admit up to 2 times every limit" in result.stderr and "--quota-backend redis://" in result.stderr


def test_workers_share_the_port_and_one_limit(tmp_path: Path, registry_path: Path, sqlite_store: SQLiteStore,
                                              redis_url: str, redis_prefix: str) -> None:
    sqlite_store.apply({"acme": tenant_doc("acme", quotas={"jobs": {"limit": 100, "period": "day"}})})
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

        victim = children(server.pid)[0]
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
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(30)
        log.close()
    assert code == 0, (tmp_path / "serve.log").read_text()[-2000:]


def test_a_second_single_worker_server_cannot_share_the_port(registry_path: Path, sqlite_store: SQLiteStore,
                                                             start_server: Callable[..., RunningServer]) -> None:
    sqlite_store.apply({"acme": tenant_doc("acme")})
    first = start_server(registry_url=f"sqlite://{registry_path}")
    config = ServeConfig(registry_url=f"sqlite://{registry_path}", listen=first.target, admin_listen="",
                         snapshot_file="")

    async def start_second() -> None:
        await TenantgateServer(config, None).start()

    with pytest.raises(ConfigurationError, match=f"cannot listen on {first.target}"):
        first.call(start_second())
