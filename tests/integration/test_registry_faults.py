"""The registry goes away while servers run, or before they start: they keep answering from what they
have, say that it is stale, fail closed past max_staleness, and catch up losing no change. A server never
creates a registry, and never lets another registry, or an older revision, replace its last-known-good file
unless told to."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from tenantgate.clock import FakeClock
from tenantgate.errors import StorageError
from tenantgate.keywrap import MasterKey, tenant_key_factory
from tenantgate.registry.backends import open_store
from tenantgate.registry.sqlite import SQLiteStore
from tenantgate.sync import lastgood
from tenantgate.v1 import decision_pb2 as pb
from tests.conftest import TENANTGATE, RunningServer, manifests, tenant_doc
from tests.faults import TcpProxy

ALICE = pb.CheckAccessRequest(tenant_id="acme", subject="user:alice", action="read", resource="docs/1")
ACCESS = {"roles": {"r": {"allow": ["read:*"]}}, "bindings": [{"subject": "user:alice", "roles": ["r"]}]}


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def serving(server: RunningServer) -> bool:
    health = health_pb2_grpc.HealthStub(server.channel)
    return bool(health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING)


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
        store.apply(manifests({"acme": tenant_doc("acme", access=ACCESS, **spec)}))
        store.close()

    def break_it(self, **changes_while_down: object) -> None:
        """Keep a copy with ``changes_while_down`` applied, and put garbage in the registry's place."""
        shutil.copy(self.path, self.spare)
        store = SQLiteStore(self.spare)
        store.apply(manifests({"acme": tenant_doc("acme", access=ACCESS, **changes_while_down)}))
        store.close()
        self.make_unreadable()

    def make_unreadable(self) -> None:
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


def test_a_retired_key_version_stays_refused_after_a_cold_start(registry_path: Path, tmp_path: Path,
                                                                master_key: MasterKey,
                                                                start_server: Callable[..., RunningServer]) -> None:
    store = SQLiteStore(registry_path)
    keys = {"purposes": ["data"], "readers": ["service:storage"]}
    store.apply(manifests({"acme": tenant_doc("acme", keys=keys)}), key_factory=tenant_key_factory(master_key))
    store.rotate_key("acme", "data", key_factory=tenant_key_factory(master_key))
    store.update_key("acme", "data", min_decryption_version=2)  # v1 retired
    store.close()
    snapshot_file = tmp_path / "last-known-good.json"
    registry_url = f"sqlite://{registry_path}"
    first = start_server(master_key, registry_url=registry_url, snapshot_file=str(snapshot_file))
    first.wait_synced(3)
    wait_until(lambda: lastgood.identify(snapshot_file) is not None)
    BreakableSQLite(registry_path).make_unreadable()

    cold = start_server(master_key, registry_url=registry_url, snapshot_file=str(snapshot_file))
    wait_until(lambda: serving(cold))
    assert stale(cold)
    storage = (("x-tenantgate-caller", "service:storage"),)
    with pytest.raises(grpc.RpcError) as refused:
        cold.stub.GetTenantKey(pb.GetTenantKeyRequest(tenant_id="acme", purpose="data", version=1), metadata=storage)
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "below the min_decryption_version (2)" in (refused.value.details() or "")
    primary = cold.stub.GetTenantKey(pb.GetTenantKeyRequest(tenant_id="acme", purpose="data"), metadata=storage)
    assert primary.version == 2


def test_a_server_never_creates_its_registry_and_keeps_its_file_from_another(
        sqlite_registry: BreakableSQLite, tmp_path: Path, start_server: Callable[..., RunningServer],
        caplog: pytest.LogCaptureFixture) -> None:
    snapshot_file = tmp_path / "last-known-good.json"
    first = start_server(registry_url=f"sqlite://{sqlite_registry.path}", snapshot_file=str(snapshot_file))
    first.wait_synced(1)
    wait_until(lambda: lastgood.identify(snapshot_file) is not None)
    good = snapshot_file.read_bytes()

    # Pointed at a registry nobody has created (a typo, a volume not mounted): the server serves the file.
    missing = tmp_path / "new" / "registry.db"
    second = start_server(registry_url=f"sqlite://{missing}", snapshot_file=str(snapshot_file))
    wait_until(lambda: serving(second))
    assert stale(second) and plan(second) == "v1"
    assert f"no registry at sqlite://{missing}: the file does not exist" in caplog.text
    assert not missing.parent.exists()
    assert snapshot_file.read_bytes() == good

    # An admin creates it: the server follows it, and keeps the file of the other registry.
    manifest = tmp_path / "acme.yaml"
    manifest.write_text(yaml.safe_dump(tenant_doc("acme", access=ACCESS, plan="v2")))
    subprocess.run([TENANTGATE, "apply", "-f", str(manifest), "--registry", f"sqlite://{missing}"], check=True,
                   capture_output=True, timeout=60)
    wait_until(lambda: not stale(second) and plan(second) == "v2")
    assert second.stub.CheckAccess(ALICE).allowed
    wait_until(lambda: "keeping the last-known-good snapshot" in caplog.text)
    assert snapshot_file.read_bytes() == good

    # Told to, a server lets the new registry replace it.
    third = start_server(registry_url=f"sqlite://{missing}", snapshot_file=str(snapshot_file),
                         replace_snapshot_file=True)
    third.wait_synced(1)
    new_registry = SQLiteStore(missing)
    wait_until(lambda: lastgood.identify(snapshot_file) == lastgood.Held(new_registry.load().registry_id, 1))
    new_registry.close()


def test_serving_opens_only_a_registry_that_exists(registry_url: str, tmp_path: Path) -> None:
    served = open_store(registry_url, create=False)
    with pytest.raises(StorageError, match=r"no registry at .*A server never creates a registry"):
        served.current_revision()
    if registry_url.startswith("sqlite://"):
        assert not Path(registry_url.removeprefix("sqlite://")).exists()
    else:
        import psycopg

        with psycopg.connect(registry_url) as conn:  # not even the schema ledger was made
            assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
    admin = open_store(registry_url)
    admin.apply(manifests({"acme": tenant_doc("acme")}))
    assert served.current_revision() == 1  # the same store picks it up once it exists
    assert served.load().registry_id == admin.load().registry_id
    served.close()
    admin.close()


def test_serving_takes_an_empty_sqlite_file_for_no_registry(registry_path: Path) -> None:
    registry_path.touch()
    served = SQLiteStore(registry_path, create=False)
    with pytest.raises(StorageError, match="the file holds no registry"):
        served.current_revision()
    assert registry_path.stat().st_size == 0
    served.close()


def test_serving_upgrades_a_registry_made_before_it_had_an_identity(registry_url: str) -> None:
    admin = open_store(registry_url)
    admin.apply(manifests({"acme": tenant_doc("acme")}))
    admin.close()
    if registry_url.startswith("sqlite://"):
        import sqlite3

        db = sqlite3.connect(registry_url.removeprefix("sqlite://"))
        with db:
            db.execute("DELETE FROM schema_migrations WHERE version = 3")
            db.execute("DELETE FROM meta WHERE key = 'registry_id'")
        db.close()
    else:
        import psycopg

        with psycopg.connect(registry_url) as conn:
            conn.execute("DELETE FROM schema_migrations WHERE version = 3")
            conn.execute("DELETE FROM meta WHERE key = 'registry_id'")
    served = open_store(registry_url, create=False)
    state = served.load()
    assert state.revision == 1 and set(state.tenants) == {"acme"}
    assert len(state.registry_id) == 32
    served.close()


def test_max_staleness_fails_closed(sqlite_registry: BreakableSQLite,
                                    start_server: Callable[..., RunningServer]) -> None:
    clock = FakeClock()
    server = start_server(registry_url=f"sqlite://{sqlite_registry.path}", max_staleness=30.0, clock=clock)
    server.wait_synced(1)
    sqlite_registry.break_it(plan="v2")
    wait_until(lambda: stale(server))  # every read of the registry fails from now on
    clock.advance(30)
    assert server.stub.CheckAccess(ALICE).allowed  # stale, but within the max staleness
    assert REGISTRY.get_sample_value("tenantgate_snapshot_staleness_seconds") == 30
    clock.advance(1)
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
    direct.apply(manifests({"acme": tenant_doc("acme", access=ACCESS, plan="v1")}))
    server = start_server(registry_url=proxied_url)
    server.wait_synced(1)
    proxy.cut()
    wait_until(lambda: stale(server))
    # Committed while the server is cut off:
    direct.apply(manifests({"acme": tenant_doc("acme", access=ACCESS, plan="v2")}))
    direct.apply(manifests({"acme": tenant_doc("acme", access=ACCESS, plan="v3")}))
    assert server.stub.CheckAccess(ALICE).allowed and plan(server) == "v1"
    proxy.restore()
    wait_until(lambda: not stale(server) and plan(server) == "v3", timeout=15)
    direct.close()


def test_postgres_notify_wakes_followers_before_the_poll(postgres_url: str,
                                                         start_server: Callable[..., RunningServer]) -> None:
    store = open_store(postgres_url)
    store.apply(manifests({"acme": tenant_doc("acme", plan="v1")}))
    server = start_server(registry_url=postgres_url, sync_interval=30.0)
    server.wait_synced(1)
    time.sleep(0.3)  # the syncer is now waiting on LISTEN, its next poll 30 s away
    started = time.monotonic()
    store.apply(manifests({"acme": tenant_doc("acme", plan="v2")}))
    wait_until(lambda: plan(server) == "v2", timeout=1.0)
    assert time.monotonic() - started < 1.0
    store.close()
