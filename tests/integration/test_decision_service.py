"""Every DecisionService RPC through the generated stubs against a real server on a loopback port."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from tenantgate.keywrap import MasterKey, tenant_key_factory
from tenantgate.registry.manifest import load_manifests
from tenantgate.registry.records import RegistryStore
from tenantgate.v1 import decision_pb2 as pb
from tests.conftest import EXAMPLES, Issuer, RunningServer, manifests, tenant_doc

STORAGE = (("x-tenantgate-caller", "service:storage"),)


@pytest.fixture
def server(store: RegistryStore, master_key: MasterKey, issuer: Issuer,
           start_server: Callable[..., RunningServer]) -> RunningServer:
    documents: dict[str, Any] = {doc.tenant.id: doc.document for doc in load_manifests([EXAMPLES])}
    documents["acme"]["spec"]["tokens"]["issuers"].append(issuer.issuer_spec())
    documents["tiny"] = tenant_doc("tiny", quotas={"calls": {"limit": 2, "period": "day"}})
    store.apply(manifests(documents), key_factory=tenant_key_factory(master_key))
    running = start_server(master_key)
    running.wait_synced(1)
    return running


def violation_field(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    return bad_request.field_violations[0].field


def test_check_access(server: RunningServer) -> None:
    allowed = server.stub.CheckAccess(pb.CheckAccessRequest(tenant_id="acme", subject="user:bob", action="write",
                                                            resource="docs/a", environment="dev"))
    assert allowed.allowed and allowed.reason == pb.DECISION_REASON_ALLOWED
    assert allowed.rule == "acme/roles/editor/allow/1" and allowed.revision == 1 and allowed.decision_id
    denied = server.stub.CheckAccess(pb.CheckAccessRequest(tenant_id="acme", subject="user:bob", action="write",
                                                           resource="docs/a", environment="prod"))
    assert not denied.allowed and denied.reason == pb.DECISION_REASON_NO_MATCHING_GRANT
    assert denied.decision_id != allowed.decision_id
    unknown = server.stub.CheckAccess(pb.CheckAccessRequest(tenant_id="nobody", subject="user:bob",
                                                            action="read", resource="x"))
    assert unknown.reason == pb.DECISION_REASON_TENANT_NOT_FOUND


def test_check_access_with_a_token(server: RunningServer, issuer: Issuer) -> None:
    token = issuer.token("acme", "alice")
    response = server.stub.CheckAccess(pb.CheckAccessRequest(tenant_id="acme", token=token, action="delete",
                                                             resource="docs/1"))
    assert response.allowed
    expired = server.stub.CheckAccess(pb.CheckAccessRequest(
        tenant_id="acme", token=issuer.token("acme", "alice", expires_in=-10), action="read", resource="x"))
    assert expired.reason == pb.DECISION_REASON_TOKEN_EXPIRED
    validated = server.stub.ValidateToken(pb.ValidateTokenRequest(token=token))
    assert (validated.valid, validated.tenant_id, validated.subject) == (True, "acme", "user:alice")
    assert validated.expires_at.seconds > 0
    bad = server.stub.ValidateToken(pb.ValidateTokenRequest(token="x.y.z"))
    assert not bad.valid and bad.reason == pb.DECISION_REASON_TOKEN_INVALID and bad.detail


def test_check_access_batch_answers_in_order_and_never_disguises_errors(server: RunningServer) -> None:
    items = [
        pb.CheckAccessBatchItem(correlation_id="a", check=pb.CheckAccessRequest(
            tenant_id="acme", subject="user:alice", action="read", resource="x")),
        pb.CheckAccessBatchItem(correlation_id="b", check=pb.CheckAccessRequest(
            tenant_id="acme", subject="user:carol", action="read", resource="secrets/1")),
        pb.CheckAccessBatchItem(correlation_id="c", check=pb.CheckAccessRequest(
            tenant_id="acme", action="read", resource="x")),
    ]
    response = server.stub.CheckAccessBatch(pb.CheckAccessBatchRequest(items=items))
    assert [r.correlation_id for r in response.results] == ["a", "b", "c"]
    assert response.results[0].decision.allowed
    assert response.results[1].decision.reason == pb.DECISION_REASON_EXPLICIT_DENY
    assert response.results[2].WhichOneof("outcome") == "error"
    assert response.results[2].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert response.results[2].error.field == "items[2].check.subject"
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.CheckAccessBatch(pb.CheckAccessBatchRequest(items=[items[0]] * 1001))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_consume_quota(server: RunningServer) -> None:
    first = server.stub.ConsumeQuota(pb.ConsumeQuotaRequest(
        tenant_id="acme", items=[pb.QuotaItem(quota="api-requests", amount=5), pb.QuotaItem(quota="users", amount=2)]))
    assert first.allowed and first.revision == 1
    assert [(r.quota, r.limit, r.remaining) for r in first.results] == [("api-requests", 100, 95), ("users", 25, 23)]
    over = server.stub.ConsumeQuota(pb.ConsumeQuotaRequest(tenant_id="acme", items=[
        pb.QuotaItem(quota="api-requests", amount=1), pb.QuotaItem(quota="users", amount=100)]))
    assert not over.allowed and [r.allowed for r in over.results] == [True, False]
    lease = server.stub.ConsumeQuota(pb.ConsumeQuotaRequest(tenant_id="acme", items=[
        pb.QuotaItem(quota="concurrent-requests", amount=1)]))
    lease_id = lease.results[0].lease_id
    assert lease.allowed and lease_id
    released = server.stub.ConsumeQuota(pb.ConsumeQuotaRequest(tenant_id="acme", release=True, items=[
        pb.QuotaItem(quota="concurrent-requests", amount=1, lease_id=lease_id)]))
    assert released.allowed and released.results[0].remaining == 10


def test_consume_quota_idempotency(server: RunningServer) -> None:
    request = pb.ConsumeQuotaRequest(tenant_id="tiny", idempotency_key="retry-1",
                                     items=[pb.QuotaItem(quota="calls", amount=1)])
    assert server.stub.ConsumeQuota(request) == server.stub.ConsumeQuota(request)
    remaining = server.stub.ConsumeQuota(pb.ConsumeQuotaRequest(tenant_id="tiny", items=[
        pb.QuotaItem(quota="calls", amount=0)]))
    assert remaining.results[0].remaining == 1
    request.items[0].amount = 2
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.ConsumeQuota(request)
    assert caught.value.code() is grpc.StatusCode.ABORTED


def test_get_tenant_key(server: RunningServer) -> None:
    key = server.stub.GetTenantKey(pb.GetTenantKeyRequest(tenant_id="acme", purpose="data"), metadata=STORAGE)
    assert (key.key_id, key.version, key.algorithm, key.state) == ("acme/data/v1", 1, "AES-256-GCM",
                                                                   pb.KEY_STATE_ENABLED)
    assert len(key.material) == 32 and key.created_at.seconds > 0
    again = server.stub.GetTenantKey(pb.GetTenantKeyRequest(tenant_id="acme", purpose="data", version=1),
                                     metadata=STORAGE)
    assert again.material == key.material
    other = server.stub.GetTenantKey(pb.GetTenantKeyRequest(tenant_id="globex", purpose="data"), metadata=STORAGE)
    assert other.material != key.material
    for metadata, code in [((("x-tenantgate-caller", "service:billing"),), grpc.StatusCode.PERMISSION_DENIED),
                           ((), grpc.StatusCode.PERMISSION_DENIED)]:
        with pytest.raises(grpc.RpcError) as caught:
            server.stub.GetTenantKey(pb.GetTenantKeyRequest(tenant_id="acme", purpose="data"), metadata=metadata)
        assert caught.value.code() is code
        assert key.material.hex() not in (caught.value.details() or "")


def test_resolve_tenant(server: RunningServer) -> None:
    acme = server.stub.ResolveTenant(pb.ResolveTenantRequest(tenant_id="acme"))
    assert (acme.name, acme.state, acme.plan, acme.profile, acme.isolation) == (
        "Acme Corp", pb.TENANT_STATE_ACTIVE, "professional", "multi-tenant", "soft")
    assert list(acme.environments) == ["dev", "staging", "prod"] and dict(acme.labels)["tier"] == "gold"
    assert acme.revision == 1 and not acme.stale
    initech = server.stub.ResolveTenant(pb.ResolveTenantRequest(tenant_id="initech"))
    assert initech.state == pb.TENANT_STATE_SUSPENDED
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.ResolveTenant(pb.ResolveTenantRequest(tenant_id="nobody"))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


def test_min_revision_waits_for_the_snapshot_or_fails_precondition(server: RunningServer,
                                                                   store: RegistryStore) -> None:
    request = pb.CheckAccessRequest(tenant_id="acme", subject="user:alice", action="read", resource="x",
                                    min_revision=2)
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.CheckAccess(request, timeout=0.3)
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    future = server.stub.CheckAccess.future(request, timeout=5)
    documents = {doc.tenant.id: doc.document for doc in load_manifests([EXAMPLES])}
    documents["acme"]["spec"]["plan"] = "enterprise"
    store.apply(manifests(documents))
    assert future.result().revision == 2


def test_health_and_reflection(server: RunningServer) -> None:
    health = health_pb2_grpc.HealthStub(server.channel)
    for service in ("", "tenantgate.v1.DecisionService"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    services = {s.name for s in next(iter(responses)).list_services_response.service}
    assert {"tenantgate.v1.DecisionService", "grpc.health.v1.Health"} <= services


def test_bad_input_gets_a_clear_status_and_the_server_keeps_serving(server: RunningServer) -> None:
    huge = "x" * (1024 * 1024)
    cases: list[tuple[Any, Any, grpc.StatusCode, str]] = [
        (server.stub.CheckAccess, pb.CheckAccessRequest(subject="user:a", action="r", resource="x"),
         grpc.StatusCode.INVALID_ARGUMENT, "tenant_id"),
        (server.stub.CheckAccess, pb.CheckAccessRequest(tenant_id="acme", subject="user:a", resource="x"),
         grpc.StatusCode.INVALID_ARGUMENT, "action"),
        (server.stub.CheckAccess, pb.CheckAccessRequest(tenant_id="acme", subject="user:a", action="r",
                                                        resource=huge), grpc.StatusCode.INVALID_ARGUMENT, "resource"),
        (server.stub.CheckAccess, pb.CheckAccessRequest(tenant_id=huge, subject="user:a", action="r", resource="x"),
         grpc.StatusCode.INVALID_ARGUMENT, "tenant_id"),
        (server.stub.CheckAccess, pb.CheckAccessRequest(tenant_id="Not An Id", subject="user:a", action="r",
                                                        resource="x"), grpc.StatusCode.INVALID_ARGUMENT, "tenant_id"),
        (server.stub.CheckAccess, pb.CheckAccessRequest(tenant_id="acme", subject="user:a", token="t", action="r",
                                                        resource="x"), grpc.StatusCode.INVALID_ARGUMENT, "token"),
        (server.stub.CheckAccess, pb.CheckAccessRequest(tenant_id="acme", token=huge, action="r", resource="x"),
         grpc.StatusCode.INVALID_ARGUMENT, "token"),
        (server.stub.ConsumeQuota, pb.ConsumeQuotaRequest(tenant_id="acme"), grpc.StatusCode.INVALID_ARGUMENT,
         "items"),
        (server.stub.ConsumeQuota, pb.ConsumeQuotaRequest(tenant_id="acme", items=[pb.QuotaItem(quota=huge)]),
         grpc.StatusCode.INVALID_ARGUMENT, "items[0].quota"),
        (server.stub.GetTenantKey, pb.GetTenantKeyRequest(tenant_id="acme"), grpc.StatusCode.INVALID_ARGUMENT,
         "purpose"),
        (server.stub.ResolveTenant, pb.ResolveTenantRequest(), grpc.StatusCode.INVALID_ARGUMENT, "tenant_id"),
    ]
    for method, request, code, field in cases:
        with pytest.raises(grpc.RpcError) as caught:
            method(request, timeout=5)
        assert caught.value.code() is code, (request, caught.value.details())
        assert len(caught.value.details() or "") < 500
        assert violation_field(caught.value) == field
    for method, request, code in [
        (server.stub.ConsumeQuota, pb.ConsumeQuotaRequest(tenant_id="nobody", items=[pb.QuotaItem(quota="q")]),
         grpc.StatusCode.NOT_FOUND),
        (server.stub.ConsumeQuota, pb.ConsumeQuotaRequest(tenant_id="initech", items=[pb.QuotaItem(quota="q")]),
         grpc.StatusCode.FAILED_PRECONDITION),
        (server.stub.GetTenantKey, pb.GetTenantKeyRequest(tenant_id="nobody", purpose="data"),
         grpc.StatusCode.NOT_FOUND),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            method(request, timeout=5)
        assert caught.value.code() is code
    malformed = server.stub.CheckAccess(pb.CheckAccessRequest(tenant_id="acme", token="definitely-not-a-jwt",
                                                              action="read", resource="x"))
    assert malformed.reason == pb.DECISION_REASON_TOKEN_INVALID
    still = server.stub.CheckAccess(pb.CheckAccessRequest(tenant_id="acme", subject="user:alice", action="read",
                                                          resource="x"))
    assert still.allowed


def test_a_token_of_another_tenant_gets_only_what_its_grant_allows(
        store: RegistryStore, master_key: MasterKey, issuer: Issuer,
        start_server: Callable[..., RunningServer]) -> None:
    # acme's user:alice is an admin; globex's user:alice may only read acme's reports, by a grant.
    documents: dict[str, Any] = {doc.tenant.id: doc.document for doc in load_manifests([EXAMPLES])}
    documents["globex"]["spec"]["tokens"] = {"issuers": [issuer.issuer_spec()]}
    documents["acme"]["spec"]["access"]["grants"].append(
        {"tenant": "globex", "subject": "user:alice", "allow": ["read:reports/*"]})
    store.apply(manifests(documents), key_factory=tenant_key_factory(master_key))
    running = start_server(master_key)
    running.wait_synced(1)
    token = issuer.token("globex", "alice")
    beyond = pb.CheckAccessRequest(tenant_id="acme", token=token, action="delete", resource="docs/1")
    granted = pb.CheckAccessRequest(tenant_id="acme", token=token, action="read", resource="reports/q3")
    for _ in range(2):  # verified, then from the token cache
        denied = running.stub.CheckAccess(beyond)
        assert (denied.allowed, denied.reason) == (False, pb.DECISION_REASON_CROSS_TENANT_DENIED)
        allowed = running.stub.CheckAccess(granted)
        assert (allowed.allowed, allowed.rule) == (True, "acme/grants/1/allow/0")
    batch = running.stub.CheckAccessBatch(pb.CheckAccessBatchRequest(items=[
        pb.CheckAccessBatchItem(check=beyond), pb.CheckAccessBatchItem(check=granted)]))
    assert [(r.decision.allowed, r.decision.reason) for r in batch.results] == [
        (False, pb.DECISION_REASON_CROSS_TENANT_DENIED), (True, pb.DECISION_REASON_ALLOWED)]
    # Claiming acme as the token's home does not make it acme's alice: the token is not acme's.
    claimed = running.stub.CheckAccess(pb.CheckAccessRequest(tenant_id="acme", subject_tenant_id="acme", token=token,
                                                             action="delete", resource="docs/1"))
    assert (claimed.allowed, claimed.reason) == (False, pb.DECISION_REASON_TOKEN_INVALID)
