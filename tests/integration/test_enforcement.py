"""Drop-in enforcement and tenant propagation (``tenantgate.client``) against a real tenantgate server: a small
service of the test's own ("demo.Things", generic handlers over raw bytes) runs on a loopback port behind the
enforcement interceptor, once on a grpc server and once on a grpc.aio server, and is called as any caller
would call it. Its handlers answer what ``current_tenant()`` says, and a downstream service records what
reaches it through the propagation interceptors."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from tenantgate.certs import make_dev_certificates
from tenantgate.client import (
    NO_RETRIES,
    AsyncClient,
    AsyncEnforcementInterceptor,
    Client,
    ClientConfig,
    EnforcementInterceptor,
    EnforcementPolicy,
    MethodAccess,
    TenantContext,
    TenantLogFilter,
    TenantPropagation,
    async_tenant_propagation,
    current_tenant,
    tenant_context,
)
from tenantgate.errors import ConfigurationError
from tenantgate.keywrap import MasterKey, tenant_key_factory
from tenantgate.registry.manifest import load_manifests
from tenantgate.registry.sqlite import SQLiteStore
from tests.conftest import EXAMPLES, Issuer, RunningServer, manifests

SERVICE = "demo.Things"
GATED_LIMIT = 2  # acme's gated-calls quota: calls per month
handler_log = logging.getLogger("tests.enforcement.handler")


def documents(issuer: Issuer) -> list[Any]:
    """The example tenants, acme trusting the test issuer, with a small calendar quota and a concurrency
    quota of one."""
    found = {doc.tenant.id: doc.document for doc in load_manifests([EXAMPLES])}
    acme = found["acme"]["spec"]
    acme["tokens"]["issuers"].append(issuer.issuer_spec())
    acme["quotas"]["gated-calls"] = {"limit": GATED_LIMIT, "period": "month"}
    acme["quotas"]["one-at-a-time"] = {"concurrency": 1, "lease_ttl": "30s"}
    return list(found.values())


@pytest.fixture
def tenantgate(tmp_path: Path, master_key: MasterKey, issuer: Issuer,
               start_server: Callable[..., RunningServer]) -> RunningServer:
    registry = tmp_path / "registry.db"
    store = SQLiteStore(registry)
    store.apply(manifests(documents(issuer)), key_factory=tenant_key_factory(master_key))
    store.close()
    server = start_server(master_key, registry_url=f"sqlite://{registry}")
    server.wait_synced(1)
    return server


def seen() -> bytes:
    """What a handler answers: the tenant it runs as."""
    tenant = current_tenant()
    if tenant is None:
        return b"null"
    return json.dumps({"tenant_id": tenant.tenant_id, "subject": tenant.subject,
                       "home_tenant_id": tenant.home_tenant_id, "environment": tenant.environment,
                       "decision_id": tenant.decision_id, "token": tenant.token}).encode()


# The downstream service: answers the propagated metadata it received, in every call kind.

def received(context: Any) -> bytes:
    metadata = {key: value for key, value in context.invocation_metadata()
                if key in ("x-tenant-id", "authorization")}
    return json.dumps(metadata).encode()


def downstream_handlers() -> grpc.GenericRpcHandler:
    def drain(requests: Iterator[bytes]) -> None:
        for _ in requests:
            pass

    def stream_unary(requests: Iterator[bytes], context: Any) -> bytes:
        drain(requests)
        return received(context)

    def stream_stream(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        drain(requests)
        yield received(context)

    return grpc.method_handlers_generic_handler("demo.Downstream", {
        "Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: received(context)),
        "EchoStream": grpc.unary_stream_rpc_method_handler(lambda request, context: iter([received(context)])),
        "Collect": grpc.stream_unary_rpc_method_handler(stream_unary),
        "Chat": grpc.stream_stream_rpc_method_handler(stream_stream),
    })


@pytest.fixture
def downstream() -> Iterator[str]:
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((downstream_handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None).wait(5)


# The protected service, as a grpc and as a grpc.aio server.

class BlockingThings:
    """demo.Things on a grpc server; Forward calls the downstream and Nested itself through channels that
    propagate the tenant."""

    def __init__(self, downstream: str) -> None:
        self.downstream = grpc.intercept_channel(grpc.insecure_channel(downstream), TenantPropagation())
        self.itself: grpc.Channel | None = None

    def handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Get": grpc.unary_unary_rpc_method_handler(self.get),
            "List": grpc.unary_stream_rpc_method_handler(self.list),
            "Upload": grpc.stream_unary_rpc_method_handler(self.upload),
            "Chat": grpc.stream_stream_rpc_method_handler(self.chat),
            "Forward": grpc.unary_unary_rpc_method_handler(self.forward),
            "Nested": grpc.unary_unary_rpc_method_handler(self.nested),
        })

    def get(self, request: bytes, context: Any) -> bytes:
        handler_log.info("handled Get")
        return seen()

    def list(self, request: bytes, context: Any) -> Iterator[bytes]:
        yield seen()
        yield seen()

    def upload(self, requests: Iterator[bytes], context: Any) -> bytes:
        assert list(requests) == [b"a", b"b"]
        return seen()

    def chat(self, requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        for _ in requests:
            yield seen()

    def forward(self, request: bytes, context: Any) -> bytes:
        unary = self.downstream.unary_unary("/demo.Downstream/Echo")(b"", timeout=5)
        streamed = list(self.downstream.unary_stream("/demo.Downstream/EchoStream")(b"", timeout=5))
        own = self.downstream.unary_unary("/demo.Downstream/Echo")(b"", metadata=(("x-tenant-id", "globex"),),
                                                                   timeout=5)
        return json.dumps({"unary": json.loads(unary), "stream": json.loads(streamed[0]),
                           "own": json.loads(own)}).encode()

    def nested(self, request: bytes, context: Any) -> bytes:
        if request == b"inner" or self.itself is None:
            return b"ran"
        try:
            return bytes(self.itself.unary_unary(f"/{SERVICE}/Nested")(b"inner", timeout=5))
        except grpc.RpcError as error:
            return str(error.code().name).encode()


class AwaitingThings:
    """BlockingThings' handlers as coroutines and async generators, for a grpc.aio server."""

    def __init__(self, downstream: str) -> None:
        self.downstream = grpc.aio.insecure_channel(downstream, interceptors=async_tenant_propagation())
        self.itself: grpc.aio.Channel | None = None

    def handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Get": grpc.unary_unary_rpc_method_handler(self.get),
            "List": grpc.unary_stream_rpc_method_handler(self.list),
            "Upload": grpc.stream_unary_rpc_method_handler(self.upload),
            "Chat": grpc.stream_stream_rpc_method_handler(self.chat),
            "Forward": grpc.unary_unary_rpc_method_handler(self.forward),
            "Nested": grpc.unary_unary_rpc_method_handler(self.nested),
        })

    async def get(self, request: bytes, context: Any) -> bytes:
        handler_log.info("handled Get")
        return seen()

    async def list(self, request: bytes, context: Any) -> Any:
        yield seen()
        yield seen()

    async def upload(self, requests: Any, context: Any) -> bytes:
        assert [request async for request in requests] == [b"a", b"b"]
        return seen()

    async def chat(self, requests: Any, context: Any) -> Any:
        async for _ in requests:
            yield seen()

    async def forward(self, request: bytes, context: Any) -> bytes:
        unary = await self.downstream.unary_unary("/demo.Downstream/Echo")(b"", timeout=5)
        streamed = [item async for item in self.downstream.unary_stream("/demo.Downstream/EchoStream")(b"", timeout=5)]
        own = await self.downstream.unary_unary("/demo.Downstream/Echo")(b"", metadata=(("x-tenant-id", "globex"),),
                                                                         timeout=5)
        return json.dumps({"unary": json.loads(unary), "stream": json.loads(streamed[0]),
                           "own": json.loads(own)}).encode()

    async def nested(self, request: bytes, context: Any) -> bytes:
        if request == b"inner" or self.itself is None:
            return b"ran"
        try:
            return bytes(await self.itself.unary_unary(f"/{SERVICE}/Nested")(b"inner", timeout=5))
        except grpc.RpcError as error:
            return str(error.code().name).encode()


def listening(server: grpc.Server | grpc.aio.Server, credentials: grpc.ServerCredentials | None) -> str:
    port = (server.add_insecure_port("127.0.0.1:0") if credentials is None
            else server.add_secure_port("127.0.0.1:0", credentials))
    return f"127.0.0.1:{port}"


class BlockingService:
    def __init__(self, tenantgate: ClientConfig, policy: EnforcementPolicy, downstream: str,
                 credentials: grpc.ServerCredentials | None = None) -> None:
        self.client = Client(tenantgate)
        self.things = BlockingThings(downstream)
        self.server = grpc.server(ThreadPoolExecutor(max_workers=8),
                                  interceptors=[EnforcementInterceptor(self.client, policy)])
        self.server.add_generic_rpc_handlers((self.things.handlers(),))
        self.target = listening(self.server, credentials)
        self.server.start()
        self.things.itself = grpc.intercept_channel(grpc.insecure_channel(self.target), TenantPropagation())

    def stop(self) -> None:
        self.server.stop(None).wait(5)
        self.client.close()


class AwaitingService:
    """The grpc.aio server, its AsyncClient and channels made and closed on an event loop thread of its own."""

    def __init__(self, tenantgate: ClientConfig, policy: EnforcementPolicy, downstream: str,
                 credentials: grpc.ServerCredentials | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.target = self._call(self._start(tenantgate, policy, downstream, credentials))

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    async def _start(self, tenantgate: ClientConfig, policy: EnforcementPolicy, downstream: str,
                     credentials: grpc.ServerCredentials | None) -> str:
        self.client = AsyncClient(tenantgate)
        self.things = AwaitingThings(downstream)
        self.server = grpc.aio.server(interceptors=[AsyncEnforcementInterceptor(self.client, policy)])
        self.server.add_generic_rpc_handlers((self.things.handlers(),))
        target = listening(self.server, credentials)
        await self.server.start()
        self.things.itself = grpc.aio.insecure_channel(target, interceptors=async_tenant_propagation())
        return target

    async def _stop(self) -> None:
        await self.server.stop(None)
        await self.client.close()
        await self.things.downstream.close()
        if self.things.itself is not None:
            await self.things.itself.close()

    def stop(self) -> None:
        self._call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class Caller:
    """A caller of demo.Things with a plain channel: each method in its own call kind."""

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None = None) -> None:
        self.channel = (grpc.insecure_channel(target) if credentials is None
                        else grpc.secure_channel(target, credentials))

    def get(self, *metadata: tuple[str, str], method: str = "Get", request: bytes = b"") -> Any:
        answer = self.channel.unary_unary(f"/{SERVICE}/{method}")(request, metadata=metadata, timeout=10)
        return json.loads(answer) if answer.startswith((b"{", b"null")) else answer.decode()

    def every_kind(self, *metadata: tuple[str, str]) -> list[Any]:
        """What Get, List, Upload and Chat each saw."""
        unary = self.get(*metadata)
        listed = list(self.channel.unary_stream(f"/{SERVICE}/List")(b"", metadata=metadata, timeout=10))
        uploaded = self.channel.stream_unary(f"/{SERVICE}/Upload")(iter([b"a", b"b"]), metadata=metadata,
                                                                    timeout=10)
        chatted = list(self.channel.stream_stream(f"/{SERVICE}/Chat")(iter([b"a", b"b"]), metadata=metadata,
                                                                      timeout=10))
        return [unary, *(json.loads(item) for item in (*listed, uploaded, *chatted))]

    def refused(self, *metadata: tuple[str, str], method: str = "Get") -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as caught:
            self.get(*metadata, method=method)
        return caught.value


@pytest.fixture(params=["grpc", "grpc.aio"])
def protect(request: pytest.FixtureRequest, tenantgate: RunningServer,
            downstream: str) -> Iterator[Callable[..., Caller]]:
    """``protect(policy, tenantgate=...)``: demo.Things behind the enforcement interceptor of one flavour,
    deciding with tenantgate (or another address, for a tenantgate that is down); a Caller of it."""
    running: list[BlockingService | AwaitingService] = []
    callers: list[Caller] = []

    def protect(policy: EnforcementPolicy | None = None, tenantgate_config: ClientConfig | None = None,
                credentials: grpc.ServerCredentials | None = None) -> Callable[..., Caller]:
        """The protected service; a function making callers of it (with these channel credentials, if any)."""
        config = tenantgate_config or ClientConfig(tenantgate.target, timeout=5)
        kind = BlockingService if request.param == "grpc" else AwaitingService
        service = kind(config, policy or EnforcementPolicy(), downstream, credentials)
        running.append(service)

        def caller(channel_credentials: grpc.ChannelCredentials | None = None) -> Caller:
            callers.append(Caller(service.target, channel_credentials))
            return callers[-1]
        return caller

    def protect_plainly(policy: EnforcementPolicy | None = None,
                        tenantgate_config: ClientConfig | None = None) -> Caller:
        return protect(policy, tenantgate_config)()

    protect_plainly.with_tls = protect  # type: ignore[attr-defined]
    yield protect_plainly
    for caller in callers:
        caller.channel.close()
    for service in running:
        service.stop()


def bearer(token: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {token}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(TenantLogFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_an_allowed_call_runs_as_its_verified_tenant_in_every_call_kind(protect: Callable[..., Caller],
                                                                         issuer: Issuer) -> None:
    caller = protect()
    token = issuer.token("acme", "alice")  # acme's admin: every action on every resource
    records = Records()
    handler_log.addHandler(records)
    handler_log.setLevel(logging.INFO)
    try:
        by_token = caller.every_kind(bearer(token))
        named = caller.every_kind(("x-tenant-id", "acme"), bearer(token))
    finally:
        handler_log.removeHandler(records)
    for tenant in (*by_token, *named):
        assert {key: tenant[key] for key in ("tenant_id", "subject", "home_tenant_id", "token")} == {
            "tenant_id": "acme", "subject": "user:alice", "home_tenant_id": "acme", "token": token}
        assert tenant["decision_id"]
    # The handler's log records carry the tenant (TenantLogFilter on a handler).
    assert [(record.tenant_id, record.subject, record.decision_id) for record in records.records] == [
        ("acme", "user:alice", by_token[0]["decision_id"]), ("acme", "user:alice", named[0]["decision_id"])]


def test_a_denied_call_is_permission_denied_naming_its_decision(protect: Callable[..., Caller],
                                                               issuer: Issuer) -> None:
    bob = bearer(issuer.token("acme", "bob"))  # an editor of docs/*, in dev and staging only
    denied = protect().refused(bob)
    assert denied.code() is grpc.StatusCode.PERMISSION_DENIED and "NO_MATCHING_GRANT" in (denied.details() or "")
    assert dict(denied.trailing_metadata() or ())["x-tenantgate-decision-id"]

    # A mapping of its own: Get reads docs; the environment is the service's, not the caller's.
    mapping = {f"/{SERVICE}/Get": MethodAccess("read", "docs/things")}
    in_dev = protect(EnforcementPolicy(methods=mapping, environment="dev"))
    assert in_dev.get(bob, ("x-tenant-environment", "prod"))["environment"] == "dev"
    assert in_dev.refused(bob, method="Upload").code() is grpc.StatusCode.PERMISSION_DENIED
    in_prod = protect(EnforcementPolicy(methods=mapping, environment="prod"))
    assert in_prod.refused(bob, ("x-tenant-environment", "dev")).code() is grpc.StatusCode.PERMISSION_DENIED


def test_calls_without_valid_credentials_are_unauthenticated(protect: Callable[..., Caller], issuer: Issuer) -> None:
    caller = protect()
    expired = bearer(issuer.token("acme", "alice", expires_in=-60))
    cases = {
        "no credentials": ((), "UNAUTHENTICATED"),
        "expired": ((expired,), "TOKEN_EXPIRED"),
        "expired, tenant named": ((("x-tenant-id", "acme"), expired), "TOKEN_EXPIRED"),
        "not a token": ((bearer("x.y.z"),), "TOKEN_INVALID"),
        "empty bearer": ((("authorization", "Bearer "),), "TOKEN_INVALID"),
        "another scheme": ((("authorization", "Basic YWxpY2U6cHc="),), "UNAUTHENTICATED"),
    }
    for name, (metadata, reason) in cases.items():
        refused = caller.refused(*metadata)
        assert refused.code() is grpc.StatusCode.UNAUTHENTICATED, name
        assert (refused.details() or "").startswith(reason), (name, refused.details())

    token = bearer(issuer.token("acme", "alice"))
    twice = caller.refused(("x-tenant-id", "acme"), ("x-tenant-id", "globex"), token)
    malformed = caller.refused(("x-tenant-id", "Acme!"), token)
    assert twice.code() is malformed.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_a_trusted_subject_metadata_names_the_caller_only_where_configured(protect: Callable[..., Caller]) -> None:
    alice = (("x-tenant-id", "acme"), ("x-tenantgate-subject", "user:alice"))
    trusting = protect(EnforcementPolicy(subject_metadata="x-tenantgate-subject"))
    tenant = trusting.get(*alice)
    assert (tenant["tenant_id"], tenant["subject"], tenant["home_tenant_id"]) == ("acme", "user:alice", "acme")
    assert trusting.refused(("x-tenantgate-subject", "user:alice")).code() is grpc.StatusCode.INVALID_ARGUMENT
    assert protect().refused(*alice).code() is grpc.StatusCode.UNAUTHENTICATED


def test_only_the_callers_listed_may_name_a_subject(protect: Callable[..., Caller], tmp_path: Path) -> None:
    """With subject_callers, a subject named in metadata is taken only from a caller whose client certificate names
    it one of them (service:web here); another certificate, or none, is UNAUTHENTICATED."""
    folder = tmp_path / "certs"
    make_dev_certificates(folder, ["web", "batch"])

    def read(name: str) -> bytes:
        return (folder / name).read_bytes()

    server_credentials = grpc.ssl_server_credentials([(read("server-key.pem"), read("server.pem"))],
                                                     root_certificates=read("ca.pem"), require_client_auth=True)
    policy = EnforcementPolicy(subject_metadata="x-tenantgate-subject", subject_callers={"service:web"})
    callers = protect.with_tls(policy, credentials=server_credentials)  # type: ignore[attr-defined]

    def as_service(name: str) -> Caller:
        return callers(grpc.ssl_channel_credentials(read("ca.pem"), read(f"client-{name}-key.pem"),
                                                    read(f"client-{name}.pem")))

    alice = (("x-tenant-id", "acme"), ("x-tenantgate-subject", "user:alice"))
    assert as_service("web").get(*alice)["subject"] == "user:alice"
    for caller in (as_service("batch"), protect(policy)):  # another certificate; none (plaintext)
        refused = caller.refused(*alice)
        assert refused.code() is grpc.StatusCode.UNAUTHENTICATED and "may not name its subject" in (
            refused.details() or "")
    with pytest.raises(ConfigurationError):
        EnforcementPolicy(subject_callers={"service:web"})  # without subject_metadata: nothing to trust them with


def test_a_spent_quota_is_resource_exhausted_with_retry_after(protect: Callable[..., Caller], issuer: Issuer) -> None:
    # A quota acme does not declare is left out; gated-calls counts.
    caller = protect(EnforcementPolicy(quotas={"gated-calls": 1, "not-declared": 1}))
    alice, bob = bearer(issuer.token("acme", "alice")), bearer(issuer.token("acme", "bob"))
    assert caller.refused(bob).code() is grpc.StatusCode.PERMISSION_DENIED  # a denied call spends nothing
    for _ in range(GATED_LIMIT):
        assert caller.get(alice)["tenant_id"] == "acme"
    spent = caller.refused(alice)
    assert spent.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "gated-calls" in (spent.details() or "")
    assert int(dict(spent.trailing_metadata() or ())["retry-after"]) >= 1
    # A public method spends nothing and runs without a tenant.
    public = protect(EnforcementPolicy(quotas={"gated-calls": 1}, public={f"/{SERVICE}/Get"}))
    assert public.get() is None and public.get(alice) is None


def test_a_concurrency_unit_is_held_while_the_handler_runs_and_given_back(protect: Callable[..., Caller],
                                                                           issuer: Issuer) -> None:
    one_at_a_time = MethodAccess("Nested", SERVICE, quotas={"one-at-a-time": 1})
    caller = protect(EnforcementPolicy(methods={f"/{SERVICE}/Nested": one_at_a_time}))
    alice = bearer(issuer.token("acme", "alice"))
    # Nested calls itself, with the tenant propagated, while it holds the only unit: the inner call is refused.
    assert caller.get(alice, method="Nested") == "RESOURCE_EXHAUSTED"
    # Given back when the handler ended: the next call gets the unit again (and its inner call is refused again).
    assert caller.get(alice, method="Nested") == "RESOURCE_EXHAUSTED"


def test_when_tenantgate_cannot_be_reached_calls_are_unavailable_unless_allowed_explicitly(
        protect: Callable[..., Caller], issuer: Issuer) -> None:
    down = ClientConfig(f"127.0.0.1:{free_port()}", timeout=2, retry=NO_RETRIES)
    alice = (("x-tenant-id", "acme"), bearer(issuer.token("acme", "alice")))
    assert protect(tenantgate_config=down).refused(*alice).code() is grpc.StatusCode.UNAVAILABLE
    allowing = protect(EnforcementPolicy(on_unavailable="allow"), tenantgate_config=down)
    assert allowing.get(*alice) is None  # let through, as no tenant: nothing was verified
    assert allowing.refused().code() is grpc.StatusCode.UNAUTHENTICATED  # no credentials is still no credentials
    with pytest.raises(Exception, match="on_unavailable"):
        EnforcementPolicy(on_unavailable="open")  # type: ignore[arg-type]


def test_no_call_to_tenantgate_outlives_the_callers_deadline(protect: Callable[..., Caller], issuer: Issuer) -> None:
    """A caller that waits 3 s gets a decision within them: tenantgate is given what is left of the caller's
    deadline, not the client's own 30 s. A stand-in for tenantgate records the deadline each call brought."""
    deadlines: list[float | None] = []

    def unanswered(request: bytes, context: grpc.ServicerContext) -> bytes:
        deadlines.append(context.time_remaining())
        context.abort(grpc.StatusCode.UNAVAILABLE, "not answering")
        raise AssertionError("abort returned")

    stand_in = grpc.server(ThreadPoolExecutor(max_workers=4))
    stand_in.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("tenantgate.v1.DecisionService", {
        method: grpc.unary_unary_rpc_method_handler(unanswered) for method in ("CheckAccess", "ValidateToken")}),))
    port = stand_in.add_insecure_port("127.0.0.1:0")
    stand_in.start()
    try:
        slow = ClientConfig(f"127.0.0.1:{port}", timeout=30, retry=NO_RETRIES, health_check=False)
        caller = protect(tenantgate_config=slow)
        alice = (("x-tenant-id", "acme"), bearer(issuer.token("acme", "alice")))
        with pytest.raises(grpc.RpcError) as refused:
            caller.channel.unary_unary(f"/{SERVICE}/Get")(b"", metadata=alice, timeout=3)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        stand_in.stop(None)
    # (gRPC sends a deadline rounded up to its wire format's precision: a few milliseconds over 3 s may arrive.)
    assert deadlines and all(left is not None and left <= 3.1 for left in deadlines), deadlines


def test_the_tenant_and_token_travel_to_the_next_service(protect: Callable[..., Caller], issuer: Issuer) -> None:
    token = issuer.token("acme", "alice")
    forwarded = protect().get(bearer(token), method="Forward")
    sent = {"x-tenant-id": "acme", "authorization": f"Bearer {token}"}
    assert forwarded["unary"] == forwarded["stream"] == sent
    assert forwarded["own"] == {**sent, "x-tenant-id": "globex"}  # a call's own metadata is kept


def test_propagation_sends_the_current_tenant_on_every_call_kind(downstream: str) -> None:
    def calls(channel: grpc.Channel) -> list[Any]:
        return [channel.unary_unary("/demo.Downstream/Echo")(b"", timeout=5),
                *channel.unary_stream("/demo.Downstream/EchoStream")(b"", timeout=5),
                channel.stream_unary("/demo.Downstream/Collect")(iter([b""]), timeout=5),
                *channel.stream_stream("/demo.Downstream/Chat")(iter([b""]), timeout=5)]

    async def awaited(channel: grpc.aio.Channel) -> list[Any]:
        return [await channel.unary_unary("/demo.Downstream/Echo")(b"", timeout=5),
                *[item async for item in channel.unary_stream("/demo.Downstream/EchoStream")(b"", timeout=5)],
                await channel.stream_unary("/demo.Downstream/Collect")(iter([b""]), timeout=5),
                *[item async for item in channel.stream_stream("/demo.Downstream/Chat")(iter([b""]), timeout=5)]]

    async def through_aio(forward_token: bool) -> tuple[list[Any], list[Any]]:
        async with grpc.aio.insecure_channel(
                downstream, interceptors=async_tenant_propagation(forward_token=forward_token)) as channel:
            outside = await awaited(channel)
            with tenant_context(TenantContext("acme", token="t0k")):
                return outside, await awaited(channel)

    def through_grpc(forward_token: bool) -> tuple[list[Any], list[Any]]:
        with grpc.intercept_channel(grpc.insecure_channel(downstream),
                                    TenantPropagation(forward_token=forward_token)) as channel:
            outside = calls(channel)
            with tenant_context(TenantContext("acme", token="t0k")):
                return outside, calls(channel)

    for forward_token, sent in ((True, {"x-tenant-id": "acme", "authorization": "Bearer t0k"}),
                                (False, {"x-tenant-id": "acme"})):
        for outside, inside in (through_grpc(forward_token), asyncio.run(through_aio(forward_token))):
            assert [json.loads(answer) for answer in outside] == [{}] * 4
            assert [json.loads(answer) for answer in inside] == [sent] * 4


def test_a_grpc_aio_server_refuses_a_handler_it_cannot_run_as_its_tenant() -> None:
    """grpc.aio runs a plain function handler on a thread of its own, where no tenant could be set: such a
    call fails, and the handler never runs."""
    ran: list[bytes] = []

    def plain(request: bytes, context: Any) -> bytes:
        ran.append(request)
        return b"ran"

    async def call_it() -> grpc.StatusCode:
        client = AsyncClient(f"127.0.0.1:{free_port()}")
        server = grpc.aio.server(interceptors=[AsyncEnforcementInterceptor(client)])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            SERVICE, {"Get": grpc.unary_unary_rpc_method_handler(plain)}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                with pytest.raises(grpc.RpcError) as caught:
                    await channel.unary_unary(f"/{SERVICE}/Get")(b"x", timeout=5)
                return caught.value.code()  # type: ignore[no-any-return]
        finally:
            await server.stop(None)
            await client.close()

    assert asyncio.run(call_it()) is grpc.StatusCode.UNKNOWN and ran == []
