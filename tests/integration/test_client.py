"""The Python SDK (``tenantgate.client``) against real servers on one SQLite registry: typed answers, errors
mapped to one hierarchy, deadlines, round-robin over replicas, calls that survive a replica that is down,
refusing or not serving, wait-for-ready, read-your-writes and mutual TLS. Every test runs twice: with the
blocking ``Client`` and with the ``AsyncClient``."""

from __future__ import annotations

import asyncio
import datetime
import inspect
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from tenantgate import errors
from tenantgate.certs import make_dev_certificates
from tenantgate.client import (
    NO_RETRIES,
    Aborted,
    AsyncClient,
    ChannelSecurity,
    Check,
    CheckFailure,
    Client,
    ClientConfig,
    DeadlineExceeded,
    Decision,
    FailedPrecondition,
    InvalidArgument,
    KeyState,
    NotFound,
    PermissionDenied,
    Reason,
    TenantState,
    Unavailable,
)
from tenantgate.config import ServeConfig
from tenantgate.errors import ConfigurationError
from tenantgate.keywrap import MasterKey, tenant_key_factory
from tenantgate.registry.manifest import load_manifests
from tenantgate.registry.sqlite import SQLiteStore
from tenantgate.server.app import DECISION_SERVICE
from tenantgate.v1 import decision_pb2 as pb
from tests.conftest import EXAMPLES, Issuer, RunningServer, manifests, tenant_doc

# The quota each replica counts on its own (memory backend): how many calls each one answered.
METERED_LIMIT = 1_000_000


def documents(issuer: Issuer, *, zed: bool = False) -> dict[str, Any]:
    """The example tenants, acme trusting the test issuer (and binding user:zed as a viewer when ``zed``),
    and a tenant with a calendar-window quota that never runs out during a test."""
    found: dict[str, Any] = {doc.tenant.id: doc.document for doc in load_manifests([EXAMPLES])}
    found["acme"]["spec"]["tokens"]["issuers"].append(issuer.issuer_spec())
    if zed:
        found["acme"]["spec"]["access"]["bindings"].append({"subject": "user:zed", "roles": ["viewer"]})
    found["metered"] = tenant_doc("metered", quotas={"calls": {"limit": METERED_LIMIT, "period": "month"}})
    return found


class Replicas:
    """Servers on one SQLite registry, each on its own loopback port; a test may stop some, the others stop
    when it ends."""

    def __init__(self, registry: Path, master_key: MasterKey) -> None:
        self.registry = registry
        self.master_key = master_key
        self.running: list[RunningServer] = []

    def start(self, **settings: Any) -> RunningServer:
        settings.setdefault("trust_caller_metadata", True)
        config = ServeConfig(registry=f"sqlite://{self.registry}", listen="127.0.0.1:0", admin_listen="",
                             snapshot_file="", sync_interval=settings.pop("sync_interval", 0.05), **settings)
        server = RunningServer(config, self.master_key)
        self.running.append(server)
        server.wait_synced(1)
        return server

    def stop(self, server: RunningServer) -> None:
        self.running.remove(server)
        server.stop()

    def close(self) -> None:
        for server in self.running:
            server.stop()


@pytest.fixture
def store(registry_path: Path, master_key: MasterKey, issuer: Issuer) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(registry_path)
    opened.apply(manifests(documents(issuer)), key_factory=tenant_key_factory(master_key))
    yield opened
    opened.close()


@pytest.fixture
def replicas(store: SQLiteStore, registry_path: Path, master_key: MasterKey) -> Iterator[Replicas]:
    started = Replicas(registry_path, master_key)
    yield started
    started.close()


class AwaitedClient:
    """An ``AsyncClient`` driven from a test's thread: made, called and closed on an event loop of its own,
    each call awaited to its end, so that one test body checks both clients."""

    def __init__(self, config: ClientConfig) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = self._loop.run_until_complete(self._make(config))

    @staticmethod
    async def _make(config: ClientConfig) -> AsyncClient:
        return AsyncClient(config)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute
        return lambda *args, **kwargs: self._loop.run_until_complete(attribute(*args, **kwargs))

    def close(self) -> None:
        self._loop.run_until_complete(self._client.close())
        self._loop.close()


@pytest.fixture(params=["sync", "asyncio"])
def connect(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """``connect(addresses, **settings)``: a Client, or an AsyncClient behind an AwaitedClient."""
    made: list[Client | AwaitedClient] = []

    def connect(addresses: str | list[str], **settings: Any) -> Any:
        config = ClientConfig(addresses, **settings)
        client = Client(config) if request.param == "sync" else AwaitedClient(config)
        made.append(client)
        return client

    yield connect
    for client in made:
        client.close()


def spent(server: RunningServer) -> int:
    """Units of metered/calls this replica has admitted, asked of it alone."""
    answer = server.stub.ConsumeQuota(pb.ConsumeQuotaRequest(tenant_id="metered",
                                                             items=[pb.QuotaItem(quota="calls", amount=0)]),
                                      timeout=5)
    return METERED_LIMIT - int(answer.results[0].remaining)


def consume_many(client: Any, count: int) -> None:
    for _ in range(count):
        assert client.consume_quota("metered", {"calls": 1}).allowed


def set_health(server: RunningServer, status: int) -> None:
    server.call(server.server.health.set(DECISION_SERVICE, status))


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_answers_are_typed_values(replicas: Replicas, connect: Callable[..., Any], issuer: Issuer) -> None:
    client = connect(replicas.start().target, caller="service:storage")
    allowed = client.check_access("acme", "read", "docs/1", subject="user:alice")
    assert allowed == Decision(True, Reason.ALLOWED, "acme/roles/admin/allow/0", 1, allowed.decision_id,
                               tenant_id="acme", subject="user:alice", action="read", resource="docs/1")
    assert allowed and allowed.decision_id and allowed.wire is not None
    assert allowed.wire.decision_id == allowed.decision_id
    denied = client.check_access("acme", "write", "docs/1", subject="user:bob", environment="prod")
    assert not denied and denied.reason is Reason.NO_MATCHING_GRANT and denied.rule == ""
    by_token = client.check_access("acme", "delete", "docs/1", token=issuer.token("acme", "alice"))
    assert by_token.allowed and by_token.subject == ""

    batch = client.check_access_batch([Check("acme", "read", "secrets/1", subject="user:carol", correlation_id="a"),
                                       Check("acme", "", "x", subject="user:alice", correlation_id="b")])
    assert isinstance(batch[0], Decision) and batch[0].reason is Reason.EXPLICIT_DENY
    assert batch[0].correlation_id == "a" and batch[0].subject == "user:carol"
    assert batch[1] == CheckFailure(grpc.StatusCode.INVALID_ARGUMENT, "items[1].check.action is required",
                                    "items[1].check.action", "b")
    assert isinstance(batch[1].error(), InvalidArgument)

    users = client.consume_quota("acme", {"users": 3})
    assert users and users.item("users").limit == 25 and users.item("users").remaining == 22
    assert not client.consume_quota("acme", [("users", 100)])  # denied: spends nothing
    assert client.consume_quota("acme", {"users": 0}).item("users").remaining == 22
    assert client.consume_quota("acme", {"api-requests": 100})  # the whole burst
    burst = client.consume_quota("acme", {"api-requests": 1})
    assert not burst and isinstance(burst.retry_after, float) and burst.retry_after > 0
    assert isinstance(burst.item("api-requests").reset_after, float)
    lease = client.consume_quota("acme", {"concurrent-requests": 1})
    lease_id = lease.lease_ids["concurrent-requests"]
    assert client.consume_quota("acme", {"concurrent-requests": 1}, release=True, lease_id=lease_id)

    key = client.get_tenant_key("acme", "data")
    assert (key.key_id, key.version, key.algorithm, key.state) == ("acme/data/v1", 1, "AES-256-GCM", KeyState.ENABLED)
    assert len(key.material) == 32 and key.material.hex() not in repr(key) and str(key.material) not in repr(key)
    assert key.created_at is not None and key.created_at.tzinfo is datetime.UTC
    metadata = client.get_tenant_key_metadata("acme", "data")
    assert [v.key_id for v in metadata.versions] == ["acme/data/v1"] and metadata.primary_version == 1
    data_key = client.get_data_key("acme", "data")
    opened = client.decrypt_data_key("acme", "data", data_key.wrapped)
    assert opened.plaintext == data_key.plaintext and len(opened.plaintext) == 32
    assert data_key.plaintext.hex() not in repr(data_key)

    token = client.validate_token(issuer.token("acme", "alice"))
    assert (token.valid, token.reason, token.tenant_id, token.subject) == (True, Reason.ALLOWED, "acme", "user:alice")
    assert token.expires_at is not None and token.expires_at > datetime.datetime.now(datetime.UTC)
    invalid = client.validate_token("x.y.z")
    assert not invalid.valid and invalid.reason is Reason.TOKEN_INVALID and invalid.detail

    tenant = client.resolve_tenant("acme")
    assert (tenant.state, tenant.plan, tenant.environments) == (TenantState.ACTIVE, "professional",
                                                               ("dev", "staging", "prod"))
    assert tenant.labels["region"] == "eu-west" and tenant.revision == 1 and not tenant.stale


def test_errors_map_to_one_hierarchy(replicas: Replicas, connect: Callable[..., Any]) -> None:
    client = connect(replicas.start().target)  # names no caller
    with pytest.raises(InvalidArgument) as invalid:
        client.check_access("acme", "", "docs/1", subject="user:alice")
    assert invalid.value.field == "action" and invalid.value.status is grpc.StatusCode.INVALID_ARGUMENT
    assert str(invalid.value) == "INVALID_ARGUMENT: action is required"
    assert isinstance(invalid.value, errors.InvalidArgument)  # the server's class of the same name
    with pytest.raises(NotFound) as missing:
        client.resolve_tenant("nobody")
    assert isinstance(missing.value, errors.NotFound)
    with pytest.raises(NotFound) as undeclared:
        client.consume_quota("acme", {"users": 1, "nope": 1})
    # What was not found, from the status details (google.rpc.ResourceInfo), not the message.
    assert (undeclared.value.resource_type, undeclared.value.resource_name) == ("quota", "nope")
    with pytest.raises(PermissionDenied):
        client.get_tenant_key("acme", "data")
    with pytest.raises(FailedPrecondition, match="FAILED_PRECONDITION: tenant 'initech' is Suspended"):
        client.consume_quota("initech", {"seats": 1})
    assert client.consume_quota("acme", {"users": 1}, idempotency_key="once")
    with pytest.raises(Aborted):
        client.consume_quota("acme", {"users": 2}, idempotency_key="once")
    nobody = connect(f"127.0.0.1:{free_port()}")
    with pytest.raises(Unavailable) as unavailable:
        nobody.resolve_tenant("acme")
    assert isinstance(unavailable.value, errors.Unavailable)


def test_every_call_has_a_deadline(replicas: Replicas, connect: Callable[..., Any]) -> None:
    # A listener that never speaks: the channel stays connecting, and a call waits for its deadline.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        for client, call_timeout in ((connect(target, timeout=0.3), None), (connect(target, timeout=60.0), 0.3)):
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                client.resolve_tenant("acme", timeout=call_timeout)
            assert 0.3 <= time.monotonic() - started < 3.0
    # The server sees the deadline: it waits for a revision it will not reach until just before it.
    client = connect(replicas.start().target, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(FailedPrecondition, match="older than min_revision 1000000"):
        client.check_access("acme", "read", "docs/1", subject="user:alice", min_revision=10**6)
    assert time.monotonic() - started >= 0.3  # the server waited: it knew the deadline


def test_calls_are_spread_round_robin(replicas: Replicas, connect: Callable[..., Any]) -> None:
    servers = [replicas.start() for _ in range(3)]
    client = connect([server.target for server in servers])
    consume_many(client, 300)
    counts = [spent(server) for server in servers]
    assert sum(counts) == 300
    assert all(80 <= count <= 120 for count in counts), counts  # about a third each


def test_a_replica_that_is_down_fails_no_call(replicas: Replicas, connect: Callable[..., Any]) -> None:
    servers = [replicas.start() for _ in range(3)]
    client = connect([server.target for server in servers])
    consume_many(client, 30)
    before = [spent(server) for server in servers]
    assert all(before), before  # every replica was in use
    replicas.stop(servers[1])
    consume_many(client, 200)  # none raises
    after = [spent(servers[0]), spent(servers[2])]
    assert sum(after) == 230 - before[1]
    assert after[0] > before[0] and after[1] > before[2]


def test_a_replica_refusing_calls_is_retried_on_another(replicas: Replicas, connect: Callable[..., Any]) -> None:
    servers = [replicas.start() for _ in range(2)]
    targets = [server.target for server in servers]
    retrying, single_try = connect(targets), connect(targets, retry=NO_RETRIES)
    consume_many(retrying, 10)
    consume_many(single_try, 10)
    before = [spent(server) for server in servers]
    # As a draining server does after its drain delay: UNAVAILABLE before any work, while still in the balancer.
    servers[1].server.admission.refuse()
    consume_many(retrying, 100)  # gRPC's retry policy sends each refused attempt again, to the other replica
    refused = 0
    for _ in range(20):
        try:
            single_try.consume_quota("metered", {"calls": 1})
        except Unavailable:
            refused += 1
    assert refused > 0  # without retries, the calls balanced to the refusing replica fail
    servers[1].server.admission.refusing = False
    assert spent(servers[1]) == before[1]  # it spent nothing for the calls it refused
    assert spent(servers[0]) == before[0] + 100 + 20 - refused


def test_only_serving_replicas_get_calls(replicas: Replicas, connect: Callable[..., Any]) -> None:
    servers = [replicas.start() for _ in range(2)]
    set_health(servers[1], health_pb2.HealthCheckResponse.NOT_SERVING)  # as while draining or not yet loaded
    consume_many(connect([server.target for server in servers]), 50)
    assert [spent(server) for server in servers] == [50, 0]
    # Without health checks, the balancer knows only connections.
    consume_many(connect([server.target for server in servers], health_check=False), 50)
    assert spent(servers[1]) > 0


def test_wait_for_ready_waits_for_a_serving_replica(replicas: Replicas, connect: Callable[..., Any]) -> None:
    server = replicas.start()
    set_health(server, health_pb2.HealthCheckResponse.NOT_SERVING)
    with pytest.raises(Unavailable):
        connect(server.target).resolve_tenant("acme")
    # No retries: what keeps the call waiting is wait-for-ready alone.
    patient = connect(server.target, wait_for_ready=True, retry=NO_RETRIES, timeout=30.0)
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(patient.resolve_tenant, "acme")
        with pytest.raises(TimeoutError):
            answer.result(timeout=0.5)  # still waiting
        set_health(server, health_pb2.HealthCheckResponse.SERVING)
        assert answer.result(timeout=10).tenant_id == "acme"


def test_read_your_writes(replicas: Replicas, connect: Callable[..., Any], store: SQLiteStore,
                          master_key: MasterKey, issuer: Issuer) -> None:
    # Two replicas whose syncers read the registry once a second: an apply reaches them up to a second late.
    servers = [replicas.start(sync_interval=1.0) for _ in range(2)]
    client = connect([server.target for server in servers])
    assert not client.check_access("acme", "read", "docs/1", subject="user:zed")
    applied = store.apply(manifests(documents(issuer, zed=True)), key_factory=tenant_key_factory(master_key))
    assert applied.revision == 2
    client.observe_revision(applied.revision)
    for _ in range(4):  # both replicas, each answering at the revision of the write
        decision = client.check_access("acme", "read", "docs/1", subject="user:zed")
        assert decision.allowed and decision.revision == 2
    client.observe_revision(1)
    assert client.min_revision == 2  # never lowered
    assert client.resolve_tenant("acme").revision == 2
    # Every call sends it: a revision no replica has reached is waited for, then FailedPrecondition.
    client.observe_revision(10**6)
    for call in (lambda: client.check_access("acme", "read", "docs/1", subject="user:zed", timeout=0.3),
                 lambda: client.check_access_batch([Check("acme", "read", "docs/1", subject="user:zed")], timeout=0.3),
                 lambda: client.resolve_tenant("acme", timeout=0.3),
                 lambda: client.consume_quota("metered", {"calls": 1}, timeout=0.3),
                 lambda: client.validate_token(issuer.token("acme", "alice"), timeout=0.3),
                 lambda: client.get_tenant_key_metadata("acme", "data", timeout=0.3),
                 lambda: client.check_tenant_access("acme", subject="user:zed", timeout=0.3),
                 lambda: client.list_subject_tenants("user:zed", "acme", timeout=0.3)):
        with pytest.raises(FailedPrecondition):
            call()


def test_mutual_tls_from_files_and_from_bytes(replicas: Replicas, connect: Callable[..., Any],
                                              tmp_path: Path) -> None:
    certificates = tmp_path / "certs"
    make_dev_certificates(certificates, ["storage", "web"])
    tls = {"tls_cert": str(certificates / "server.pem"), "tls_key": str(certificates / "server-key.pem"),
           "client_ca": str(certificates / "ca.pem"), "trust_caller_metadata": False}
    servers = [replicas.start(**tls) for _ in range(2)]
    storage_tls = ChannelSecurity(str(certificates / "ca.pem"), str(certificates / "client-storage.pem"),
                                  str(certificates / "client-storage-key.pem"))
    # IP addresses: checked against the first (the server certificate holds 127.0.0.1).
    storage = connect([server.target for server in servers], security=storage_tls)
    assert storage.get_tenant_key("acme", "data").key_id == "acme/data/v1"  # the certificate names the caller
    consume_many(storage, 10)
    for server in servers:  # both replicas answered, over TLS
        alone = connect(server.target, security=storage_tls)
        assert alone.consume_quota("metered", {"calls": 0}).item("calls").remaining < METERED_LIMIT
    # Host names, and PEM bytes: checked against "localhost", which the server certificate holds too.
    web = connect([f"localhost:{server.server.port}" for server in servers], security=ChannelSecurity(
        ca_pem=(certificates / "ca.pem").read_bytes(), cert_pem=(certificates / "client-web.pem").read_bytes(),
        key_pem=(certificates / "client-web-key.pem").read_bytes()))
    with pytest.raises(PermissionDenied, match="'service:web'"):
        web.get_tenant_key("acme", "data")
    assert web.check_access("acme", "read", "docs/1", subject="user:alice")
    named = connect([server.target for server in servers], security=storage_tls, server_name="localhost")
    assert named.resolve_tenant("acme").tenant_id == "acme"
    with pytest.raises(Unavailable):
        connect(servers[0].target).resolve_tenant("acme")  # plaintext to a TLS server: no session at all
    with pytest.raises(ConfigurationError, match="both a client certificate and its private key"):
        connect(servers[0].target, security=ChannelSecurity(str(certificates / "ca.pem"),
                                                            str(certificates / "client-web.pem")))
