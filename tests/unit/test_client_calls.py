"""The calls both clients share, without a server: the requests they send, how answers become typed values,
how statuses become errors, and that both clients expose every call with one signature."""

from __future__ import annotations

import inspect

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

import tenantgate.client
import tenantgate.client._calls as calls
from tenantgate import errors
from tenantgate.client import (
    AsyncClient,
    CallError,
    Check,
    CheckFailure,
    Client,
    DeadlineExceeded,
    Decision,
    InvalidArgument,
    NotFound,
    Reason,
    TenantState,
    Unavailable,
)
from tenantgate.client._errors import error_from_status
from tenantgate.v1 import decision_pb2 as pb


def test_reasons_are_the_protocols() -> None:
    assert {f"DECISION_REASON_{reason.value}" for reason in Reason} == set(pb.DecisionReason.keys())


def test_check_access_sends_the_question_and_reads_the_decision() -> None:
    call = calls.check_access("acme", "read", "docs/1", subject="user:alice", environment="prod",
                              context={"ip": "10.0.0.1"}, min_revision=3, timeout=0.5)
    assert (call.method, call.min_revision, call.timeout) == ("CheckAccess", 3, 0.5)
    assert call.request == pb.CheckAccessRequest(tenant_id="acme", subject="user:alice", action="read",
                                                 resource="docs/1", environment="prod", context={"ip": "10.0.0.1"})
    answer = pb.CheckAccessResponse(allowed=True, reason=pb.DECISION_REASON_ALLOWED, rule="acme/r/allow/0",
                                    revision=7, decision_id="d-1")
    decision = call.read(answer)
    assert decision == Decision(True, Reason.ALLOWED, "acme/r/allow/0", 7, "d-1", tenant_id="acme",
                                subject="user:alice", action="read", resource="docs/1")
    assert decision and decision.wire is answer
    # A reason a newer server may send reads as UNSPECIFIED; allowed still says it all.
    assert call.read(pb.CheckAccessResponse(reason=99)).reason is Reason.UNSPECIFIED  # type: ignore[arg-type]
    assert calls.resolve_tenant("acme", min_revision=4).min_revision == 4  # every call reads at a revision


def test_a_batch_answers_decisions_and_failures_in_order() -> None:
    call = calls.check_access_batch([Check("acme", "read", "x", subject="user:a", correlation_id="1"),
                                     Check("acme", "", "x", subject="user:a", token="secret-token")])
    assert [item.correlation_id for item in call.request.items] == ["1", ""]
    answer = pb.CheckAccessBatchResponse(results=[
        pb.CheckAccessBatchResult(correlation_id="1", decision=pb.CheckAccessResponse(revision=2)),
        pb.CheckAccessBatchResult(error=pb.CheckError(code=3, message="action is required", field="action"))])
    decided, failed = call.read(answer)
    assert isinstance(decided, Decision) and decided.correlation_id == "1" and decided.subject == "user:a"
    assert failed == CheckFailure(grpc.StatusCode.INVALID_ARGUMENT, "action is required", "action")
    assert isinstance(failed, CheckFailure) and isinstance(failed.error(), InvalidArgument)
    assert "secret-token" not in repr(Check("acme", "read", "x", token="secret-token"))


def test_answers_are_values_whatever_message_they_were_read_from() -> None:
    """Equal questions answered alike are equal (and hash alike) whichever message carried them; the message
    is in no repr; nothing can be changed in place."""
    call = calls.check_access("acme", "read", "docs/1", subject="user:alice")
    first = call.read(pb.CheckAccessResponse(allowed=True, revision=7, decision_id="d-1"))
    second = call.read(pb.CheckAccessResponse(allowed=True, revision=7, decision_id="d-1", rule=""))
    assert first == second and hash(first) == hash(second)
    assert not first.__ne__(second)  # tuple's own != would compare the messages too
    assert first.wire is not second.wire and "wire" not in repr(first) and "user:alice" in repr(first)
    assert first != call.read(pb.CheckAccessResponse(allowed=True, revision=8, decision_id="d-1"))
    assert first != tuple(first)  # a Decision equals Decisions only
    with pytest.raises(AttributeError):
        first.allowed = False  # type: ignore[misc]
    quota = calls.consume_quota("acme", {"api": 1}).read(pb.ConsumeQuotaResponse(allowed=True, revision=1))
    assert quota == calls.consume_quota("acme", {"api": 1}).read(pb.ConsumeQuotaResponse(allowed=True, revision=1))
    assert "wire" not in repr(quota) and {quota: 1}[quota] == 1


def test_quota_answers_carry_seconds_and_leases() -> None:
    call = calls.consume_quota("acme", {"api": 2, "slots": 1}, idempotency_key="k")
    assert [(item.quota, item.amount) for item in call.request.items] == [("api", 2), ("slots", 1)]
    answer = pb.ConsumeQuotaResponse(allowed=False, revision=4, results=[
        pb.QuotaItemResult(quota="api", allowed=False, limit=10, remaining=1, reset_after=Duration(seconds=9),
                           retry_after=Duration(seconds=1, nanos=500_000_000)),
        pb.QuotaItemResult(quota="slots", allowed=True, limit=3, remaining=2, lease_id="lease-1")])
    result = call.read(answer)
    assert not result and result.revision == 4 and result.tenant_id == "acme"
    assert result.retry_after == 1.5 and result.item("api").reset_after == 9.0
    assert result.lease_ids == {"slots": "lease-1"}
    with pytest.raises(KeyError):
        result.item("nope")


def test_key_material_appears_in_no_repr() -> None:
    material = bytes(range(32))
    answer = pb.GetTenantKeyResponse(key_id="acme/data/v1", version=1, material=material, state=pb.KEY_STATE_ENABLED)
    key = calls.get_tenant_key("acme", "data").read(answer)
    assert key.state is tenantgate.client.KeyState.ENABLED and key.created_at is None
    data_key = calls.get_data_key("acme", "data").read(pb.GetDataKeyResponse(plaintext=material, wrapped=b"w"))
    for value in (key, data_key):
        assert material.hex() not in repr(value) and repr(material) not in repr(value)


def test_tenant_answers() -> None:
    tenant = calls.resolve_tenant("acme").read(pb.ResolveTenantResponse(
        tenant_id="acme", state=pb.TENANT_STATE_SUSPENDED, labels={"tier": "gold"}, environments=["prod"]))
    assert tenant.state is TenantState.SUSPENDED and tenant.environments == ("prod",)
    with pytest.raises(TypeError):
        tenant.labels["tier"] = "silver"  # type: ignore[index]
    assert calls.resolve_tenant("acme").read(pb.ResolveTenantResponse(state=42)).state is None  # type: ignore[arg-type]


def test_statuses_map_to_one_error_hierarchy() -> None:
    error = error_from_status(grpc.StatusCode.NOT_FOUND, "unknown tenant 'x'")
    assert isinstance(error, NotFound) and isinstance(error, errors.NotFound) and isinstance(error, CallError)
    assert str(error) == "NOT_FOUND: unknown tenant 'x'" and error.details == "unknown tenant 'x'"
    assert isinstance(error_from_status(grpc.StatusCode.UNAVAILABLE, ""), errors.Unavailable)
    assert type(error_from_status(grpc.StatusCode.UNAVAILABLE, "")) is Unavailable
    assert type(error_from_status(grpc.StatusCode.DEADLINE_EXCEEDED, "")) is DeadlineExceeded
    internal = error_from_status(grpc.StatusCode.INTERNAL, "boom")
    assert type(internal) is CallError and internal.status is grpc.StatusCode.INTERNAL


def test_both_clients_have_every_call_with_its_signature_and_documentation() -> None:
    builders = {name: function for name, function in inspect.getmembers(calls, inspect.isfunction)
                if not name.startswith("_") and function.__module__ == calls.__name__}
    assert len(builders) == len(pb.DESCRIPTOR.services_by_name["DecisionService"].methods)
    for name, build in builders.items():
        for client in (Client, AsyncClient):
            method = getattr(client, name)
            assert method.__doc__ == build.__doc__ and method.__qualname__ == f"{client.__name__}.{name}"
            parameters = list(inspect.signature(method).parameters)
            assert parameters == ["self", *inspect.signature(build).parameters]
        assert inspect.iscoroutinefunction(getattr(AsyncClient, name))
    assert inspect.signature(Client.check_access).return_annotation is Decision


def test_the_observed_revision_only_grows() -> None:
    with Client("127.0.0.1:1") as client:  # no call is made: nothing needs to listen there
        assert client.min_revision == 0
        client.observe_revision(5)
        client.observe_revision(3)
        assert client.min_revision == 5
        with pytest.raises(ValueError, match="not negative"):
            client.observe_revision(-1)


def test_the_public_api_is_what_all_names() -> None:
    assert all(hasattr(tenantgate.client, name) for name in tenantgate.client.__all__)
    assert {"Client", "AsyncClient", "ClientConfig", "Decision", "QuotaResult", "CallError"} <= set(
        tenantgate.client.__all__)
