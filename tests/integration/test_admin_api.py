"""The Admin API (RegistryService) on its own port, against both registry stores."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import grpc
import pytest
import yaml

from tenantgate.keywrap import MasterKey
from tenantgate.v1 import decision_pb2 as dpb
from tenantgate.v1 import registry_pb2 as pb
from tests.conftest import EXAMPLES, RunningServer, tenant_doc

OPS = (("x-tenantgate-caller", "user:ops"),)
STORAGE = (("x-tenantgate-caller", "service:storage"),)


@pytest.fixture
def server(registry_url: str, master_key: MasterKey, start_server: Callable[..., RunningServer]) -> RunningServer:
    running = start_server(master_key)
    running.wait_synced(0)
    files = [pb.ManifestFile(name=path.name, content=path.read_text()) for path in sorted(EXAMPLES.glob("*.yaml"))]
    response = running.admin.ApplyManifests(pb.ApplyManifestsRequest(files=files), metadata=OPS)
    running.wait_synced(response.revision)
    return running


def manifest(document: dict) -> pb.ManifestFile:
    return pb.ManifestFile(name="inline.yaml", content=yaml.safe_dump(document))


def code_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details() or ""


def test_apply_dry_run_apply_and_read_your_writes(server: RunningServer) -> None:
    changed = tenant_doc("globex", plan="enterprise", environments=["prod"])
    dry = server.admin.ApplyManifests(pb.ApplyManifestsRequest(files=[manifest(changed)], dry_run=True))
    assert dry.dry_run and dry.revision == 1
    (change,) = dry.changes
    assert change.action == "update" and "~ spec.plan: starter -> enterprise" in change.differences
    applied = server.admin.ApplyManifests(pb.ApplyManifestsRequest(files=[manifest(changed)]), metadata=OPS)
    assert applied.revision == 2
    # The revision an apply returns is the token that makes the next decision see it.
    resolved = server.stub.CheckAccess(dpb.CheckAccessRequest(
        tenant_id="globex", subject="service:auditor", action="read", resource="x", min_revision=applied.revision),
        timeout=5)
    assert resolved.revision >= 2
    assert server.stub.ResolveTenant(dpb.ResolveTenantRequest(tenant_id="globex")).plan == "enterprise"


def test_bad_manifests_are_invalid_argument_and_change_nothing(server: RunningServer) -> None:
    bad = tenant_doc("newco", quotas={"api": {"rate": "5/fortnight"}})
    code, details = code_of(lambda: server.admin.ApplyManifests(pb.ApplyManifestsRequest(files=[manifest(bad)])))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "inline.yaml: document 1: spec.quotas.api.rate: bad rate" in details
    assert server.admin.GetTenant(pb.GetTenantRequest(tenant_id="acme")).revision == 1
    code, _ = code_of(lambda: server.admin.GetTenant(pb.GetTenantRequest(tenant_id="newco")))
    assert code is grpc.StatusCode.NOT_FOUND


def test_get_and_list_tenants(server: RunningServer) -> None:
    acme = server.admin.GetTenant(pb.GetTenantRequest(tenant_id="acme"))
    assert acme.state == dpb.TENANT_STATE_ACTIVE and acme.labels["tier"] == "gold"
    assert json.loads(acme.document_json)["spec"]["plan"] == "professional"
    assert [(k.key_id, k.state) for k in acme.keys] == [("acme/backups/v1", dpb.KEY_STATE_ENABLED),
                                                         ("acme/data/v1", dpb.KEY_STATE_ENABLED)]
    first = server.admin.ListTenants(pb.ListTenantsRequest(page_size=2))
    assert [t.tenant_id for t in first.tenants] == ["acme", "globex"] and first.next_page_token
    second = server.admin.ListTenants(pb.ListTenantsRequest(page_size=2, page_token=first.next_page_token))
    assert [t.tenant_id for t in second.tenants] == ["initech"] and not second.next_page_token
    suspended = server.admin.ListTenants(pb.ListTenantsRequest(state=dpb.TENANT_STATE_SUSPENDED))
    assert [t.tenant_id for t in suspended.tenants] == ["initech"]
    labelled = server.admin.ListTenants(pb.ListTenantsRequest(labels={"region": "us-east"}))
    assert [t.tenant_id for t in labelled.tenants] == ["globex"]
    code, _ = code_of(lambda: server.admin.ListTenants(pb.ListTenantsRequest(page_token="%%%")))
    assert code is grpc.StatusCode.INVALID_ARGUMENT


def test_transitions_reach_the_decision_port(server: RunningServer) -> None:
    suspended = server.admin.TransitionTenant(pb.TransitionTenantRequest(
        tenant_id="acme", state=dpb.TENANT_STATE_SUSPENDED), metadata=OPS)
    assert (suspended.previous_state, suspended.state) == (dpb.TENANT_STATE_ACTIVE, dpb.TENANT_STATE_SUSPENDED)
    decision = server.stub.CheckAccess(dpb.CheckAccessRequest(
        tenant_id="acme", subject="user:alice", action="write", resource="docs/1", min_revision=suspended.revision),
        timeout=5)
    assert decision.reason == dpb.DECISION_REASON_TENANT_NOT_ACTIVE
    code, details = code_of(lambda: server.admin.TransitionTenant(pb.TransitionTenantRequest(
        tenant_id="acme", state=dpb.TENANT_STATE_DRAFT)))
    assert code is grpc.StatusCode.FAILED_PRECONDITION and "from Suspended to Draft" in details
    code, _ = code_of(lambda: server.admin.TransitionTenant(pb.TransitionTenantRequest(tenant_id="acme")))
    assert code is grpc.StatusCode.INVALID_ARGUMENT


def test_key_rotation_serves_the_new_primary_and_keeps_the_old_readable(server: RunningServer) -> None:
    before = server.stub.GetTenantKey(dpb.GetTenantKeyRequest(tenant_id="acme", purpose="data"), metadata=STORAGE)
    rotated = server.admin.RotateTenantKey(pb.RotateTenantKeyRequest(tenant_id="acme", purpose="data"), metadata=OPS)
    assert rotated.key.key_id == "acme/data/v2"
    server.wait_synced(rotated.revision)
    primary = server.stub.GetTenantKey(dpb.GetTenantKeyRequest(tenant_id="acme", purpose="data"), metadata=STORAGE)
    assert primary.version == 2 and primary.material != before.material
    old = server.stub.GetTenantKey(dpb.GetTenantKeyRequest(tenant_id="acme", purpose="data", version=1),
                                   metadata=STORAGE)
    assert old.material == before.material


def test_audit_entries_and_verification(server: RunningServer) -> None:
    server.admin.TransitionTenant(pb.TransitionTenantRequest(tenant_id="acme", state=dpb.TENANT_STATE_SUSPENDED),
                                  metadata=OPS)
    entries = server.admin.ListAuditEntries(pb.ListAuditEntriesRequest(tenant_id="acme")).entries
    assert [e.action for e in entries] == ["tenant.create", "key.create", "key.create", "tenant.transition"]
    assert entries[-1].actor == "user:ops" and entries[-1].detail == "Active -> Suspended"
    verified = server.admin.VerifyAudit(pb.VerifyAuditRequest())
    assert verified.ok and verified.checked >= 7


def test_settings_and_max_tenants(server: RunningServer) -> None:
    assert not server.admin.GetSettings(pb.GetSettingsRequest()).HasField("max_tenants")
    assert server.admin.UpdateSettings(pb.RegistrySettings(max_tenants=3), metadata=OPS).max_tenants == 3
    code, details = code_of(lambda: server.admin.ApplyManifests(pb.ApplyManifestsRequest(
        files=[manifest(tenant_doc("newco"))])))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and "max_tenants" in details


def test_watch_changes_resumes_after_a_disconnect(server: RunningServer) -> None:
    received: list[pb.Change] = []
    stream = server.admin.WatchChanges(pb.WatchChangesRequest(from_revision=0), timeout=10)
    for change in stream:
        received.append(change)
        if len(received) == 3:
            break
    stream.cancel()
    assert [(c.revision, c.tenant_id) for c in received] == [(1, "acme"), (1, "globex"), (1, "initech")]

    def later_changes() -> None:
        for plan in ("a", "b", "c"):
            server.admin.ApplyManifests(pb.ApplyManifestsRequest(files=[manifest(
                tenant_doc("globex", plan=plan, environments=["prod"]))]), timeout=10)

    writer = threading.Thread(target=later_changes, daemon=True)
    resumed = server.admin.WatchChanges(pb.WatchChangesRequest(from_revision=received[-1].revision), timeout=10)
    writer.start()
    for change in resumed:
        received.append(change)
        if change.revision == 4:
            break
    resumed.cancel()
    writer.join(10)
    assert [(c.revision, c.tenant_id, c.action) for c in received[3:]] == [
        (2, "globex", "update"), (3, "globex", "update"), (4, "globex", "update")]
