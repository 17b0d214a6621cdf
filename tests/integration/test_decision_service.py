"""Every DecisionService RPC through the generated stubs against a real server on a loopback port."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from tenantgate import metrics
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


def _batch_checks(issuer: Issuer) -> list[pb.CheckAccessRequest]:
    """Checks that share principals (a batch resolves each once) and differ in everything a principal holds."""
    def check(**fields: Any) -> pb.CheckAccessRequest:
        return pb.CheckAccessRequest(**{"tenant_id": "acme", "action": "read", "resource": "docs/1", **fields})

    return [
        check(subject="user:alice"), check(subject="user:alice", action="delete", resource="audit/1"),
        check(subject="user:alice", resource="docs/2"), check(subject="user:carol", resource="secrets/1"),
        check(subject="user:carol", resource="wiki/1"), check(subject="user:bob", action="write"),
        check(subject="user:bob", action="write", environment="dev"),
        check(subject="user:bob", action="write", environment="qa"),
        check(subject="user:bob", action="write", environment="dev", resource="docs/9"),
        check(subject="service:auditor", subject_tenant_id="globex", resource="reports/q3"),
        check(subject="service:auditor", subject_tenant_id="globex", resource="docs/1"),
        check(subject="service:auditor", resource="reports/q3"),
        check(tenant_id="initech", subject="user:peter", resource="billing/1"),
        check(tenant_id="initech", subject="user:peter", resource="docs/1"),
        check(tenant_id="nobody", subject="user:alice"),
        check(token=issuer.token("acme", "alice")), check(token=issuer.token("acme", "alice"), action="delete",
                                                          resource="audit/1"),
        check(token=issuer.token("acme", "alice", expires_in=-60)), check(token="not-a-jwt"),
        check(subject="user:alice", context={"ip": "10.0.0.1"}),
        check(subject="user:alice", action=""), check(subject="user:alice", token="t"), check(),
        check(tenant_id="Not An Id", subject="user:alice"), check(subject="user:alice", resource="r" * 1025),
        check(subject="user:alice", subject_tenant_id="-bad"), check(subject="u" * 257),
        check(subject="user:alice", environment="e" * 64), check(subject="user:alice"),
    ]


def test_a_batch_answers_each_check_as_check_access_answers_it(server: RunningServer, issuer: Issuer) -> None:
    checks = _batch_checks(issuer)
    batch = server.stub.CheckAccessBatch(pb.CheckAccessBatchRequest(
        items=[pb.CheckAccessBatchItem(correlation_id=f"c{index}", check=check) for index, check in enumerate(checks)]))
    assert len(batch.results) == len(checks)
    decision_ids = []
    for index, (check, result) in enumerate(zip(checks, batch.results, strict=True)):
        assert result.correlation_id == f"c{index}"
        try:
            alone = server.stub.CheckAccess(check)
        except grpc.RpcError as error:
            assert result.WhichOneof("outcome") == "error", (index, result)
            field, message = violation_field(error), error.details() or ""
            # The same status and field, named where it sits in the batch (messages that start with the field too).
            prefixed = f"items[{index}].check.{field}"
            assert result.error.field == prefixed, index
            assert (result.error.code, result.error.message) == (
                error.code().value[0], prefixed + message[len(field):] if message.startswith(field) else message), index
            continue
        assert result.WhichOneof("outcome") == "decision", (index, result)
        decided = result.decision
        assert (decided.allowed, decided.reason, decided.rule, decided.revision) == (
            alone.allowed, alone.reason, alone.rule, alone.revision), index
        decision_ids.append(decided.decision_id)
    assert len(set(decision_ids)) == len(decision_ids) > 20
    # Every kind of answer is there: the batch is no subset of the cases.
    assert {r.WhichOneof("outcome") for r in batch.results} == {"decision", "error"}
    assert {r.decision.reason for r in batch.results if r.HasField("decision")} >= {
        pb.DECISION_REASON_ALLOWED, pb.DECISION_REASON_EXPLICIT_DENY, pb.DECISION_REASON_NO_MATCHING_GRANT,
        pb.DECISION_REASON_UNKNOWN_ENVIRONMENT, pb.DECISION_REASON_CROSS_TENANT_DENIED,
        pb.DECISION_REASON_TENANT_NOT_ACTIVE, pb.DECISION_REASON_TENANT_NOT_FOUND, pb.DECISION_REASON_TOKEN_INVALID,
        pb.DECISION_REASON_TOKEN_EXPIRED}


def test_check_access_answers_the_same_message_the_contract_describes(server: RunningServer) -> None:
    # CheckAccess answers pre-serialized bytes (answers.EncodedAnswers): a generic client reads them as the message.
    call = server.channel.unary_unary("/tenantgate.v1.DecisionService/CheckAccess",
                                      request_serializer=pb.CheckAccessRequest.SerializeToString,
                                      response_deserializer=lambda data: data)
    data = call(pb.CheckAccessRequest(tenant_id="acme", subject="user:alice", action="delete", resource="audit/1"))
    answer = pb.CheckAccessResponse.FromString(data)
    assert (answer.allowed, answer.reason, answer.rule, answer.revision) == (
        False, pb.DECISION_REASON_EXPLICIT_DENY, "acme/deny/0", 1)
    assert answer.decision_id and data == answer.SerializeToString()


def test_batch_decisions_are_logged_and_counted_as_check_access_decisions(
        tmp_path: Path, store: RegistryStore, master_key: MasterKey, issuer: Issuer,
        start_server: Callable[..., RunningServer]) -> None:
    store.apply(manifests({doc.tenant.id: doc.document for doc in load_manifests([EXAMPLES])}),
                key_factory=tenant_key_factory(master_key))
    log_path = tmp_path / "decisions.log"
    running = start_server(master_key, decision_log=str(log_path), decision_log_sample=0.0)
    running.wait_synced(1)
    denied = metrics.DECISIONS.labels(metrics.tenant_label("acme"), "EXPLICIT_DENY")
    allowed = metrics.DECISIONS.labels(metrics.tenant_label("acme"), "ALLOWED")
    before = (denied.value, allowed.value)
    checks = [pb.CheckAccessRequest(tenant_id="acme", subject="user:carol", action="read", resource=f"secrets/{i}")
              for i in range(3)] + [pb.CheckAccessRequest(tenant_id="acme", subject="user:carol", action="read",
                                                          resource=f"wiki/{i}") for i in range(4)]
    batch = running.stub.CheckAccessBatch(pb.CheckAccessBatchRequest(
        items=[pb.CheckAccessBatchItem(check=check) for check in checks]))
    assert (denied.value, allowed.value) == (before[0] + 3, before[1] + 4)
    expected = {r.decision.decision_id: c for r, c in zip(batch.results, checks, strict=True) if not r.decision.allowed}
    deadline = time.monotonic() + 5
    while len(log_path.read_text().splitlines() if log_path.exists() else ()) < len(expected):
        assert time.monotonic() < deadline, "the batch's denies did not reach the decision log"
        time.sleep(0.02)
    entries = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert {entry["decision_id"] for entry in entries} == set(expected)
    for entry in entries:
        check = expected[entry["decision_id"]]
        assert (entry["tenant_id"], entry["subject"], entry["subject_tenant_id"], entry["action"], entry["resource"],
                entry["allowed"], entry["reason"], entry["rule"], entry["revision"]) == (
            "acme", "user:carol", "acme", "read", check.resource, False, "EXPLICIT_DENY",
            "acme/roles/viewer/deny/0", 1)
