"""The registry goes away while servers run, or before they start: they keep answering from what they
have, say that it is stale, fail closed past max_staleness, and catch up losing no change."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from tenantgate.registry.sqlite import SQLiteStore
from tenantgate.registry.store import open_store
from tenantgate.v1 import decision_pb2 as pb
from tests.conftest import RunningServer, tenant_doc
from tests.faults import TcpProxy

ALICE = pb.CheckAccessRequest(tenant_id="acme", subject="user:alice", action="read", resource="docs/1")
ACCESS = {"roles": {"r": {"allow": ["read:*"]}}, "bindings": [{"subject": "user:alice", "roles": ["r"]}]}


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def stale(server: RunningServer) -> bool:
    return server.stub.ResolveTenant(pb.ResolveTenantRequest(tenant_id="acme")).stale


def plan(server: RunningServer) -> str:
    """The plan the server answers with; "" while it fails closed."""
    try:
        return server.stub.ResolveTenant(pb.ResolveTenantRequest(tenant_id="acme")).plan
    except grpc.RpcError as error:
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        return ""


class BreakableSQLite:
    """A registry file that can be made unreadable and brought back with changes made meanwhile."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.spare = path.with_name("spare.db")

    def apply(self, **spec: object) -> None:
        store = SQLiteStore(self.path)
        store.apply({"acme": tenant_doc("acme", access=ACCESS, **spec)})
        store.close()

    def break_it(self, **changes_while_down: object) -> None:
        """Keep a copy with ``changes_while_down`` applied, and put garbage in the registry's place."""
        shutil.copy(self.path, self.spare)
        store = SQLiteStore(self.spare)
        store.apply({"acme": tenant_doc("acme", access=ACCESS, **changes_while_down)})
        store.close()
        garbage = self.path.with_name("garbage.db")
        garbage.write_bytes(b"not a database" * 100)
        self._replace_with(garbage)

    def restore(self) -> None:
        """Put the copy back, as restoring a backup would."""
        self._replace_with(self.spare)

    def _replace_with(self, source: Path) -> None:
        staged = self.path.with_name("staged.db")
        shutil.copy(source, staged)
        for suffix in ("-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        os.replace(staged, self.path)


@pytest.fixture
def sqlite_registry(registry_path: Path) -> BreakableSQLite:
    registry = BreakableSQLite(registry_path)
    registry.apply(plan="v1")
    return registry


def test_sqlite_unreadable_mid_run(sqlite_registry: BreakableSQLite,
                                   start_server: Callable[..., RunningServer]) -> None:
    server = start_server(registry_url=f"sqlite://{sqlite_registry.path}")
    server.wait_synced(1)
    assert not stale(server)
    sqlite_registry.break_it(plan="v2")
    wait_until(lambda: stale(server))
    assert server.stub.CheckAccess(ALICE).allowed  # still answering from the snapshot
    assert REGISTRY.get_sample_value("tenantgate_snapshot_stale") == 1
    sqlite_registry.restore()
    wait_until(lambda: not stale(server) and plan(server) == "v2")
    assert REGISTRY.get_sample_value("tenantgate_snapshot_stale") == 0


def test_cold_start_from_the_last_known_good_file(sqlite_registry: BreakableSQLite, tmp_path: Path,
                                                  start_server: Callable[..., RunningServer]) -> None:
    snapshot_file = tmp_path / "last-known-good.json"
    registry_url = f"sqlite://{sqlite_registry.path}"
    first = start_server(registry_url=registry_url, snapshot_file=str(snapshot_file))
    first.wait_synced(1)
    wait_until(snapshot_file.exists)
    sqlite_registry.break_it(plan="v2")

    second = start_server(registry_url=registry_url, snapshot_file=str(snapshot_file))
    health = health_pb2_grpc.HealthStub(second.channel)
    wait_until(lambda: health.Check(health_pb2.HealthCheckRequest()).status
               == health_pb2.HealthCheckResponse.SERVING)
    assert stale(second) and plan(second) == "v1"
    assert second.stub.CheckAccess(ALICE).allowed
    sqlite_registry.restore()
    wait_until(lambda: not stale(second) and plan(second) == "v2")


def test_max_staleness_fails_closed(sqlite_registry: BreakableSQLite,
                                    start_server: Callable[..., RunningServer]) -> None:
    server = start_server(registry_url=f"sqlite://{sqlite_registry.path}", max_staleness=0.5)
    server.wait_synced(1)
    sqlite_registry.break_it(plan="v2")
    time.sleep(0.7)
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.CheckAccess(ALICE)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "max staleness" in (caught.value.details() or "")
    sqlite_registry.restore()
    wait_until(lambda: plan(server) == "v2")
    assert server.stub.CheckAccess(ALICE).allowed


@pytest.fixture
def proxied_postgres(postgres_url: str) -> Iterator[tuple[str, TcpProxy]]:
    parts = urlsplit(postgres_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    netloc = f"{parts.username}@127.0.0.1:{proxy.port}" if parts.username else f"127.0.0.1:{proxy.port}"
    yield urlunsplit(parts._replace(netloc=netloc)), proxy
    proxy.close()


def test_postgres_connection_refused_mid_run(postgres_url: str, proxied_postgres: tuple[str, TcpProxy],
                                             start_server: Callable[..., RunningServer]) -> None:
    proxied_url, proxy = proxied_postgres
    direct = open_store(postgres_url)
    direct.apply({"acme": tenant_doc("acme", access=ACCESS, plan="v1")})
    server = start_server(registry_url=proxied_url)
    server.wait_synced(1)
    proxy.cut()
    wait_until(lambda: stale(server))
    direct.apply({"acme": tenant_doc("acme", access=ACCESS, plan="v2")})  # committed while the server is cut off
    direct.apply({"acme": tenant_doc("acme", access=ACCESS, plan="v3")})
    assert server.stub.CheckAccess(ALICE).allowed and plan(server) == "v1"
    proxy.restore()
    wait_until(lambda: not stale(server) and plan(server) == "v3", timeout=15)
    direct.close()


def test_postgres_notify_wakes_followers_before_the_poll(postgres_url: str,
                                                         start_server: Callable[..., RunningServer]) -> None:
    store = open_store(postgres_url)
    store.apply({"acme": tenant_doc("acme", plan="v1")})
    server = start_server(registry_url=postgres_url, sync_interval=30.0)
    server.wait_synced(1)
    time.sleep(0.3)  # the syncer is now waiting on LISTEN, its next poll 30 s away
    started = time.monotonic()
    store.apply({"acme": tenant_doc("acme", plan="v2")})
    wait_until(lambda: plan(server) == "v2", timeout=1.0)
    assert time.monotonic() - started < 1.0
    store.close()
