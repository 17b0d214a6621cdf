"""Operating the server: the metrics endpoint, the decision log, and an apply killed in the middle of a large
manifest. Draining on SIGTERM: test_drain.py."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import yaml

from tenantgate.registry.backends import open_store
from tenantgate.registry.records import RegistryStore
from tenantgate.v1 import decision_pb2 as pb
from tests.conftest import TENANTGATE, RunningServer, manifests, tenant_doc
from tests.integration.test_workers import free_port

ACCESS = {"roles": {"r": {"allow": ["read:*"]}}, "bindings": [{"subject": "user:alice", "roles": ["r"]}]}


def test_metrics_endpoint(store: RegistryStore, start_server: Callable[..., RunningServer]) -> None:
    store.apply(manifests({"acme": tenant_doc("acme", access=ACCESS)}))
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
    store.apply(manifests({"acme": tenant_doc("acme", access=ACCESS)}))
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
