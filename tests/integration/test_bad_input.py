"""Whatever arrives, the server answers with a status (never INTERNAL), stays up, and holds bounded memory."""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantgate.config import ServeConfig
from tenantgate.engines.quota import MAX_ITEMS
from tenantgate.keywrap import MasterKey, tenant_key_factory
from tenantgate.registry.manifest import load_manifests
from tenantgate.registry.sqlite import SQLiteStore
from tenantgate.server.requests import MAX_IDEMPOTENCY_KEY
from tenantgate.v1 import decision_pb2 as pb
from tenantgate.v1 import registry_pb2 as rpb
from tests.conftest import EXAMPLES, Issuer, RunningServer, manifests, tenant_doc

ANSWERS = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED,
           grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAUTHENTICATED}
text = st.one_of(st.text(max_size=40), st.sampled_from(["", "acme", "globex", "data", "user:alice", "*", "a" * 64,
                                                         "x" * 5000, "\x00", "é" * 30, "../../etc"]))
number = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2**31, 2**32 - 1]))
big = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**62, 2**63, 2**64 - 1]))


def serve(directory: Path, *documents: dict[str, Any], **settings: Any) -> RunningServer:
    """A server of its own on a new registry: the example tenants and ``documents``."""
    path = directory / "registry.db"
    master = MasterKey(os.urandom(32))
    store = SQLiteStore(path)
    tenants = {d.tenant.id: d.document for d in load_manifests([EXAMPLES])}
    store.apply(manifests({**tenants, **{d["metadata"]["id"]: d for d in documents}}),
                key_factory=tenant_key_factory(master))
    store.close()
    config = ServeConfig(registry=f"sqlite://{path}", listen="127.0.0.1:0", admin_listen="127.0.0.1:0",
                         snapshot_file="", trust_caller_metadata=True, admins=("user:ops",),
                         max_message_bytes=64 * 1024, **settings)
    running = RunningServer(config, master)
    running.wait_synced(1)
    return running


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for the module (the property tests send it thousands of requests). Tests on it change no
    tenant; a test that may (the Admin API's) has a server of its own, so the order of tests never matters."""
    running = serve(tmp_path_factory.mktemp("bad-input"))
    yield running
    running.stop()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RunningServer]:
    running = serve(tmp_path)
    yield running
    running.stop()


def answered(call: Callable[[], object]) -> None:
    try:
        call()
    except grpc.RpcError as error:
        assert error.code() in ANSWERS, (error.code(), error.details())


requests = st.one_of(
    st.builds(lambda *a: ("CheckAccess", pb.CheckAccessRequest(
        tenant_id=a[0], subject=a[1], subject_tenant_id=a[2], token=a[3], action=a[4], resource=a[5],
        environment=a[6], context={a[7]: a[8]}, min_revision=a[9] % 2)), *([text] * 9), big),
    st.builds(lambda t, items, key, release: ("ConsumeQuota", pb.ConsumeQuotaRequest(
        tenant_id=t, items=[pb.QuotaItem(quota=q, amount=n, lease_id=lease) for q, n, lease in items],
        idempotency_key=key, release=release)), text,
        st.lists(st.tuples(st.sampled_from(["api-requests", "users", "concurrent-requests", "nope", ""]), big, text),
                 max_size=70), text, st.booleans()),
    st.builds(lambda t, p, v: ("GetTenantKey", pb.GetTenantKeyRequest(tenant_id=t, purpose=p, version=v)),
              text, text, number),
    st.builds(lambda t, p, w: ("DecryptDataKey", pb.DecryptDataKeyRequest(tenant_id=t, purpose=p, wrapped=w)),
              text, text, st.binary(max_size=2000)),
    st.builds(lambda t, p: ("GetTenantKeyMetadata", pb.GetTenantKeyMetadataRequest(tenant_id=t, purpose=p)),
              text, text),
    st.builds(lambda t, p: ("GetDataKey", pb.GetDataKeyRequest(tenant_id=t, purpose=p)), text, text),
    st.builds(lambda t, tenant: ("ValidateToken", pb.ValidateTokenRequest(token=t, tenant_id=tenant)), text, text),
    st.builds(lambda t: ("ResolveTenant", pb.ResolveTenantRequest(tenant_id=t)), text),
    st.builds(lambda checks: ("CheckAccessBatch", pb.CheckAccessBatchRequest(items=[
        pb.CheckAccessBatchItem(correlation_id=c, check=pb.CheckAccessRequest(
            tenant_id=t, subject=s, action=a, resource=r)) for c, t, s, a, r in checks])),
        st.lists(st.tuples(text, text, text, text, text), max_size=20)),
)
admin_requests = st.one_of(
    st.builds(lambda t: ("GetTenant", rpb.GetTenantRequest(tenant_id=t)), text),
    st.builds(lambda size, token, state: ("ListTenants", rpb.ListTenantsRequest(page_size=size, page_token=token,
                                                                                state=state % 6)),
              number, text, number),
    st.builds(lambda t, state, force: ("TransitionTenant", rpb.TransitionTenantRequest(
        tenant_id=t, state=state % 6, force=force)), text, number, st.booleans()),
    st.builds(lambda t, p, v, state: ("UpdateTenantKey", rpb.UpdateTenantKeyRequest(
        tenant_id=t, purpose=p, version=v, state=state % 4)), text, text, number, number),
    st.builds(lambda content: ("ApplyManifests", rpb.ApplyManifestsRequest(
        files=[rpb.ManifestFile(name="fuzz.yaml", content=content)], dry_run=True)),
        st.one_of(text, st.sampled_from(["apiVersion: tenantgate/v1\nkind: Tenant\nmetadata: {id: [1]}\n",
                                         "{{{", "- - -", "apiVersion: tenantgate/v1\nkind: Tenant\n"]))),
    st.builds(lambda t, after, size: ("ListAuditEntries", rpb.ListAuditEntriesRequest(
        tenant_id=t, after_seq=after, page_size=size)), text, big, number),
    st.builds(lambda t: ("GetQuotaUsage", rpb.GetQuotaUsageRequest(tenant_id=t)), text),
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(call=requests)
def test_every_decision_rpc_answers_random_input_with_a_status(server: RunningServer, call: tuple[str, Any]) -> None:
    method, request = call
    answered(lambda: getattr(server.stub, method)(request, timeout=5,
                                                  metadata=(("x-tenantgate-caller", "service:storage"),)))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(call=admin_requests)
def test_every_admin_rpc_answers_random_input_with_a_status(own_server: RunningServer,
                                                           call: tuple[str, Any]) -> None:
    method, request = call
    answered(lambda: getattr(own_server.admin, method)(request, timeout=5))


@pytest.mark.parametrize("payload", [b"\x0a\x03\xff\xfe\xfd", b"\x0a\xff", b"\xff\xff\xff", b"\x12\x05ab"])
@pytest.mark.parametrize("method", ["CheckAccess", "ConsumeQuota", "GetTenantKey", "ResolveTenant"])
def test_bytes_that_are_not_the_message_are_invalid_argument(server: RunningServer, method: str,
                                                             payload: bytes) -> None:
    raw = server.channel.unary_unary(f"/tenantgate.v1.DecisionService/{method}",
                                     request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as caught:
        raw(payload, timeout=5)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert "is not a valid tenantgate.v1." in (caught.value.details() or "")


def test_requests_over_the_size_limit_are_resource_exhausted(server: RunningServer) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.CheckAccess(pb.CheckAccessRequest(tenant_id="acme", subject="user:a", action="r",
                                                      resource="x" * (65 * 1024)), timeout=5)
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_the_server_stays_up_and_memory_stays_bounded(tmp_path: Path) -> None:
    """Idempotency answers are kept per key up to idempotency_cache_size: a flood of distinct keys, each
    answer as large as a call can make it (64 items, a 256-character key), must not grow the process past
    that bound, nor may a flood of garbage tokens. The bound is small here so that a flood can pass it."""
    cap = 300
    quotas = {f"q{i}": {"allocation": 10} for i in range(MAX_ITEMS)}
    running = serve(tmp_path, tenant_doc("flood", quotas=quotas), idempotency_cache_size=cap)
    items = [pb.QuotaItem(quota=f"q{i}", amount=0) for i in range(MAX_ITEMS)]

    def key(n: int) -> str:
        return f"{n:0>{MAX_IDEMPOTENCY_KEY}}"

    def flood(count: int, offset: int) -> None:
        for n in range(offset, offset + count):
            running.stub.ConsumeQuota(pb.ConsumeQuotaRequest(tenant_id="flood", idempotency_key=key(n), items=items),
                                      timeout=10)
            running.stub.CheckAccess(pb.CheckAccessRequest(tenant_id="acme", token=f"a.{n}.b", action="r",
                                                           resource="x"), timeout=10)

    try:
        flood(2 * cap, 0)  # the cache is full: from here on each new answer replaces the oldest
        settled = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        flood(4000, 10_000)
        grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - settled
        # Kept, the 4000 answers would take about 23 MiB (5.7 KiB each).
        assert grown_kib < 8 * 1024, f"peak RSS grew by {grown_kib} KiB over 4000 more distinct keys"
        # What bounds it: the oldest answers are forgotten first (the key is free again), the latest still count.
        another = [pb.QuotaItem(quota="q0", amount=1)]
        assert running.stub.ConsumeQuota(pb.ConsumeQuotaRequest(tenant_id="flood", idempotency_key=key(0),
                                                                items=another), timeout=10).allowed
        with pytest.raises(grpc.RpcError) as caught:
            running.stub.ConsumeQuota(pb.ConsumeQuotaRequest(tenant_id="flood", idempotency_key=key(13_999),
                                                             items=another), timeout=10)
        assert caught.value.code() is grpc.StatusCode.ABORTED
        assert running.stub.ResolveTenant(pb.ResolveTenantRequest(tenant_id="acme")).tenant_id == "acme"
    finally:
        running.stop()


def test_a_hostile_jwks_applied_through_the_admin_api_is_invalid_argument(server: RunningServer,
                                                                          issuer: Issuer) -> None:
    """Each is a problem naming the file, document and member, and nothing is applied."""
    key = issuer.jwks()["keys"][0]
    hostile = {"alg": "none", "kty": ["EC"], "x": "A" * 5000, "crv": "X25519"}
    for member, value in hostile.items():
        document = tenant_doc("jwks-probe", tokens={"issuers": [
            {"issuer": issuer.url, "audience": "tenantgate", "jwks": {"keys": [{**key, member: value}]}}]})
        with pytest.raises(grpc.RpcError) as caught:
            server.admin.ApplyManifests(rpb.ApplyManifestsRequest(files=[rpb.ManifestFile(
                name="probe.yaml", content=yaml.safe_dump(document))]), timeout=10)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, (member, caught.value.details())
        assert f"probe.yaml: document 1: spec.tokens.issuers[0].jwks.keys[0].{member}: " in (
            caught.value.details() or ""), caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        server.admin.GetTenant(rpb.GetTenantRequest(tenant_id="jwks-probe"))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
