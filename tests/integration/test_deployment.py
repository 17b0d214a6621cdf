"""The deployment as shipped: `tenantgate serve` run with deploy/kubernetes.yaml's own arguments answers the
kubelet's gRPC probes in plaintext while its decision port requires mutual TLS, and drains as the pod's
termination period expects; a server warns at start when its Redis keeps nothing on disk."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import EXAMPLES, REPO, REQUIRE_SERVICES, TENANTGATE

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
PERSISTENCE_WARNING = "keeps nothing on disk"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _tenantgate(*args: str) -> None:
    subprocess.run([TENANTGATE, *args], check=True, capture_output=True, timeout=60, env=_environment())


def _environment(**settings: str) -> dict[str, str]:
    """This process's environment without its TENANTGATE_* settings, plus ``settings``."""
    return {**{name: value for name, value in os.environ.items() if not name.startswith("TENANTGATE_")},
            **settings}


def _registry(tmp_path: Path, master_key: Path) -> str:
    """A SQLite registry holding the example manifests, made with `tenantgate apply`."""
    url = f"sqlite://{tmp_path / 'registry.db'}"
    _tenantgate("apply", "-f", str(EXAMPLES), "--registry", url, "--master-key-file", str(master_key))
    return url


class Server:
    """A `tenantgate serve` process with its log in a file; stopped (SIGKILL if need be) at the end."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen([TENANTGATE, *args], env=env, cwd=log.parent, stdout=out,
                                            stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_until(self, condition: Any, what: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = condition()
            if result:
                return result
            assert self.process.poll() is None, f"the server exited ({self.process.returncode}):\n{self.output()}"
            assert time.monotonic() < deadline, f"{what} within {timeout} s; the server's log:\n{self.output()}"
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.kill()


def _health(target: str, service: str = "") -> int | None:
    """The status a plaintext grpc.health.v1 Check answers, None when the call fails."""
    with grpc.insecure_channel(target) as channel:
        try:
            status: int = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1).status
            return status
        except grpc.RpcError:
            return None


def _manifest_container() -> dict[str, Any]:
    documents = yaml.safe_load_all((REPO / "deploy" / "kubernetes.yaml").read_text())
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return {**container, "terminationGracePeriodSeconds": spec["terminationGracePeriodSeconds"]}


def test_the_manifests_probes_answer_in_plaintext_while_its_decision_port_requires_mtls(
        tmp_path: Path, servers: list[Server]) -> None:
    container = _manifest_container()
    certs = tmp_path / "certs"
    _tenantgate("certs", "dev", "--out", str(certs), "--service", "registry-operator")
    master_key = tmp_path / "master.key"
    _tenantgate("master-key", str(master_key))
    # What the pod mounts (secrets, its state volume) and the hosts it reaches cannot exist here: those
    # arguments alone are replaced, by local files, the machine's Redis and free ports.
    mounted = {"--tls-cert": certs / "server.pem", "--tls-key": certs / "server-key.pem",
               "--client-ca": certs / "ca.pem", "--master-key-file": master_key,
               "--snapshot-file": tmp_path / "last-known-good.json"}
    ports: dict[str, int] = {}
    args = []
    for arg in container["args"]:
        flag, _, value = arg.partition("=")
        if flag in mounted:
            value = str(mounted[flag])
        elif flag.endswith("-listen"):
            host, _, _ = value.rpartition(":")
            ports[flag] = _free_port()
            value = f"{host}:{ports[flag]}"  # the manifest's own host: health in plaintext on every interface
        elif flag == "--quota-backend":
            value = os.environ.get("TENANTGATE_TEST_REDIS_URL", "memory://")
        else:
            assert not value.startswith("/"), f"{arg}: a path this test does not know how to replace"
        args.append(f"{flag}={value}" if "=" in arg else arg)
    registry = _registry(tmp_path, master_key)
    (env,) = container["env"]
    assert env["name"] == "TENANTGATE_REGISTRY"  # from a secret: the only environment the pod sets
    server = Server(args, _environment(TENANTGATE_REGISTRY=registry), tmp_path / "serve.log")
    servers.append(server)

    health = f"127.0.0.1:{ports['--health-listen']}"
    decision = f"127.0.0.1:{ports['--listen']}"
    server.wait_until(lambda: _health(health) == SERVING, "the readiness probe's Check answers SERVING")
    assert _health(health, "liveness") == SERVING
    assert _health(health, "tenantgate.v1.DecisionService") == SERVING
    # The decision port refuses plaintext (its TLS handshake fails) and answers a client with a certificate.
    assert _health(decision) is None
    credentials = grpc.ssl_channel_credentials(
        (certs / "ca.pem").read_bytes(), (certs / "client-registry-operator-key.pem").read_bytes(),
        (certs / "client-registry-operator.pem").read_bytes())
    with grpc.secure_channel(decision, credentials) as channel:
        assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
    # The health port answers health only.
    with grpc.insecure_channel(health) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary("/tenantgate.v1.DecisionService/ResolveTenant")(b"", timeout=5)
        assert refused.value.code() is grpc.StatusCode.UNIMPLEMENTED

    # SIGTERM: readiness turns NOT_SERVING at once, on the probe port too, while the server drains; it exits
    # cleanly well within the pod's termination period.
    stopped_at = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    server.wait_until(lambda: _health(health) == NOT_SERVING, "the probe port answers NOT_SERVING while draining",
                      timeout=3)
    assert _health(health, "liveness") == SERVING  # the liveness probe does not kill a draining server
    assert server.process.wait(container["terminationGracePeriodSeconds"]) == 0, server.output()
    assert time.monotonic() - stopped_at < container["terminationGracePeriodSeconds"]


def _serve_on_redis(tmp_path: Path, url: str, prefix: str, servers: list[Server], *more: str) -> tuple[Server, str]:
    master_key = tmp_path / "master.key"
    _tenantgate("master-key", str(master_key))
    health = f"127.0.0.1:{_free_port()}"
    server = Server(["serve", "--registry", _registry(tmp_path, master_key), "--master-key-file", str(master_key),
                     "--listen", f"127.0.0.1:{_free_port()}", "--admin-listen", "", "--health-listen", health,
                     "--snapshot-file", "", "--quota-backend", url, "--quota-prefix", prefix, *more],
                    _environment(), tmp_path / "serve.log")
    servers.append(server)
    return server, health


def _listening_sockets(port: int) -> int:
    """Sockets listening on ``port`` (gRPC listens on IPv6 sockets that take IPv4 too)."""
    return sum(1 for table in ("/proc/net/tcp", "/proc/net/tcp6") for line in Path(table).read_text().splitlines()[1:]
               if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A")


def test_workers_share_the_health_port_as_they_share_the_decision_port(
        tmp_path: Path, redis_url: str, redis_prefix: str, servers: list[Server]) -> None:
    server, health = _serve_on_redis(tmp_path, redis_url, redis_prefix, servers, "--workers", "2")
    port = int(health.rpartition(":")[2])
    server.wait_until(lambda: _listening_sockets(port) == 2, "both workers listen on the health port (SO_REUSEPORT)")
    server.wait_until(lambda: _health(health) == SERVING, "serving")
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(30) == 0, server.output()


def _keeps_nothing(client: redis.Redis) -> bool:
    settings = {**client.config_get("appendonly"), **client.config_get("save")}
    return settings["appendonly"] == "no" and not settings["save"].strip()


def test_the_server_warns_at_start_when_its_redis_keeps_nothing_on_disk(
        tmp_path: Path, redis_url: str, redis_prefix: str, servers: list[Server]) -> None:
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        if not _keeps_nothing(client):
            _refuse_a_persistent_redis()
    server, health = _serve_on_redis(tmp_path, redis_url, redis_prefix, servers)
    server.wait_until(lambda: _health(health) == SERVING, "serving")
    warning = server.wait_until(
        lambda: next((line for line in server.output().splitlines() if PERSISTENCE_WARNING in line), None),
        "the persistence warning is logged", timeout=10)
    record = json.loads(warning)  # the server logs JSON lines by default
    assert record["level"] == "warning" and record["logger"].startswith("tenantgate")
    assert "forgets every counter" in record["message"] and "appendonly no" in record["message"]


@pytest.mark.parametrize(("refused", "logged"), [
    # Managed Redis disables CONFIG: INFO persistence still shows that nothing is kept.
    ("-config", "reports AOF off and no RDB snapshot since it started"),
    # A Redis that refuses both checks: the server says it could not tell, and serves.
    ("-config -info", "could not learn whether the quota backend Redis keeps counters on disk"),
])
def test_a_redis_that_refuses_the_check_never_stops_the_start(
        tmp_path: Path, redis_url: str, redis_prefix: str, servers: list[Server], refused: str, logged: str) -> None:
    user, password = f"tgtest-{os.getpid()}-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        if not _keeps_nothing(client):
            _refuse_a_persistent_redis()
        client.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "+@all", *refused.split())
        try:
            host, port = client.connection_pool.connection_kwargs["host"], client.connection_pool.connection_kwargs[
                "port"]
            url = f"redis://{user}:{password}@{host}:{port}/{client.connection_pool.connection_kwargs.get('db', 0)}"
            server, health = _serve_on_redis(tmp_path, url, redis_prefix, servers)
            server.wait_until(lambda: _health(health) == SERVING, "serving")
            server.wait_until(lambda: logged in server.output(), f"{logged!r} is logged", timeout=10)
        finally:
            client.execute_command("ACL", "DELUSER", user)


def _refuse_a_persistent_redis() -> None:
    """These tests need a Redis that keeps nothing on disk: skip without one, fail under
    TENANTGATE_REQUIRE_SERVICES=1 as every missing service does."""
    message = "the test Redis keeps counters on disk; run it with --save '' --appendonly no"
    if REQUIRE_SERVICES:
        pytest.fail(message + "; TENANTGATE_REQUIRE_SERVICES=1 forbids skipping")
    pytest.skip(message)
