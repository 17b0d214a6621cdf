"""Shared fixtures: manifests built in code, a real SQLite registry, and a real server on a loopback port."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tenantgate.clock import Clock
from tenantgate.config import ServeConfig
from tenantgate.keywrap import MasterKey
from tenantgate.registry.backends import open_store
from tenantgate.registry.manifest import ManifestDocument, manifests_from_documents, parse_document
from tenantgate.registry.records import RegistryStore
from tenantgate.registry.sqlite import SQLiteStore
from tenantgate.server.app import TenantgateServer
from tenantgate.snapshot import Snapshot, build_snapshot, build_tenant
from tenantgate.v1 import decision_pb2_grpc, registry_pb2_grpc
from tests.redis_cluster import ClusterUnavailable, RedisCluster

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "manifests"
# The console script installed beside the interpreter running the tests: what users run.
TENANTGATE = str(Path(sys.executable).with_name("tenantgate"))
# Set by `make test` for the integration tests, which run against the wheel installed in a virtualenv.
TESTING_INSTALLED = os.environ.get("TENANTGATE_TEST_INSTALLED") == "1"


def pytest_sessionstart(session: pytest.Session) -> None:
    import tenantgate

    location = Path(tenantgate.__file__).resolve()
    if TESTING_INSTALLED and location.is_relative_to(REPO / "src"):
        raise pytest.UsageError(f"TENANTGATE_TEST_INSTALLED=1 but tenantgate is imported from the source tree "
                                f"({location}): run these tests with the interpreter of a non-editable install")
ISSUER = "https://idp.test.example"


def manifests(documents: Mapping[str, Any] | Iterable[Any]) -> list[ManifestDocument]:
    """Tenant documents (a mapping by tenant id, or any iterable of them) parsed as ``apply`` takes them."""
    return manifests_from_documents(documents.values() if isinstance(documents, Mapping) else documents)


def tenant_doc(tenant_id: str, *, state: str = "Active", **spec: Any) -> dict[str, Any]:
    """A Tenant manifest document; keyword arguments become spec fields."""
    return {"apiVersion": "tenantgate/v1", "kind": "Tenant", "metadata": {"id": tenant_id, "name": tenant_id},
            "spec": {"state": state, **spec}}


def race_with_follower(workers: list[threading.Thread], follower: threading.Thread, workers_done: threading.Event,
                       deadline: float) -> None:
    """Starts ``follower``, then ``workers``; waits for the workers until ``deadline`` (time.monotonic), sets
    ``workers_done`` for the follower, and waits for it until the deadline too. The caller asserts what is
    left alive."""
    follower.start()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(max(0.0, deadline - time.monotonic()))
    workers_done.set()
    follower.join(max(0.0, deadline - time.monotonic()))


def snapshot_of(*documents: dict[str, Any], revision: int = 1) -> Snapshot:
    """A snapshot built straight from documents, for engine tests."""
    views = [build_tenant(parse_document(doc).tenant, revision) for doc in documents]
    return build_snapshot(revision, views, time.time())


class Issuer:
    """A test identity provider: an EC key pair whose public half goes into a tenant's JWKS."""

    def __init__(self, url: str = ISSUER, kid: str = "test-1") -> None:
        self.url = url
        self.kid = kid
        self.private_key = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private_key.public_key()))
        jwk.update({"kid": self.kid, "alg": "ES256"})
        return {"keys": [jwk]}

    def issuer_spec(self, audience: str = "tenantgate") -> dict[str, Any]:
        return {"issuer": self.url, "audience": audience, "tenant_claim": "tid", "jwks": self.jwks()}

    def token(self, tenant_id: str, subject: str, *, expires_in: float = 300, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": self.url, "aud": "tenantgate", "sub": subject, "tid": tenant_id, "iat": now,
                   "exp": now + expires_in, **claims}
        return jwt.encode(payload, self.private_key, algorithm="ES256", headers={"kid": self.kid})


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture
def master_key() -> MasterKey:
    return MasterKey(os.urandom(32))


@pytest.fixture
def master_key_file(tmp_path: Path) -> Path:
    path = tmp_path / "master.key"
    path.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    return path


REQUIRE_SERVICES = os.environ.get("TENANTGATE_REQUIRE_SERVICES") == "1"


def service_url(variable: str, example: str) -> str:
    """A test service's URL from the environment; skips (or, under TENANTGATE_REQUIRE_SERVICES=1, fails)
    when it is not set."""
    url = os.environ.get(variable, "")
    if not url:
        message = f"set {variable} (e.g. {example}) to run these tests"
        if REQUIRE_SERVICES:
            pytest.fail(message + "; TENANTGATE_REQUIRE_SERVICES=1 forbids skipping")
        pytest.skip(message)
    return url


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A database of this run's own on the test PostgreSQL server, dropped at the end."""
    import psycopg

    base = service_url("TENANTGATE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"tenantgate_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(base, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        if REQUIRE_SERVICES:
            pytest.fail(f"PostgreSQL at {base} is not reachable: {exc}")
        pytest.skip(f"PostgreSQL at {base} is not reachable: {exc}")
    yield urlunsplit(urlsplit(base)._replace(path=f"/{name}"))
    with psycopg.connect(base, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(postgres_server_url: str) -> str:
    """An empty schema in this run's database for each test."""
    import psycopg

    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return postgres_server_url


@pytest.fixture
def redis_url() -> str:
    return service_url("TENANTGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    import redis

    prefix = f"tgtest-{os.getpid()}-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        if REQUIRE_SERVICES:
            pytest.fail(f"Redis at {redis_url} is not reachable: {exc}")
        pytest.skip(f"Redis at {redis_url} is not reachable: {exc}")
    yield prefix
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
def quota_backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(quota backend URL, key prefix): each test that takes it runs on memory, on Redis and on a 3-primary
    Redis Cluster."""
    if request.param == "memory":
        return "memory://", "tg:"
    if request.param == "redis-cluster":
        return str(request.getfixturevalue("redis_cluster")), str(request.getfixturevalue("cluster_prefix"))
    return str(request.getfixturevalue("redis_url")), str(request.getfixturevalue("redis_prefix"))


@pytest.fixture
def registry_path(tmp_path: Path) -> Path:
    return tmp_path / "registry.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request: pytest.FixtureRequest, registry_path: Path) -> str:
    """Each test that takes it runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite://{registry_path}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def store(registry_url: str) -> Iterator[RegistryStore]:
    opened = open_store(registry_url)
    yield opened
    opened.close()


@pytest.fixture
def sqlite_store(registry_path: Path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(registry_path)
    yield opened
    opened.close()


ADMIN = "user:ops"


class DefaultCaller(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Sends x-tenantgate-caller: CALLER on calls that carry no metadata of their own."""

    def __init__(self, caller: str) -> None:
        self._metadata = (("x-tenantgate-caller", caller),)

    def _with_caller(self, details: Any) -> Any:
        if details.metadata:
            return details
        return grpc._interceptor._ClientCallDetails(details.method, details.timeout, self._metadata,
                                                    details.credentials, details.wait_for_ready,
                                                    details.compression)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_caller(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_caller(details), request)


class RunningServer:
    """A TenantgateServer on an ephemeral loopback port, on its own event loop thread."""

    def __init__(self, config: ServeConfig, master_key: MasterKey | None, clock: Clock | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: TenantgateServer = self.call(self._start(config, master_key, clock))
        self.target = f"127.0.0.1:{self.server.port}"
        self.admin_target = f"127.0.0.1:{self.server.admin_port}"
        self.channel = grpc.insecure_channel(self.target)
        self.stub = decision_pb2_grpc.DecisionServiceStub(self.channel)
        self.admin_channel = grpc.insecure_channel(self.admin_target)
        # Admin calls name an admin unless a test passes its own metadata.
        self.admin = registry_pb2_grpc.RegistryServiceStub(
            grpc.intercept_channel(self.admin_channel, DefaultCaller(ADMIN)))

    async def _start(self, config: ServeConfig, master_key: MasterKey | None,
                     clock: Clock | None) -> TenantgateServer:
        server = TenantgateServer(config, master_key, clock=clock)
        await server.start()
        return server

    def call(self, coroutine: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def wait_synced(self, revision: int = 0, timeout: float = 5.0) -> None:
        snapshot = self.call(self.server.holder.wait_for_revision(revision, timeout), timeout + 1)
        assert snapshot is not None, f"server did not reach revision {revision} within {timeout}s"

    def stop(self) -> None:
        self.channel.close()
        self.admin_channel.close()
        self.call(self.server.stop(grace=0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def start_server(request: pytest.FixtureRequest) -> Iterator[Callable[..., RunningServer]]:
    """Starts servers on the test's ``registry_url`` (so on SQLite and PostgreSQL), unless given one; on the
    system clock unless given a ``clock`` (a FakeClock, for max staleness, quotas and scheduled rotation)."""
    started: list[RunningServer] = []

    def start(master_key: MasterKey | None = None, clock: Clock | None = None, **settings: Any) -> RunningServer:
        registry_url = settings.pop("registry_url", None)
        if registry_url is None:
            # The test's own registry, created as an admin creates one before the first server starts (a server
            # never creates its registry). A test that names a registry sets it up itself.
            registry_url = request.getfixturevalue("registry_url")
            created = open_store(registry_url)
            created.current_revision()
            created.close()
        settings.setdefault("trust_caller_metadata", True)
        settings.setdefault("admins", (ADMIN,))
        config = ServeConfig(registry=registry_url, listen="127.0.0.1:0", admin_listen="127.0.0.1:0",
                             snapshot_file=settings.pop("snapshot_file", ""),
                             sync_interval=settings.pop("sync_interval", 0.05), **settings)
        server = RunningServer(config, master_key, clock)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _cluster_or_skip(cluster: RedisCluster, timeout: float = 30.0) -> RedisCluster:
    try:
        return cluster.start(timeout)
    except (ClusterUnavailable, OSError) as exc:
        message = f"cannot start a Redis Cluster on this machine: {exc}"
        if REQUIRE_SERVICES:
            pytest.fail(message + "; TENANTGATE_REQUIRE_SERVICES=1 forbids skipping")
        pytest.skip(message)


@pytest.fixture(scope="session")
def redis_cluster_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One 3-primary Redis Cluster (no replicas) for the whole run, stopped at its end. Tests keep to their
    own key prefixes (``cluster_prefix``) and never stop its nodes."""
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield _cluster_or_skip(cluster)
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_cluster(redis_cluster_nodes: RedisCluster) -> str:
    """The URL of the run's 3-primary Redis Cluster: redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3."""
    return redis_cluster_nodes.url


@pytest.fixture
def cluster_prefix(redis_cluster_nodes: RedisCluster) -> Iterator[str]:
    """A key prefix of this test's own on the cluster; every key under it, on every primary, is deleted
    afterwards. No braces in it: the tenant's ``{...}`` stays the keys' hash tag."""
    prefix = f"tgtest-{os.getpid()}-{uuid.uuid4().hex[:8]}:"
    yield prefix
    redis_cluster_nodes.delete(f"{prefix}*")


@pytest.fixture
def start_redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RedisCluster]]:
    """Starts clusters of the test's own (e.g. ``start_redis_cluster(replicas=1, node_timeout_ms=1000)``: 3
    primaries with a replica each, for failover), all stopped when the test ends."""
    started: list[RedisCluster] = []

    def start(primaries: int = 3, replicas: int = 0, node_timeout_ms: int = 5000,
              settings: tuple[str, ...] = ()) -> RedisCluster:
        cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"), primaries, replicas, node_timeout_ms,
                               settings)
        started.append(cluster)
        return _cluster_or_skip(cluster)

    yield start
    for cluster in started:
        cluster.stop()
