"""GetTenantKey and its siblings as the most trusted calls: callers named by certificates, least
privilege, key versions and states, data keys, and material that never leaks."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY, generate_latest

from tenantgate.certs import make_dev_certificates
from tenantgate.config import ServeConfig
from tenantgate.errors import ConfigurationError
from tenantgate.keywrap import MasterKey, tenant_key_factory
from tenantgate.model import KeyState
from tenantgate.registry.records import RegistryStore
from tenantgate.v1 import decision_pb2 as pb
from tenantgate.v1 import decision_pb2_grpc, registry_pb2_grpc
from tenantgate.v1 import registry_pb2 as rpb
from tests.conftest import RunningServer, manifests, tenant_doc

KEYS = {"purposes": ["data"], "readers": ["service:storage"], "metadata_readers": ["service:inventory"]}


def caller(name: str) -> tuple[tuple[str, str]]:
    return (("x-tenantgate-caller", name),)


def status(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details() or ""


@pytest.fixture
def keyed(store: RegistryStore, master_key: MasterKey) -> RegistryStore:
    store.apply(manifests({"acme": tenant_doc("acme", keys=KEYS), "globex": tenant_doc("globex", keys=KEYS),
                 "initech": tenant_doc("initech", state="Suspended", keys=KEYS)}),
                key_factory=tenant_key_factory(master_key))
    return store


@pytest.fixture
def certificates(tmp_path: Path) -> Path:
    folder = tmp_path / "certs"
    make_dev_certificates(folder, ["storage", "web", "ops"])
    return folder


def tls_stub(certificates: Path, target: str, client: str | None) -> tuple[grpc.Channel, object]:
    chain = (certificates / f"client-{client}.pem").read_bytes() if client else None
    key = (certificates / f"client-{client}-key.pem").read_bytes() if client else None
    credentials = grpc.ssl_channel_credentials((certificates / "ca.pem").read_bytes(), key, chain)
    channel = grpc.secure_channel(target.replace("127.0.0.1", "localhost"), credentials)
    return channel, decision_pb2_grpc.DecisionServiceStub(channel)


@pytest.fixture
def mtls_server(keyed: RegistryStore, master_key: MasterKey, certificates: Path,
                start_server: Callable[..., RunningServer]) -> RunningServer:
    server = start_server(master_key, tls_cert=str(certificates / "server.pem"),
                          tls_key=str(certificates / "server-key.pem"), client_ca=str(certificates / "ca.pem"),
                          trust_caller_metadata=False, admins=("service:ops",))
    server.wait_synced(1)
    return server


def test_mtls_names_the_caller_from_its_certificate(mtls_server: RunningServer, certificates: Path) -> None:
    request = pb.GetTenantKeyRequest(tenant_id="acme", purpose="data")
    channel, storage = tls_stub(certificates, mtls_server.target, "storage")
    key = storage.GetTenantKey(request, timeout=5)  # type: ignore[attr-defined]
    assert key.key_id == "acme/data/v1" and len(key.material) == 32
    channel.close()
    channel, web = tls_stub(certificates, mtls_server.target, "web")
    # A certificate's identity wins over any metadata the caller sends.
    code, details = status(lambda: web.GetTenantKey(request, timeout=5, metadata=caller("service:storage")))  # type: ignore[attr-defined]
    assert code is grpc.StatusCode.PERMISSION_DENIED and "'service:web'" in details
    channel.close()
    channel, anonymous = tls_stub(certificates, mtls_server.target, None)
    code, _ = status(lambda: anonymous.GetTenantKey(request, timeout=5))  # type: ignore[attr-defined]
    assert code is grpc.StatusCode.UNAVAILABLE  # no client certificate: no TLS session at all
    channel.close()
    other = Path(str(certificates) + "-other")
    make_dev_certificates(other, ["storage"])
    foreign = grpc.ssl_channel_credentials((certificates / "ca.pem").read_bytes(),
                                           (other / "client-storage-key.pem").read_bytes(),
                                           (other / "client-storage.pem").read_bytes())
    with grpc.secure_channel(mtls_server.target.replace("127.0.0.1", "localhost"), foreign) as channel:
        code, _ = status(lambda: decision_pb2_grpc.DecisionServiceStub(channel).GetTenantKey(request, timeout=5))
        assert code is grpc.StatusCode.UNAVAILABLE  # signed by another CA


def test_the_admin_api_is_for_admins_only(mtls_server: RunningServer, certificates: Path) -> None:
    target = f"localhost:{mtls_server.server.admin_port}"
    for client, expected in (("ops", None), ("storage", grpc.StatusCode.PERMISSION_DENIED)):
        credentials = grpc.ssl_channel_credentials((certificates / "ca.pem").read_bytes(),
                                                   (certificates / f"client-{client}-key.pem").read_bytes(),
                                                   (certificates / f"client-{client}.pem").read_bytes())
        with grpc.secure_channel(target, credentials) as channel:
            admin = registry_pb2_grpc.RegistryServiceStub(channel)
            request = rpb.TransitionTenantRequest(tenant_id="acme", state=pb.TENANT_STATE_SUSPENDED)
            if expected is None:
                assert admin.TransitionTenant(request, timeout=5).state == pb.TENANT_STATE_SUSPENDED
                entry = admin.ListAuditEntries(rpb.ListAuditEntriesRequest(tenant_id="acme"), timeout=5).entries[-1]
                assert entry.actor == "service:ops"
            else:
                assert status(lambda: admin.TransitionTenant(request, timeout=5))[0] is expected  # noqa: B023


def test_without_tls_metadata_names_nobody_unless_trusted(keyed: RegistryStore, master_key: MasterKey,
                                                          start_server: Callable[..., RunningServer]) -> None:
    server = start_server(master_key, trust_caller_metadata=False)
    server.wait_synced(1)
    request = pb.GetTenantKeyRequest(tenant_id="acme", purpose="data")
    code, details = status(lambda: server.stub.GetTenantKey(request, metadata=caller("service:storage")))
    assert code is grpc.StatusCode.PERMISSION_DENIED and "(anonymous)" in details
    code, _ = status(lambda: server.admin.GetSettings(rpb.GetSettingsRequest()))
    assert code is grpc.StatusCode.UNAUTHENTICATED


def test_plaintext_listeners_stay_on_loopback() -> None:
    with pytest.raises(ConfigurationError, match="not loopback: without TLS"):
        ServeConfig(listen="0.0.0.0:50051")
    with pytest.raises(ConfigurationError, match="admin listen address"):
        ServeConfig(admin_listen="10.1.2.3:50052")
    assert ServeConfig(listen="0.0.0.0:50051", insecure_listen=True).insecure_listen
    assert ServeConfig(listen="0.0.0.0:50051", tls_cert="c.pem", tls_key="k.pem").tls_cert
    with pytest.raises(ConfigurationError, match="need TLS"):
        ServeConfig(client_ca="ca.pem")


@pytest.fixture
def server(keyed: RegistryStore, master_key: MasterKey, start_server: Callable[..., RunningServer]) -> RunningServer:
    running = start_server(master_key)
    running.wait_synced(1)
    return running


def test_least_privilege_and_lifecycle(server: RunningServer) -> None:
    get = pb.GetTenantKeyRequest(tenant_id="acme", purpose="data")
    metadata = pb.GetTenantKeyMetadataRequest(tenant_id="acme", purpose="data")
    assert status(lambda: server.stub.GetTenantKey(get, metadata=caller("service:inventory")))[0] is \
        grpc.StatusCode.PERMISSION_DENIED
    found = server.stub.GetTenantKeyMetadata(metadata, metadata=caller("service:inventory"))
    assert [(v.key_id, v.state) for v in found.versions] == [("acme/data/v1", pb.KEY_STATE_ENABLED)]
    assert found.primary_version == 1
    assert status(lambda: server.stub.GetTenantKeyMetadata(metadata, metadata=caller("service:web")))[0] is \
        grpc.StatusCode.PERMISSION_DENIED
    code, details = status(lambda: server.stub.GetTenantKey(pb.GetTenantKeyRequest(
        tenant_id="initech", purpose="data"), metadata=caller("service:storage")))
    assert code is grpc.StatusCode.FAILED_PRECONDITION and "Suspended" in details
    assert status(lambda: server.stub.GetTenantKey(pb.GetTenantKeyRequest(tenant_id="nope", purpose="data"),
                                                   metadata=caller("service:storage")))[0] is grpc.StatusCode.NOT_FOUND


def test_versions_states_and_min_decryption_version(server: RunningServer, keyed: RegistryStore) -> None:
    storage = caller("service:storage")
    v1 = server.stub.GetTenantKey(pb.GetTenantKeyRequest(tenant_id="acme", purpose="data"), metadata=storage)
    rotated = server.admin.RotateTenantKey(rpb.RotateTenantKeyRequest(tenant_id="acme", purpose="data"))
    disabled = server.admin.UpdateTenantKey(rpb.UpdateTenantKeyRequest(
        tenant_id="acme", purpose="data", version=2, state=pb.KEY_STATE_DISABLED))
    server.wait_synced(disabled.revision)
    assert rotated.revision < disabled.revision
    # The newest enabled version is the primary; a disabled one is refused by name, never replaced.
    assert server.stub.GetTenantKey(pb.GetTenantKeyRequest(tenant_id="acme", purpose="data"),
                                    metadata=storage).version == 1
    code, details = status(lambda: server.stub.GetTenantKey(pb.GetTenantKeyRequest(
        tenant_id="acme", purpose="data", version=2), metadata=storage))
    assert code is grpc.StatusCode.FAILED_PRECONDITION and "acme/data/v2 is disabled" in details
    server.admin.UpdateTenantKey(rpb.UpdateTenantKeyRequest(tenant_id="acme", purpose="data", version=2,
                                                            state=pb.KEY_STATE_ENABLED))
    floor = server.admin.UpdateTenantKey(rpb.UpdateTenantKeyRequest(tenant_id="acme", purpose="data",
                                                                    min_decryption_version=2))
    server.wait_synced(floor.revision)
    code, details = status(lambda: server.stub.GetTenantKey(pb.GetTenantKeyRequest(
        tenant_id="acme", purpose="data", version=1), metadata=storage))
    assert code is grpc.StatusCode.FAILED_PRECONDITION and "below the min_decryption_version (2)" in details
    destroyed = server.admin.UpdateTenantKey(rpb.UpdateTenantKeyRequest(tenant_id="acme", purpose="data", version=1,
                                                                        state=pb.KEY_STATE_DESTROYED))
    server.wait_synced(destroyed.revision)
    (stored_v1, _) = keyed.load().keys["acme"]
    assert stored_v1.state == KeyState.DESTROYED and stored_v1.wrapped == b""
    assert v1.material not in stored_v1.wrapped
    code, details = status(lambda: server.admin.UpdateTenantKey(rpb.UpdateTenantKeyRequest(
        tenant_id="acme", purpose="data", version=1, state=pb.KEY_STATE_ENABLED)))
    assert code is grpc.StatusCode.FAILED_PRECONDITION and "destroyed" in details
    actions = [e.action for e in server.admin.ListAuditEntries(rpb.ListAuditEntriesRequest(tenant_id="acme")).entries]
    assert actions[-5:] == ["key.rotate", "key.disabled", "key.enabled", "key.min_decryption_version",
                            "key.destroyed"]


def test_data_keys(server: RunningServer) -> None:
    storage = caller("service:storage")
    data_key = server.stub.GetDataKey(pb.GetDataKeyRequest(tenant_id="acme", purpose="data"), metadata=storage)
    assert len(data_key.plaintext) == 32 and data_key.plaintext not in data_key.wrapped
    rotated = server.admin.RotateTenantKey(rpb.RotateTenantKeyRequest(tenant_id="acme", purpose="data"))
    server.wait_synced(rotated.revision)
    opened = server.stub.DecryptDataKey(pb.DecryptDataKeyRequest(tenant_id="acme", purpose="data",
                                                                 wrapped=data_key.wrapped), metadata=storage)
    assert opened.plaintext == data_key.plaintext and opened.version == 1  # still opens after a rotation
    assert server.stub.GetDataKey(pb.GetDataKeyRequest(tenant_id="acme", purpose="data"),
                                  metadata=storage).version == 2
    moved = pb.DecryptDataKeyRequest(tenant_id="globex", purpose="data", wrapped=data_key.wrapped)
    assert status(lambda: server.stub.DecryptDataKey(moved, metadata=storage))[0] is grpc.StatusCode.INVALID_ARGUMENT
    garbage = pb.DecryptDataKeyRequest(tenant_id="acme", purpose="data", wrapped=b"x" * 40)
    assert status(lambda: server.stub.DecryptDataKey(garbage, metadata=storage))[0] is grpc.StatusCode.INVALID_ARGUMENT
    denied = pb.DecryptDataKeyRequest(tenant_id="acme", purpose="data", wrapped=data_key.wrapped)
    assert status(lambda: server.stub.DecryptDataKey(denied, metadata=caller("service:web")))[0] is \
        grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture
def captured_logs() -> Iterator[list[str]]:
    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Capture(level=logging.DEBUG)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield lines
    root.removeHandler(handler)
    root.setLevel(previous)


def test_key_material_never_appears_in_logs_errors_audit_or_metrics(
        server: RunningServer, keyed: RegistryStore, captured_logs: list[str]) -> None:
    storage = caller("service:storage")
    secrets: list[bytes] = []
    wrapped: dict[str, bytes] = {}
    for tenant in ("acme", "globex"):
        secrets.append(server.stub.GetTenantKey(pb.GetTenantKeyRequest(tenant_id=tenant, purpose="data"),
                                                metadata=storage).material)
        data_key = server.stub.GetDataKey(pb.GetDataKeyRequest(tenant_id=tenant, purpose="data"), metadata=storage)
        secrets.append(data_key.plaintext)
        wrapped[tenant] = data_key.wrapped
    errors = [status(lambda: server.stub.GetTenantKey(pb.GetTenantKeyRequest(tenant_id="acme", purpose="data"),
                                                      metadata=caller("service:web")))[1],
              status(lambda: server.stub.DecryptDataKey(pb.DecryptDataKeyRequest(
                  tenant_id="globex", purpose="data", wrapped=wrapped["acme"]), metadata=storage))[1]]
    assert any("key access op=GetTenantKey tenant=acme purpose=data caller=service:storage outcome=OK" in line
               for line in captured_logs)
    assert any("caller=service:web outcome=PERMISSION_DENIED" in line for line in captured_logs)
    everything = "\n".join(captured_logs + errors + [repr(keyed.audit_entries(limit=1000)),
                                                     generate_latest(REGISTRY).decode(),
                                                     repr(server.server.holder.current)])
    for secret in secrets:
        for form in (secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode(),
                     base64.urlsafe_b64encode(secret).decode(), repr(secret)):
            assert form not in everything


def test_a_destroyed_version_is_refused_by_its_state_and_its_data_keys_stay_shut(server: RunningServer) -> None:
    storage = caller("service:storage")
    data_key = server.stub.GetDataKey(pb.GetDataKeyRequest(tenant_id="acme", purpose="data"), metadata=storage)
    server.admin.RotateTenantKey(rpb.RotateTenantKeyRequest(tenant_id="acme", purpose="data"))
    destroyed = server.admin.UpdateTenantKey(rpb.UpdateTenantKeyRequest(tenant_id="acme", purpose="data", version=1,
                                                                        state=pb.KEY_STATE_DESTROYED))
    server.wait_synced(destroyed.revision)
    code, details = status(lambda: server.stub.GetTenantKey(pb.GetTenantKeyRequest(
        tenant_id="acme", purpose="data", version=1), metadata=storage))
    assert (code, details) == (grpc.StatusCode.FAILED_PRECONDITION, "key acme/data/v1 is destroyed")
    code, details = status(lambda: server.stub.DecryptDataKey(pb.DecryptDataKeyRequest(
        tenant_id="acme", purpose="data", wrapped=data_key.wrapped), metadata=storage))
    assert (code, details) == (grpc.StatusCode.FAILED_PRECONDITION, "key acme/data/v1 is destroyed")
    assert server.stub.GetTenantKey(pb.GetTenantKeyRequest(tenant_id="acme", purpose="data"),
                                    metadata=storage).version == 2
