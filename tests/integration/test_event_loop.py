"""The event loop that answers decisions never applies manifests or compiles tenants itself.

A server answers every call on one event loop. Work that takes longer than a call (an apply of thousands of
tenants through the Admin API; compiling a tenant, which parses, validates and unwraps its keys) runs in
worker threads, so the decisions asked for meanwhile are answered meanwhile.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from tenantgate.keywrap import MasterKey, tenant_key_factory
from tenantgate.registry.backends import open_store
from tenantgate.v1 import decision_pb2 as pb
from tenantgate.v1 import registry_pb2 as rpb
from tests.conftest import Issuer, RunningServer, manifests, tenant_doc

# Enough tenants that the apply takes seconds (parsing, validating, keys made and wrapped, one transaction).
APPLIED_TENANTS = 1500
ACCESS = {"roles": {"reader": {"allow": ["read:*"]}, "editor": {"allow": ["read:docs/*", "write:docs/*"]}},
          "bindings": [{"subject": "user:alice", "roles": ["reader"]}, {"subject": "user:bob", "roles": ["editor"]}],
          "deny": ["delete:audit/*"]}
KEYS = {"purposes": ["data"], "readers": ["service:storage"]}
STORAGE = (("x-tenantgate-caller", "service:storage"),)


def typical_tenant(index: int) -> dict[str, Any]:
    """A tenant as users write them: roles and bindings, quotas, environments, labels and a data key."""
    document = tenant_doc(f"t{index:05d}", plan="team", environments=["dev", "prod"], features=["sso"],
                          quotas={"api-requests": {"rate": "1000/minute", "burst": 100},
                                  "users": {"allocation": 50}, "ai-requests": {"limit": 10000, "period": "month"}},
                          access=ACCESS, keys=KEYS)
    document["metadata"]["labels"] = {"region": ["eu", "us", "ap"][index % 3], "plan": "team"}
    return document


def registry_with(path: Path, master_key: MasterKey, documents: dict[str, dict[str, Any]]) -> str:
    url = f"sqlite://{path}"
    store = open_store(url)
    try:
        store.apply(manifests(documents), key_factory=tenant_key_factory(master_key))
    finally:
        store.close()
    return url


def test_decisions_keep_flowing_while_a_large_apply_commits(
        tmp_path: Path, master_key: MasterKey, start_server: Callable[..., RunningServer]) -> None:
    url = registry_with(tmp_path / "registry.db", master_key, {"acme": tenant_doc("acme", access=ACCESS)})
    server = start_server(master_key, registry_url=url)
    server.wait_synced(1)
    files = [rpb.ManifestFile(name=f"t{i:05d}.yaml", content=json.dumps(typical_tenant(i)))
             for i in range(APPLIED_TENANTS)]
    outcome: dict[str, Any] = {}

    def apply() -> None:
        try:
            outcome["response"] = server.admin.ApplyManifests(rpb.ApplyManifestsRequest(files=files), timeout=170)
        finally:
            outcome["returned"] = time.monotonic()

    check = pb.CheckAccessRequest(tenant_id="acme", subject="user:alice", action="read", resource="docs/1")
    waits: list[tuple[float, float]] = []  # (asked, answered) of each decision while the apply runs
    applying = threading.Thread(target=apply, daemon=True)
    started = time.monotonic()
    applying.start()
    while "returned" not in outcome:
        asked = time.monotonic()
        assert server.stub.CheckAccess(check, timeout=170).allowed
        waits.append((asked, time.monotonic()))
    applying.join(10)
    assert outcome["response"].revision == 2 and len(outcome["response"].changes) == APPLIED_TENANTS

    returned = outcome["returned"]
    answered_before = [answered for _, answered in waits if answered < returned]
    # Decisions were answered while the apply was in progress, not held until it returned...
    assert len(answered_before) >= 20, f"only {len(answered_before)} decisions answered during the apply"
    # ...and throughout it: none waited for a large part of it (the part on the event loop, were there one).
    longest = max(answered - asked for asked, answered in waits)
    assert longest < (returned - started) / 3, \
        f"a decision waited {longest:.2f} s during an apply of {returned - started:.2f} s"
    server.wait_synced(2, timeout=60)
    after = server.stub.CheckAccess(pb.CheckAccessRequest(tenant_id=f"t{APPLIED_TENANTS - 1:05d}", subject="user:bob",
                                                          action="write", resource="docs/1"), timeout=10)
    assert after.allowed and after.revision == 2


def break_stored_document(path: Path, tenant_id: str) -> None:
    """Edit a stored document behind the registry's back into one this version cannot compile."""
    with sqlite3.connect(path) as db:
        (text,) = db.execute("SELECT document FROM tenants WHERE id = ?", (tenant_id,)).fetchone()
        document = json.loads(text)
        document["spec"]["quotas"] = {"api": {"rate": "5/fortnight"}}
        db.execute("UPDATE tenants SET document = ? WHERE id = ?", (json.dumps(document), tenant_id))
    db.close()


def code_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details() or ""


def test_a_tenant_that_cannot_be_compiled_fails_its_own_calls_only(
        tmp_path: Path, master_key: MasterKey, issuer: Issuer, start_server: Callable[..., RunningServer],
        caplog: pytest.LogCaptureFixture) -> None:
    tokens = {"issuers": [issuer.issuer_spec()]}
    quotas = {"api": {"rate": "100/second"}}
    path = tmp_path / "registry.db"
    url = registry_with(path, master_key, {
        "acme": tenant_doc("acme", access=ACCESS, keys=KEYS, quotas=quotas, tokens=tokens),
        "globex": tenant_doc("globex", access=ACCESS, keys=KEYS, quotas=quotas, tokens=tokens)})
    break_stored_document(path, "globex")
    server = start_server(master_key, registry_url=url)
    server.wait_synced(1)
    stub = server.stub
    broken = "tenant 'globex' at revision 1 cannot be loaded by this server; see its log"

    # Concurrent first calls for the broken tenant: each is refused, none hangs or is INTERNAL.
    futures = [stub.CheckAccess.future(pb.CheckAccessRequest(tenant_id="globex", subject="user:alice", action="read",
                                                             resource="docs/1"), timeout=10) for _ in range(20)]
    for future in futures:
        assert future.code() is grpc.StatusCode.FAILED_PRECONDITION and future.details() == broken
    for call in (
        lambda: stub.CheckAccess(pb.CheckAccessRequest(tenant_id="globex", subject="user:alice", action="read",
                                                       resource="docs/1"), timeout=10),
        lambda: stub.CheckAccess(pb.CheckAccessRequest(tenant_id="acme", token=issuer.token("globex", "alice"),
                                                       action="read", resource="docs/1"), timeout=10),
        lambda: stub.ValidateToken(pb.ValidateTokenRequest(token=issuer.token("globex", "alice")), timeout=10),
        lambda: stub.ConsumeQuota(pb.ConsumeQuotaRequest(tenant_id="globex", items=[pb.QuotaItem(quota="api",
                                                                                               amount=1)]), timeout=10),
        lambda: stub.GetTenantKey(pb.GetTenantKeyRequest(tenant_id="globex", purpose="data"), metadata=STORAGE,
                                  timeout=10),
        lambda: stub.ResolveTenant(pb.ResolveTenantRequest(tenant_id="globex"), timeout=10),
    ):
        assert code_of(call) == (grpc.StatusCode.FAILED_PRECONDITION, broken)
    # Compiled once, however many calls asked: the reason is logged once, not on every call.
    assert caplog.text.count("tenant globex at revision 1 is not loadable") == 1
    assert "spec.quotas.api.rate: bad rate '5/fortnight'" in caplog.text

    # In a batch, the broken tenant's check says it could not be decided; the others are decided.
    batch = stub.CheckAccessBatch(pb.CheckAccessBatchRequest(items=[
        pb.CheckAccessBatchItem(correlation_id=tenant_id, check=pb.CheckAccessRequest(
            tenant_id=tenant_id, subject="user:alice", action="read", resource="docs/1"))
        for tenant_id in ("acme", "globex", "acme")]), timeout=10)
    assert [r.WhichOneof("outcome") for r in batch.results] == ["decision", "error", "decision"]
    assert batch.results[1].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert batch.results[1].error.message == broken and batch.results[0].decision.allowed

    # Every other tenant is served as usual.
    assert stub.CheckAccess(pb.CheckAccessRequest(tenant_id="acme", subject="user:alice", action="read",
                                                  resource="docs/1"), timeout=10).allowed
    assert stub.CheckAccess(pb.CheckAccessRequest(tenant_id="acme", token=issuer.token("acme", "alice"),
                                                  action="read", resource="docs/1"), timeout=10).allowed
    assert stub.ValidateToken(pb.ValidateTokenRequest(token=issuer.token("acme", "alice")), timeout=10).valid
    assert stub.ConsumeQuota(pb.ConsumeQuotaRequest(tenant_id="acme", items=[pb.QuotaItem(quota="api", amount=1)]),
                             timeout=10).allowed
    key = stub.GetTenantKey(pb.GetTenantKeyRequest(tenant_id="acme", purpose="data"), metadata=STORAGE, timeout=10)
    assert len(key.material) == 32
    assert stub.ResolveTenant(pb.ResolveTenantRequest(tenant_id="acme"), timeout=10).tenant_id == "acme"


def test_a_changed_tenant_is_compiled_before_its_snapshot_is_served(
        tmp_path: Path, master_key: MasterKey, start_server: Callable[..., RunningServer]) -> None:
    url = registry_with(tmp_path / "registry.db", master_key, {"acme": tenant_doc("acme", access=ACCESS)})
    server = start_server(master_key, registry_url=url)
    server.wait_synced(1)
    # Loaded at start: compiled when a call first needs it (in a worker thread), so a large registry loads fast.
    assert server.server.holder.current is not None
    assert server.server.holder.current.tenants["acme"].built is None
    applied = server.admin.ApplyManifests(rpb.ApplyManifestsRequest(files=[
        rpb.ManifestFile(name="globex.yaml", content=json.dumps(tenant_doc("globex", access=ACCESS, keys=KEYS)))]))
    server.wait_synced(applied.revision)
    snapshot = server.server.holder.current
    assert snapshot is not None
    globex = snapshot.tenants["globex"].built
    assert globex is not None and len(globex.keys["data"][0].material) == 32
