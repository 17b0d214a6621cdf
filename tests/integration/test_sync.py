"""A running server follows the registry: changes from another process, whole changes only, and a
registry that is unreadable at start."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tenantgate.registry.records import RegistryStore
from tenantgate.registry.sqlite import SQLiteStore
from tenantgate.v1 import decision_pb2 as pb
from tests.conftest import TENANTGATE, RunningServer, manifests, tenant_doc


def _write_manifest(path: Path, plan: str) -> None:
    path.write_text(yaml.safe_dump(tenant_doc("acme", plan=plan)))


def test_an_apply_from_another_process_is_served_within_a_second(
        tmp_path: Path, registry_url: str, start_server: Callable[..., RunningServer]) -> None:
    manifest = tmp_path / "acme.yaml"
    _write_manifest(manifest, "free")
    apply = [TENANTGATE, "apply", "-f", str(manifest), "--registry", registry_url]
    subprocess.run(apply, check=True, capture_output=True, timeout=60)
    server = start_server(sync_interval=0.2)  # the default poll interval
    server.wait_synced(1)
    _write_manifest(manifest, "gold")
    subprocess.run(apply, check=True, capture_output=True, timeout=60)
    applied_at = time.monotonic()
    while True:
        plan = server.stub.ResolveTenant(pb.ResolveTenantRequest(tenant_id="acme")).plan
        if plan == "gold":
            break
        assert time.monotonic() - applied_at < 1.0, "the change was not served within 1 s"
        time.sleep(0.01)


def test_a_decision_never_sees_half_a_change(store: RegistryStore,
                                             start_server: Callable[..., RunningServer]) -> None:
    """One apply moves a permission from tenant a1 to tenant b1; every batch, read from one snapshot,
    must see it in exactly one of them."""

    def documents(generation: int) -> dict[str, dict]:
        owner = "a1" if generation % 2 == 0 else "b1"
        return {tenant: tenant_doc(tenant, plan=str(generation), access={
            "roles": {"r": {"allow": ["read:x"] if tenant == owner else ["read:nothing"]}},
            "bindings": [{"subject": "user:u", "roles": ["r"]}]}) for tenant in ("a1", "b1")}

    store.apply(manifests(documents(0)))
    server = start_server(sync_interval=0.001)
    server.wait_synced(1)
    stop = threading.Event()

    def keep_applying() -> None:
        generation = 1
        while not stop.is_set() and generation < 200:
            store.apply(manifests(documents(generation)))
            generation += 1

    writer = threading.Thread(target=keep_applying, daemon=True)
    writer.start()
    batch = pb.CheckAccessBatchRequest(items=[
        pb.CheckAccessBatchItem(check=pb.CheckAccessRequest(tenant_id=t, subject="user:u", action="read",
                                                            resource="x")) for t in ("a1", "b1")])
    revisions = set()
    try:
        deadline = time.monotonic() + 3
        while writer.is_alive() and time.monotonic() < deadline:
            response = server.stub.CheckAccessBatch(batch)
            allowed = [result.decision.allowed for result in response.results]
            assert allowed.count(True) == 1, (response.revision, allowed)
            revisions.add(response.revision)
    finally:
        stop.set()
        writer.join(30)
    assert len(revisions) > 3  # the readers really raced the writer


def test_not_serving_until_the_registry_can_be_read(registry_path: Path, sqlite_store: SQLiteStore,
                                                    start_server: Callable[..., RunningServer]) -> None:
    sqlite_store.apply(manifests({"acme": tenant_doc("acme")}))
    sqlite_store.close()
    good = registry_path.read_bytes()
    registry_path.write_bytes(b"not a database" * 100)
    server = start_server(registry_url=f"sqlite://{registry_path}")
    health = health_pb2_grpc.HealthStub(server.channel)
    time.sleep(0.2)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    registry_path.write_bytes(good)
    server.wait_synced(1)
    deadline = time.monotonic() + 2
    while health.Check(health_pb2.HealthCheckRequest()).status != health_pb2.HealthCheckResponse.SERVING:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert server.stub.ResolveTenant(pb.ResolveTenantRequest(tenant_id="acme")).state == pb.TENANT_STATE_ACTIVE
