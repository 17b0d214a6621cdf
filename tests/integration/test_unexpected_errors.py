"""A bug inside a handler (an exception nobody planned for) must reach the caller as INTERNAL with an incident
id that the server's log repeats, never as a hang, an OK or a deny; and the server keeps answering."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tenantgate.engines.access import Decision, Ruling, Undecided
from tenantgate.engines.quota import QuotaEngine
from tenantgate.registry.backends import open_store
from tenantgate.registry.sqlite import SQLiteStore
from tenantgate.v1 import decision_pb2 as pb
from tenantgate.v1 import registry_pb2 as rpb
from tests.conftest import RunningServer, manifests, tenant_doc

ACCESS = {"roles": {"reader": {"allow": ["read:*"]}}, "bindings": [{"subject": "user:alice", "roles": ["reader"]}]}
# Words of the exception that must stay in the log and out of what the caller sees.
BUG = "bug in the engine: internal detail 7f3a"


class EngineBug(RuntimeError):
    pass


@pytest.fixture
def server(tmp_path: Path, start_server: Callable[..., RunningServer]) -> RunningServer:
    registry_url = f"sqlite://{tmp_path / 'registry.db'}"
    store = open_store(registry_url)
    store.apply(manifests({"acme": tenant_doc("acme", access=ACCESS,
                                              quotas={"calls": {"limit": 10, "period": "day"}})}))
    store.close()
    running = start_server(registry_url=registry_url)
    running.wait_synced(1)
    return running


@pytest.fixture
def server_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.ERROR, logger="tenantgate.server")
    return caplog


def faulty_decide(resource: str) -> Callable[[Ruling, str, str], Decision | Undecided]:
    """Ruling.decide (every access decision goes through it) that raises on ``resource`` and decides every other
    check as before."""
    original = Ruling.decide

    def decide(self: Ruling, action: str, checked: str) -> Decision | Undecided:
        if checked == resource:
            raise EngineBug(BUG)
        return original(self, action, checked)

    return decide


def internal_incident(call: Callable[[], Any], log: pytest.LogCaptureFixture) -> str:
    """Makes ``call``, which must fail INTERNAL naming an incident; returns the incident id after checking that
    the server logged it with the exception, and that the caller saw none of the exception's words."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() is grpc.StatusCode.INTERNAL
    details = caught.value.details() or ""
    found = re.fullmatch(r"internal error \(incident ([0-9a-f]{12})\)", details)
    assert found, details
    incident = found.group(1)
    logged = [record for record in log.records if incident in record.getMessage()]
    assert len(logged) == 1, [record.getMessage() for record in log.records]
    assert logged[0].levelno == logging.ERROR and logged[0].exc_info is not None
    assert isinstance(logged[0].exc_info[1], EngineBug) and BUG in log.text
    assert "7f3a" not in details
    return incident


def test_an_unexpected_exception_in_a_decision_is_internal_with_a_logged_incident(
        server: RunningServer, server_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Ruling, "decide", faulty_decide("poison"))
    poisoned = pb.CheckAccessRequest(tenant_id="acme", subject="user:alice", action="read", resource="poison")
    healthy = pb.CheckAccessRequest(tenant_id="acme", subject="user:alice", action="read", resource="docs/1")
    first = internal_incident(lambda: server.stub.CheckAccess(poisoned, timeout=5), server_log)
    second = internal_incident(lambda: server.stub.CheckAccess(poisoned, timeout=5), server_log)
    assert first != second  # one id per incident, so that a report finds its own log line
    # A batch is not answered item by item around the bug: a deny there would disguise it.
    batch = pb.CheckAccessBatchRequest(items=[pb.CheckAccessBatchItem(check=healthy),
                                              pb.CheckAccessBatchItem(check=poisoned)])
    internal_incident(lambda: server.stub.CheckAccessBatch(batch, timeout=5), server_log)
    # The same method on the same server keeps answering everything else.
    assert server.stub.CheckAccess(healthy, timeout=5).allowed
    health = health_pb2_grpc.HealthStub(server.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_an_unexpected_exception_in_an_async_engine_call_is_internal_too(
        server: RunningServer, server_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    async def consume(*args: Any, **kwargs: Any) -> Any:
        raise EngineBug(BUG)

    request = pb.ConsumeQuotaRequest(tenant_id="acme", items=[pb.QuotaItem(quota="calls", amount=1)])
    with monkeypatch.context() as patch:
        patch.setattr(QuotaEngine, "consume", consume)
        internal_incident(lambda: server.stub.ConsumeQuota(request, timeout=5), server_log)
    answered = server.stub.ConsumeQuota(request, timeout=5)
    assert answered.allowed and answered.results[0].remaining == 9  # the failed call spent nothing


def test_an_unexpected_exception_in_an_admin_call_is_internal_too(
        server: RunningServer, server_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    def verify_audit(*args: Any, **kwargs: Any) -> Any:
        raise EngineBug(BUG)

    with monkeypatch.context() as patch:
        patch.setattr(SQLiteStore, "verify_audit", verify_audit)  # the server's registry is SQLite
        internal_incident(lambda: server.admin.VerifyAudit(rpb.VerifyAuditRequest(), timeout=5), server_log)
    assert server.admin.VerifyAudit(rpb.VerifyAuditRequest(), timeout=5).ok
