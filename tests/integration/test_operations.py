"""Operating the server: draining on SIGTERM, the metrics endpoint, the decision log, and an apply killed
in the middle of a large manifest."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import yaml

from tenantgate.registry.sqlite import SQLiteStore
from tenantgate.registry.store import RegistryStore, open_store
from tenantgate.v1 import decision_pb2 as pb
from tenantgate.v1 import decision_pb2_grpc
from tests.conftest import TENANTGATE, RunningServer, tenant_doc
from tests.integration.test_workers import free_port, wait_serving

ACCESS = {"roles": {"r": {"allow": ["read:*"]}}, "bindings": [{"subject": "user:alice", "roles": ["r"]}]}


def test_sigterm_drains_in_flight_calls_and_exits_zero(tmp_path: Path, registry_path: Path,
                                                       sqlite_store: SQLiteStore) -> None:
    sqlite_store.apply({"acme": tenant_doc("acme", access=ACCESS)})
    port = free_port()
    target = f"127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([TENANTGATE, "serve", "--registry", f"sqlite://{registry_path}",
                               "--listen", target, "--admin-listen", "", "--snapshot-file", "",
                               "--grace-period", "10"], stdout=log, stderr=subprocess.STDOUT)
    wait_serving(target)
    failures: list[str] = []
    completed = [0]
    stop = threading.Event()
    signalled_at: list[float] = []

    def load() -> None:
        with grpc.insecure_channel(target) as channel:
            stub = decision_pb2_grpc.DecisionServiceStub(channel)
            # Each call waits for a revision that never comes, so calls are in flight when SIGTERM lands.
            request = pb.CheckAccessRequest(tenant_id="acme", subject="user:alice", action="read", resource="x",
                                            min_revision=2)
            while not stop.is_set():
                started = time.monotonic()
                try:
                    stub.CheckAccess(request, timeout=1.0)
                except grpc.RpcError as error:
                    if error.code() is grpc.StatusCode.FAILED_PRECONDITION:
                        completed[0] += 1  # answered: the revision did not come within the deadline
                    elif not signalled_at or started < signalled_at[0]:
                        failures.append(f"{error.code().name}: {error.details()}")
                    else:
                        return  # refused after SIGTERM: new calls are expected to go elsewhere

    threads = [threading.Thread(target=load) for _ in range(16)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    signalled_at.append(time.monotonic())
    server.send_signal(signal.SIGTERM)
    code = server.wait(30)
    stop.set()
    for thread in threads:
        thread.join(10)
    log.close()
    assert code == 0, (tmp_path / "serve.log").read_text()[-2000:]
    assert failures == [] and completed[0] >= 16


def test_metrics_endpoint(store: RegistryStore, start_server: Callable[..., RunningServer]) -> None:
    store.apply({"acme": tenant_doc("acme", access=ACCESS)})
    port = free_port()
    server = start_server(metrics_listen=f"127.0.0.1:{port}")
    server.wait_synced(1)
    server.stub.CheckAccess(pb.CheckAccessRequest(tenant_id="acme", subject="user:alice", action="read", resource="x"))
    server.stub.CheckAccess(pb.CheckAccessRequest(tenant_id="nobody", subject="user:a", action="read", resource="x"))
    with pytest.raises(grpc.RpcError):
        server.stub.ResolveTenant(pb.ResolveTenantRequest(tenant_id=""))
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in ('tenantgate_rpcs_handled_total{code="OK",method="CheckAccess"}',
                 'tenantgate_rpcs_handled_total{code="INVALID_ARGUMENT",method="ResolveTenant"}',
                 'tenantgate_decisions_total{reason="ALLOWED",tenant="acme"}',
                 'tenantgate_decisions_total{reason="TENANT_NOT_FOUND",tenant="_unknown"}',
                 'tenantgate_rpc_duration_seconds_bucket{le="0.001",method="CheckAccess"}',
                 "tenantgate_snapshot_revision 1.0", "tenantgate_snapshot_staleness_seconds"):
        assert line in body, line


def test_the_decision_log_holds_every_deny_and_sampled_allows(tmp_path: Path, store: RegistryStore,
                                                              start_server: Callable[..., RunningServer]) -> None:
    store.apply({"acme": tenant_doc("acme", access=ACCESS)})
    path = tmp_path / "decisions.log"
    server = start_server(decision_log=str(path), decision_log_sample=0.0)
    server.wait_synced(1)
    allowed = server.stub.CheckAccess(pb.CheckAccessRequest(tenant_id="acme", subject="user:alice", action="read",
                                                            resource="docs/1"))
    denied = server.stub.CheckAccess(pb.CheckAccessRequest(tenant_id="acme", subject="user:bob", action="write",
                                                           resource="docs/1", environment=""))
    deadline = time.monotonic() + 5
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    (entry,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert entry["decision_id"] == denied.decision_id != allowed.decision_id
    assert (entry["tenant_id"], entry["subject"], entry["action"], entry["resource"], entry["allowed"],
            entry["reason"], entry["revision"]) == ("acme", "user:bob", "write", "docs/1", False,
                                                    "NO_MATCHING_GRANT", 1)


def test_an_apply_killed_midway_leaves_the_old_or_the_new_revision(tmp_path: Path, registry_url: str) -> None:
    """Each apply moves 2,000 tenants to a new plan in one transaction; SIGKILL lands at moments spread
    over how long one takes. Afterwards every tenant has the old plan, or every tenant has the new one."""
    def manifest(plan: str) -> Path:
        path = tmp_path / f"{plan}.yaml"
        path.write_text(yaml.safe_dump_all([tenant_doc(f"t{i:05d}", plan=plan, access=ACCESS) for i in range(2000)]))
        return path

    def apply(plan: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([TENANTGATE, "apply", "-f", str(manifest(plan)),
                                 "--registry", registry_url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    started = time.monotonic()
    assert apply("p0").wait(120) == 0
    duration = time.monotonic() - started
    store = open_store(registry_url)
    plan, outcomes = "p0", []
    for round_, fraction in enumerate((0.3, 0.6, 0.8, 0.95), start=1):
        before = store.current_revision()
        process = apply(f"p{round_}")
        time.sleep(duration * fraction)
        process.kill()
        process.wait(10)
        plans = {record.document["spec"]["plan"] for record in store.load().tenants.values()}
        after = store.current_revision()
        assert (after, plans) in ((before, {plan}), (before + 1, {f"p{round_}"})), (fraction, before, after, plans)
        outcomes.append("new" if after > before else "old")
        plan = f"p{round_}" if after > before else plan
    assert store.verify_audit().ok
    store.close()
    assert "old" in outcomes, outcomes
