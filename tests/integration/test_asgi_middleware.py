"""The SDK's ASGI middleware (``tenantgate.client.asgi``) in front of a small Starlette application, against a real
server: what the application sees when a request is allowed, the 401 / 403 / 429 / 400 / 503 answers, quota
headers, leases given back, websockets, hostile input, and the same mapping as the Envoy adapter (each request
asked of both on the same server, answered alike)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from tenantgate.client import NO_RETRIES, AsyncClient, ClientConfig
from tenantgate.client.asgi import TenantgateMiddleware
from tenantgate.client.context import current_tenant
from tenantgate.clock import FakeClock
from tenantgate.keywrap import MasterKey, tenant_key_factory
from tenantgate.registry.sqlite import SQLiteStore
from tests.conftest import Issuer, RunningServer, manifests, tenant_doc

ROLES = {"reader": {"allow": ["read:docs/*"]},
         "writer": {"allow": ["write:docs/*", "read:*"], "deny": ["read:secrets/*"]}}
METHODS = ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE", "PURGE"]
QUOTAS = {"api": {"rate": "1/minute"}, "in-flight": {"concurrency": 1, "lease_ttl": "30s"}}


@pytest.fixture
def clock() -> FakeClock:
    # A minute ahead of the system clock, which the test tokens are issued on: none is from the server's future (an
    # iat after its now is invalid), all are valid for minutes. Moved by hand for the quotas.
    return FakeClock(time.time() + 60)


@pytest.fixture
def server(registry_path: Path, master_key: MasterKey, issuer: Issuer, clock: FakeClock,
           start_server: Callable[..., RunningServer]) -> RunningServer:
    access = {"roles": ROLES, "bindings": [{"subject": "user:alice", "roles": ["writer"]},
                                           {"subject": "user:bob", "roles": ["reader"]}],
              "grants": [{"tenant": "globex", "subject": "user:gina", "allow": ["read:shared/*"]}]}
    documents = {"acme": tenant_doc("acme", environments=["prod"], access=access, quotas=QUOTAS,
                                    tokens={"issuers": [issuer.issuer_spec()]}),
                 "globex": tenant_doc("globex", tokens={"issuers": [issuer.issuer_spec()]})}
    store = SQLiteStore(registry_path)
    store.apply(manifests(documents), key_factory=tenant_key_factory(master_key))
    store.close()
    running = start_server(master_key, clock=clock, registry_url=f"sqlite://{registry_path}")
    running.wait_synced(1)
    return running


class Service:
    """A Starlette application behind the middleware; a request to /hold sets ``holding`` and waits for
    ``release``."""

    def __init__(self, client: AsyncClient | ClientConfig | str, **settings: Any) -> None:
        self.ran = 0
        self.holding = asyncio.Event()
        self.release = asyncio.Event()
        self.app = Starlette(routes=[Route("/hold", self.hold), WebSocketRoute("/ws", self.socket),
                                     Route("/{rest:path}", self.endpoint, methods=METHODS)],
                             middleware=[Middleware(TenantgateMiddleware, client=client, **settings)])

    async def endpoint(self, request: Request) -> JSONResponse:
        self.ran += 1
        tenant = current_tenant()
        return JSONResponse(None if tenant is None else {
            "tenant_id": tenant.tenant_id, "subject": tenant.subject, "home_tenant_id": tenant.home_tenant_id,
            "decision_id": tenant.decision_id, "environment": tenant.environment,
            "token_kept": bool(tenant.token), "in_state": request.state.tenant is tenant})

    async def hold(self, request: Request) -> JSONResponse:
        self.holding.set()
        await self.release.wait()
        return await self.endpoint(request)

    async def socket(self, websocket: WebSocket) -> None:
        await websocket.accept()
        tenant = current_tenant()
        await websocket.send_json({"subject": tenant.subject if tenant else None})
        await websocket.close()


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(ClientConfig(server.target, timeout=5)) as made:
        yield made


def http(service: Service) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=service.app), base_url="http://service")


def bearer(token: str, tenant: str = "") -> dict[str, str]:
    return {"authorization": f"Bearer {token}", **({"x-tenant-id": tenant} if tenant else {})}


async def test_an_allowed_request_runs_with_the_verified_tenant_context(client: AsyncClient, issuer: Issuer) -> None:
    service = Service(client, environment="prod")
    async with http(service) as web:
        answer = await web.get("/docs/a?x=1", headers=bearer(issuer.token("acme", "alice"), "acme"))
        assert answer.status_code == 200, answer.text
        seen = answer.json()
        assert (seen["tenant_id"], seen["subject"], seen["home_tenant_id"], seen["environment"]) == (
            "acme", "user:alice", "acme", "prod")
        assert seen["decision_id"] and seen["token_kept"] and seen["in_state"]
        # Only the token names the tenant: its home tenant.
        answer = await web.post("/docs/b", headers=bearer(issuer.token("acme", "alice")))
        assert answer.status_code == 200 and answer.json()["tenant_id"] == "acme"
        # Across tenants by grant: the identity is the pair (subject, home tenant).
        answer = await web.get("/shared/plan", headers=bearer(issuer.token("globex", "gina"), "acme"))
        assert (answer.json()["tenant_id"], answer.json()["home_tenant_id"]) == ("acme", "globex")
    assert current_tenant() is None  # set for the request only


async def test_a_deny_is_403_with_the_reason_and_decision_id_and_the_app_never_runs(client: AsyncClient,
                                                                                     issuer: Issuer) -> None:
    service = Service(client)
    async with http(service) as web:
        for method, path, token, reason in (
                ("DELETE", "/docs/a", issuer.token("acme", "bob"), "NO_MATCHING_GRANT"),
                ("GET", "/secrets/k", issuer.token("acme", "alice"), "EXPLICIT_DENY"),
                ("GET", "/docs/a", issuer.token("globex", "gina"), "CROSS_TENANT_DENIED")):
            answer = await web.request(method, path, headers=bearer(token, "acme"))
            body = answer.json()
            assert (answer.status_code, body["reason"], body["allowed"]) == (403, reason, False)
            assert answer.headers["x-tenantgate-decision-id"] == body["decision_id"] != ""
            assert answer.headers["content-type"] == "application/json"
    assert service.ran == 0


async def test_missing_invalid_and_expired_tokens_are_401_with_a_bearer_challenge(client: AsyncClient,
                                                                                  issuer: Issuer) -> None:
    service = Service(client)
    async with http(service) as web:
        for headers in ({"x-tenant-id": "acme"}, {"authorization": "Basic YWxhZGRpbjpvcGVu"}):
            answer = await web.get("/docs/a", headers=headers)
            assert (answer.status_code, answer.json()["reason"]) == (401, "UNAUTHENTICATED")
            assert answer.headers["www-authenticate"] == "Bearer"
        expired = issuer.token("acme", "alice", expires_in=-60)
        for token, reason in (("not-a-jwt", "TOKEN_INVALID"), (Issuer().token("acme", "alice"), "TOKEN_INVALID"),
                              (expired, "TOKEN_EXPIRED"), ("", "TOKEN_INVALID")):
            # With the tenant named (a logged decision, with its id) and without (only the token names it).
            for tenant in ("acme", ""):
                answer = await web.get("/docs/a", headers=bearer(token, tenant))
                assert (answer.status_code, answer.json()["reason"]) == (401, reason), (token, tenant)
                assert answer.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
                assert ("decision_id" in answer.json()) is bool(tenant and token)
    assert service.ran == 0


async def test_a_quota_refused_is_429_with_ratelimit_headers_and_retry_after(client: AsyncClient, issuer: Issuer,
                                                                             clock: FakeClock) -> None:
    # "undeclared" is no quota of acme's: not tenantgate's to limit, left out (as the Envoy adapter leaves it).
    service = Service(client, quotas=["api", "undeclared"])
    headers = bearer(issuer.token("acme", "alice"), "acme")
    async with http(service) as web:
        answer = await web.get("/docs/a", headers=headers)
        assert answer.status_code == 200
        assert (answer.headers["ratelimit-policy"], answer.headers["ratelimit"]) == ('"api";q=1', '"api";r=0;t=60')
        answer = await web.get("/docs/a", headers=headers)
        assert answer.status_code == 429
        assert (answer.headers["retry-after"], answer.headers["ratelimit"]) == ("60", '"api";r=0;t=60')
        body = answer.json()
        assert (body["reason"], body["quotas"], body["retry_after"]) == ("QUOTA_EXCEEDED", ["api"], 60)
        assert body["decision_id"] == answer.headers["x-tenantgate-decision-id"]
        clock.advance(60)  # what Retry-After said
        assert (await web.get("/docs/a", headers=headers)).status_code == 200
        # A denied request spends nothing.
        assert (await web.delete("/docs/a", headers=bearer(issuer.token("acme", "bob"), "acme"))).status_code == 403
    assert service.ran == 2


async def test_a_concurrency_quota_is_held_while_the_request_runs_and_given_back(client: AsyncClient,
                                                                                  issuer: Issuer) -> None:
    service = Service(client, quotas={"in-flight": 1})
    headers = bearer(issuer.token("acme", "alice"), "acme")
    async with http(service) as web:
        held = asyncio.create_task(web.get("/hold", headers=headers))
        await service.holding.wait()
        answer = await web.get("/docs/a", headers=headers)
        assert (answer.status_code, answer.json()["quotas"]) == (429, ["in-flight"])
        service.release.set()
        assert (await held).status_code == 200
        assert (await web.get("/docs/a", headers=headers)).status_code == 200  # the lease was given back


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_tenantgate_unreachable_is_503_and_lets_through_only_when_told_to(issuer: Issuer) -> None:
    config = ClientConfig(f"127.0.0.1:{closed_port()}", timeout=2, retry=NO_RETRIES, health_check=False)
    headers = bearer(issuer.token("acme", "alice"), "acme")
    async with AsyncClient(config) as unreachable:
        closed = Service(unreachable)
        async with http(closed) as web:
            answer = await web.get("/docs/a", headers=headers)
            assert (answer.status_code, answer.json()["reason"]) == (503, "UNAVAILABLE")
            assert "127.0.0.1" not in answer.text  # nothing of the deployment told to the client
        assert closed.ran == 0
        opened = Service(unreachable, on_unavailable="allow")
        async with http(opened) as web:
            answer = await web.get("/docs/a", headers=headers)
            # Through, but vouched for by nobody: no tenant context.
            assert (answer.status_code, answer.json()) == (200, None)
            # A request without credentials is refused before tenantgate is asked, allowed or not.
            assert (await web.get("/docs/a", headers={"x-tenant-id": "acme"})).status_code == 401


@pytest.mark.parametrize(("method", "path", "who", "headers"), [
    ("GET", "/docs/a?x=1", "alice", {"x-tenant-id": "acme"}),
    ("HEAD", "/docs/a", "bob", {"x-tenant-id": "acme"}),
    ("OPTIONS", "/reports/1", "bob", {"x-tenant-id": "acme"}),
    ("PUT", "/docs/a", "bob", {"x-tenant-id": "acme"}),
    ("PATCH", "/docs/a", "alice", {}),
    ("DELETE", "/docs/a", "alice", {}),
    ("PURGE", "/docs/a", "alice", {"x-tenant-id": "acme"}),
    ("GET", "/secrets/k", "alice", {"x-tenant-id": "acme"}),
    ("GET", "/shared/x", "gina", {"x-tenant-id": "acme"}),
    ("GET", "/docs/a", "alice", {"x-tenant-id": "nobody"}),
    ("GET", "/docs/a", "alice", {"x-tenant-id": "ACME"}),
    ("GET", "/" + "a" * 2000, "alice", {"x-tenant-id": "acme"}),
    ("GET", "/docs/a", "", {"x-tenant-id": "acme"}),
])
async def test_requests_are_mapped_and_answered_as_the_envoy_adapter_does(
        client: AsyncClient, server: RunningServer, issuer: Issuer, method: str, path: str, who: str,
        headers: dict[str, str]) -> None:
    tenants = {"alice": "acme", "bob": "acme", "gina": "globex"}
    if who:
        headers = {**headers, "authorization": f"Bearer {issuer.token(tenants[who], who)}"}
    request = external_auth_pb2.CheckRequest()
    request.attributes.request.http.method, request.attributes.request.http.path = method, path
    request.attributes.request.http.headers.update(headers)
    envoy = external_auth_pb2_grpc.AuthorizationStub(server.channel).Check(request, timeout=10)
    if envoy.status.code == code_pb2.OK:
        expected = (200, "ALLOWED")
    else:
        expected = (envoy.denied_response.status.code, json.loads(envoy.denied_response.body)["reason"])
    async with http(Service(client)) as web:
        answer = await web.request(method, path, headers=headers)
    reason = "ALLOWED" if answer.status_code == 200 else answer.json()["reason"]
    assert (answer.status_code, reason) == expected


async def test_a_prefix_a_mapping_and_a_route_tenant_of_ones_own(client: AsyncClient, issuer: Issuer) -> None:
    token = issuer.token("acme", "bob")
    async with http(Service(client, strip_prefix="/api/v1")) as web:
        assert (await web.get("/api/v1/docs/a", headers=bearer(token, "acme"))).status_code == 200
    by_route = Service(client, mapping=lambda scope: ("read", "docs/" + scope["path"].rpartition("/")[2]),
                       tenant_of=lambda scope: scope["path"].split("/")[2])
    async with http(by_route) as web:
        answer = await web.delete("/tenants/acme/x", headers=bearer(token, "globex"))  # the route wins
        assert (answer.status_code, answer.json()["tenant_id"]) == (200, "acme")


async def test_public_paths_pass_undecided_and_only_those_exact_paths(client: AsyncClient, issuer: Issuer) -> None:
    service = Service(client, public_paths={"/healthz"})
    async with http(service) as web:
        assert (await web.get("/healthz")).status_code == 200
        for path in ("/healthz/", "/healthz/x", "/HEALTHZ", "/healthz/../docs"):
            assert (await web.get(path)).status_code in (400, 401), path
        # "/" names no resource CheckAccess takes: refused, saying how to let it through.
        answer = await web.get("/", headers=bearer(issuer.token("acme", "alice"), "acme"))
        assert (answer.status_code, answer.json()["reason"]) == (400, "INVALID_REQUEST")
        assert "public_paths" in answer.json()["detail"]


@pytest.mark.parametrize(("method", "path", "headers", "status"), [
    ("GET", "/docs/a", {"x-tenant-id": "a" * 1_000_000}, 400),
    ("GET", "/docs//a", {"x-tenant-id": "acme"}, 400),
    ("GET", "/docs/a/", {"x-tenant-id": "acme"}, 400),
    ("GET", "/docs%2F%2Fa", {"x-tenant-id": "acme"}, 400),
    ("GET", "/docs/a", {"authorization": "Bearer " + "x" * 1_000_000}, 401),
    ("GET", "/docs/a", {"x-tenant-id": "acme\u00e9"}, 400),
    ("GET", "/docs/a", {"x-tenant-id": "acme\x00"}, 400),
    ("GET", "/docs/%2e%2e/secrets/k", {"x-tenant-id": "acme"}, 400),
    ("GET", "/docs/a%3Fx", {"x-tenant-id": "acme"}, 400),
    ("GET", "/docs/a%23x", {"x-tenant-id": "acme"}, 400),
    ("GET", "/docs/%2E/a", {"x-tenant-id": "acme"}, 400),
    ("X" * 200, "/docs/a", {"x-tenant-id": "acme"}, 400),
    ("M-SEARCH", "/docs/a", {"x-tenant-id": "acme"}, 403),
    ("GET", "/docs/\u00e9\u4e2d", {"x-tenant-id": "acme"}, 200),
])
async def test_hostile_input_is_answered_never_an_error(client: AsyncClient, issuer: Issuer, method: str, path: str,
                                                        headers: dict[str, str], status: int) -> None:
    token = {"authorization": f"Bearer {issuer.token('acme', 'alice')}"}
    raw = [(name.encode(), value.encode("latin-1", "replace")) for name, value in {**token, **headers}.items()]
    async with http(Service(client)) as web:
        answer = await web.request(method, path, headers=raw)
    assert answer.status_code == status, answer.text


async def test_repeated_tenant_or_token_headers_are_refused_never_one_picked(client: AsyncClient,
                                                                             issuer: Issuer) -> None:
    alice = f"Bearer {issuer.token('acme', 'alice')}"
    async with http(Service(client)) as web:
        twice = [(b"authorization", alice.encode()), (b"x-tenant-id", b"globex"), (b"x-tenant-id", b"acme")]
        assert (await web.get("/docs/a", headers=twice)).status_code == 400
        twice = [(b"authorization", alice.encode()), (b"authorization", f"Bearer {issuer.token('acme', 'x')}".encode())]
        assert (await web.get("/docs/a", headers=twice)).status_code == 401


class Connection:
    """One ASGI connection driven by hand, as a server drives it: the messages the application is sent, and
    those it sends back. For websockets and lifespan, which httpx does not speak."""

    def __init__(self, *incoming: dict[str, Any]) -> None:
        self.incoming = list(incoming)
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        return self.incoming.pop(0) if self.incoming else {"type": "websocket.disconnect", "code": 1000}

    async def send(self, message: Any) -> None:
        self.sent.append(dict(message))


def websocket(headers: dict[str, str], *, denial_extension: bool) -> dict[str, Any]:
    return {"type": "websocket", "asgi": {"version": "3.0"}, "scheme": "ws", "path": "/ws", "raw_path": b"/ws",
            "root_path": "", "query_string": b"", "server": ("service", 80), "client": ("127.0.0.1", 5000),
            "subprotocols": [], "headers": [(name.encode(), value.encode()) for name, value in headers.items()],
            "extensions": {"websocket.http.response": {}} if denial_extension else {}}


async def test_websockets_are_decided_at_the_handshake(server: RunningServer, issuer: Issuer) -> None:
    # Given addresses, the middleware makes its client on the serving loop and closes it at lifespan shutdown.
    app = Service(server.target).app
    lifespan_messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    lifespan = Connection()
    running = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                      lifespan_messages.get, lifespan.send))
    await lifespan_messages.put({"type": "lifespan.startup"})
    connection = Connection({"type": "websocket.connect"})
    await app(websocket(bearer(issuer.token("acme", "alice"), "acme"), denial_extension=True), connection.receive,
              connection.send)
    assert [message["type"] for message in connection.sent] == ["websocket.accept", "websocket.send",
                                                                 "websocket.close"]
    assert json.loads(connection.sent[1]["text"]) == {"subject": "user:alice"}
    # Refused where the server can answer a handshake with HTTP: the answer a request gets.
    connection = Connection({"type": "websocket.connect"})
    await app(websocket(bearer(issuer.token("acme", "bob"), "globex"), denial_extension=True), connection.receive,
              connection.send)
    start, body = connection.sent
    assert (start["type"], start["status"]) == ("websocket.http.response.start", 403)
    assert json.loads(body["body"])["reason"] == "CROSS_TENANT_DENIED"
    # Elsewhere: closed before it is accepted, with 1008 (policy violation).
    for headers, code, reason in ((bearer(issuer.token("acme", "bob"), "globex"), 1008, "CROSS_TENANT_DENIED"),
                                  ({"x-tenant-id": "acme"}, 1008, "UNAUTHENTICATED")):
        connection = Connection({"type": "websocket.connect"})
        await app(websocket(headers, denial_extension=False), connection.receive, connection.send)
        assert connection.sent == [{"type": "websocket.close", "code": code, "reason": reason}]
    await lifespan_messages.put({"type": "lifespan.shutdown"})
    await running
    assert [message["type"] for message in lifespan.sent] == ["lifespan.startup.complete",
                                                              "lifespan.shutdown.complete"]


async def test_a_client_the_middleware_cannot_make_fails_the_startup_not_a_request(server: RunningServer) -> None:
    """The client is made at lifespan startup, names resolved off the event loop: replicas that cannot be resolved
    fail the startup, before any request is taken."""
    app = Service(ClientConfig([server.target, "no-such-replica.invalid:50051"])).app
    messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    lifespan = Connection()
    running = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, messages.get,
                                      lifespan.send))
    await messages.put({"type": "lifespan.startup"})
    await messages.put({"type": "lifespan.shutdown"})  # what the server would not wait to send
    await running
    assert [message["type"] for message in lifespan.sent] == ["lifespan.startup.failed",
                                                              "lifespan.shutdown.complete"]
    assert "no-such-replica.invalid" in lifespan.sent[0]["message"]


async def test_what_the_middleware_cannot_decide_it_does_not_let_through(client: AsyncClient) -> None:
    async def application(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("reached the application")

    connection = Connection()
    with pytest.raises(RuntimeError):
        await TenantgateMiddleware(application, client)({"type": "webtransport", "path": "/"}, connection.receive,
                                                          connection.send)


async def test_the_environment_is_the_services_never_a_callers_header(client: AsyncClient, issuer: Issuer) -> None:
    """A caller that could name the environment would choose which environment-limited bindings it gets: the
    header is not read (were it, "qa", undeclared, would be denied UNKNOWN_ENVIRONMENT)."""
    async with http(Service(client)) as web:
        answer = await web.get("/docs/a", headers={**bearer(issuer.token("acme", "alice"), "acme"),
                                                   "x-tenant-environment": "qa"})
    assert answer.status_code == 200
