"""Tenantgate enforcement for ASGI applications (Starlette, FastAPI, any ASGI framework; none is imported): each
HTTP request and websocket handshake is decided by tenantgate before the application sees it, mapped as the Envoy
ext_authz adapter maps a request (``tenantgate.httpmapping``), and refused with the answers that adapter gives.

    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from tenantgate.client.asgi import TenantgateMiddleware

    app = Starlette(routes=routes, middleware=[
        Middleware(TenantgateMiddleware, client="tenantgate:50051", quotas={"api-requests": 1},
                   public_paths={"/healthz"})])

Where each part of the check comes from:
  tenant       ``tenant_of(scope)`` when given and not empty (the route's tenant, as Envoy's context_extensions
               tenant_id), else the ``x-tenant-id`` header, else the home tenant of the bearer token;
  subject      the bearer token (``Authorization: Bearer``), verified by tenantgate; no token: 401;
  action       ``mapping(scope)`` when given, else the method (GET, HEAD, OPTIONS: read; POST, PUT, PATCH: write;
               DELETE: delete; any other in lower case; a websocket handshake is a GET, as Envoy sees it);
  resource     ``mapping(scope)`` when given, else the path less ``strip_prefix``, without leading slashes;
  environment  ``environment``, the service's own (never a header: a caller would choose the bindings it gets).
The path is the one the application routes on (ASGI's decoded ``path``; it includes ``root_path`` when the server
sets one: strip it with ``strip_prefix``), so that percent-encoding cannot make a request look like another
resource. A decoded path holding ``?`` or ``#``, a ``.`` or ``..`` segment, or an empty one (``//``, a trailing
``/``) is refused (400): the resource it would be checked as is not the one an application or file system may
serve.

The answers: allowed, the application runs with ``current_tenant()`` (``tenantgate.client.context``) and
``scope["state"]["tenant"]`` (Starlette's ``request.state.tenant``) set to the verified ``TenantContext``, and the
response carries the quota headers; refused, a JSON body ``{"allowed": false, "reason": ..., "decision_id": ...}``
with 401 (no token, TOKEN_INVALID, TOKEN_EXPIRED; ``WWW-Authenticate: Bearer``), 403 (a deny), 429
(QUOTA_EXCEEDED, with ``RateLimit-Policy``, ``RateLimit`` and ``Retry-After``), 400 (malformed) or 503
(tenantgate cannot be reached, or cannot read the tenant). When tenantgate cannot be reached the request is refused
unless ``on_unavailable="allow"``, which lets it through with no tenant context at all (nothing was verified),
logged as a warning each time.

Per request: ValidateToken (the verified identity) and CheckAccess with the token, at once when the tenant is named
(ValidateToken first when only the token names it); after an allow, one ConsumeQuota of ``quotas``. The flow is the
gRPC interceptors' (``_admission``). CheckAccess takes no empty resource, so "/" is refused (400) unless it is in
``public_paths`` or ``mapping`` names a resource for it.

A websocket handshake is decided like a GET; refused, it is answered with the same HTTP response when the server
offers the websocket denial response extension (``websocket.http.response``), else closed before it is accepted:
code 1008 (policy violation), or 1013 (try again later) for a 429 or 503. ``lifespan`` passes through (and closes a
client the middleware made at shutdown); any other kind of connection is refused with an error: what the
middleware cannot decide, it does not let through."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from contextlib import nullcontext
from types import MappingProxyType
from typing import Any, Literal

from tenantgate import ratelimit_headers
from tenantgate.bounds import MAX_ACTION, MAX_ID, MAX_RESOURCE, MAX_TOKEN_BYTES
from tenantgate.client._admission import (
    INVALID_REQUEST,
    QUOTA_EXCEEDED,
    TENANT_UNAVAILABLE,
    UNAUTHENTICATED,
    UNAVAILABLE,
    Admission,
    Admitted,
    Question,
    Refused,
    admission,
    release_surviving_cancellation,
    run_awaiting,
)
from tenantgate.client._calls import Call
from tenantgate.client._config import ClientConfig
from tenantgate.client._core import as_config
from tenantgate.client._errors import CallError
from tenantgate.client._results import QuotaResult, Reason
from tenantgate.client.aio import AsyncClient
from tenantgate.client.context import AUTHORIZATION_METADATA, TENANT_METADATA, tenant_context
from tenantgate.errors import ConfigurationError
from tenantgate.httpmapping import (
    action_for_method,
    bearer_challenge,
    bearer_token,
    joined_headers,
    resource_for_path,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# (action, resource) for a request, replacing the method and path mapping.
RequestMapping = Callable[[Scope], tuple[str, str]]
# The tenant a request is for by its route (a path parameter, a host name); "" when the route does not say.
TenantOf = Callable[[Scope], str]

DECISION_ID_HEADER = "x-tenantgate-decision-id"
_READ = (AUTHORIZATION_METADATA, TENANT_METADATA)
# HTTP statuses of refusals by reason; any other reason is a CheckAccess deny: 403.
_STATUS_BY_REASON = {UNAUTHENTICATED: 401, Reason.TOKEN_INVALID.value: 401, Reason.TOKEN_EXPIRED.value: 401,
                     INVALID_REQUEST: 400, QUOTA_EXCEEDED: 429, TENANT_UNAVAILABLE: 503, UNAVAILABLE: 503}
# Websocket close codes (RFC 6455, 7.4): a refusal, and a refusal to retry later.
POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013


class TenantgateMiddleware:
    """Decides every HTTP request and websocket handshake of ``app`` with tenantgate (see the module docstring).

    ``client``: an ``AsyncClient`` (made on the serving event loop; the caller closes it), or what makes one (a
    ``ClientConfig``, or addresses): the middleware makes that client on the serving event loop at lifespan
    startup (or, where the server runs no lifespan, on the first request), resolving names and reading TLS files
    on a worker thread, and closes it at lifespan shutdown (or ``close()``). ``quotas``: quota name -> amount
    consumed by every request allowed (names alone: 1 each), all or nothing; a concurrency quota's unit is given
    back when the request ends. ``strip_prefix``, or ``mapping`` for actions and resources of your own;
    ``tenant_of`` for the route's tenant; ``environment`` for this service's; ``public_paths``: exact paths let
    through undecided (health checks); ``on_unavailable="allow"``: let requests through when tenantgate cannot be
    reached, instead of answering 503."""

    def __init__(self, app: ASGIApp, client: AsyncClient | ClientConfig | str | Sequence[str], *,
                 quotas: Mapping[str, int] | Iterable[str] = (), strip_prefix: str = "",
                 mapping: RequestMapping | None = None, tenant_of: TenantOf | None = None, environment: str = "",
                 public_paths: Iterable[str] = (), on_unavailable: Literal["deny", "allow"] = "deny") -> None:
        if mapping is not None and strip_prefix:
            raise ConfigurationError("give strip_prefix or a mapping of your own, not both")
        if on_unavailable not in ("deny", "allow"):
            raise ConfigurationError(f'on_unavailable must be "deny" or "allow", got {on_unavailable!r}')
        if len(environment) > MAX_ID:
            raise ConfigurationError(f"environment is longer than {MAX_ID} characters")
        self.app = app
        # Checked now, made at startup: a grpc.aio channel belongs to the event loop it was made on.
        self._client = client if isinstance(client, AsyncClient) else None
        self._making_client = asyncio.Lock()
        self._config = None if isinstance(client, AsyncClient) else as_config(client)
        self._quotas = MappingProxyType(_amounts(quotas))
        self._fail_open = on_unavailable == "allow"
        self._strip_prefix = strip_prefix
        self._mapping = mapping
        self._tenant_of = tenant_of
        self._environment = environment
        self._public_paths = frozenset(public_paths)
        self._releases: set[asyncio.Future[None]] = set()

    async def client(self) -> AsyncClient:
        """The client deciding requests, made once (off the event loop's thread where it blocks) if not given."""
        if self._client is None:
            async with self._making_client:
                if self._client is None:
                    assert self._config is not None
                    self._client = await AsyncClient.open(self._config)
        return self._client

    async def close(self) -> None:
        """Close the client the middleware made, if it made one (one it was given belongs to the caller)."""
        if self._config is not None and self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.app(scope, receive, self._lifespan(send))
            return
        if kind not in ("http", "websocket"):
            raise RuntimeError(f"TenantgateMiddleware cannot decide an ASGI {kind!r} connection; refusing it")
        if scope["path"] in self._public_paths:
            await self.app(scope, receive, send)
            return
        question = self._question(scope)
        quota: list[QuotaResult] = []
        answer = question if isinstance(question, Refused) else await run_awaiting(
            await self.client(), _watching_quota(admission(question, fail_open=self._fail_open), quota))
        headers = _quota_headers(quota[-1]) if quota else []
        if isinstance(answer, Refused):
            refusal = _Refusal(answer, quota[-1] if quota else None, headers)
            if kind == "http":
                await _refuse_http(refusal, send)
            else:
                await _refuse_websocket(refusal, scope, receive, send)
            return
        await self._admit(answer, headers, scope, receive, send)

    def _question(self, scope: Scope) -> Question | Refused:
        headers = _headers(scope.get("headers") or ())
        path: str = scope["path"]
        problem = _path_problem(path)
        if problem:
            return Refused(INVALID_REQUEST, problem)
        if self._mapping is not None:
            action, resource = self._mapping(scope)
        else:
            action = action_for_method(scope.get("method") or "GET")
            resource = resource_for_path(path, self._strip_prefix)
        if not resource:
            # CheckAccess takes no empty resource (the Envoy adapter decides "/" as one, matched by "*").
            return Refused(INVALID_REQUEST, "the path names no resource: list it in public_paths, or give a mapping "
                                            "that names one")
        tenant_id = (self._tenant_of(scope) if self._tenant_of is not None else "") or headers.get(TENANT_METADATA, "")
        # This service's to say, never the caller's: a caller-chosen environment would switch on bindings limited
        # to it (the Envoy adapter reads a header only where the gateway strips and sets it).
        environment = self._environment
        for value, name, limit in ((tenant_id, TENANT_METADATA, MAX_ID), (action, "action", MAX_ACTION),
                                   (resource, "path", MAX_RESOURCE)):
            if len(value) > limit:
                return Refused(INVALID_REQUEST, f"the {name} is {len(value)} characters long; the maximum is {limit}")
        token = bearer_token(headers.get(AUTHORIZATION_METADATA, ""))
        if token is None:
            return Refused(UNAUTHENTICATED, "no bearer token")
        if not token or len(token) > MAX_TOKEN_BYTES:
            return Refused(Reason.TOKEN_INVALID.value, "the bearer token is empty or too long")
        return Question(tenant_id, action, resource, token=token, environment=environment, quotas=self._quotas)

    async def _admit(self, admitted: Admitted, headers: list[tuple[bytes, bytes]], scope: Scope, receive: Receive,
                     send: Send) -> None:
        # A copy: the scope and state dicts the server passed in stay as they were.
        scope = {**scope, "state": {**(scope.get("state") or {}), "tenant": admitted.tenant}}

        async def send_with_quota_headers(message: Message) -> None:
            if headers and message["type"] in ("http.response.start", "websocket.accept"):
                message = {**message, "headers": [*(message.get("headers") or ()), *headers]}
            await send(message)

        context = tenant_context(admitted.tenant) if admitted.tenant is not None else nullcontext()
        try:
            with context:
                await self.app(scope, receive, send_with_quota_headers)
        finally:
            if admitted.leases:
                await self._release(admitted)

    async def _release(self, admitted: Admitted) -> None:
        """Give the leases back, even when the request was cancelled (a client gone): the release runs as a task
        of its own, which a cancellation of this one does not stop."""
        await release_surviving_cancellation(await self.client(), admitted, self._releases)

    def _lifespan(self, send: Send) -> Send:
        """The lifespan's messages to the server, the client made before startup is reported complete (a client
        that cannot be made fails the startup, not the first request) and closed before shutdown is."""
        async def send_with_the_client(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                try:
                    await self.client()
                except ConfigurationError as error:
                    await send({"type": "lifespan.startup.failed", "message": f"tenantgate client: {error}"})
                    return
            elif message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.close()
            await send(message)

        return send_with_the_client


def _watching_quota(steps: Admission, seen: list[QuotaResult]) -> Admission:
    """``steps``, passing each answer on and keeping the ConsumeQuota results seen: the counts the quota headers
    report (the flow's own answer names only what was refused)."""
    try:
        asked: tuple[Call[Any], ...] = next(steps)
        while True:
            try:
                answers = yield asked
            except CallError as error:
                asked = steps.throw(error)
            else:
                seen.extend(answer for answer in answers if isinstance(answer, QuotaResult))
                asked = steps.send(answers)
    except StopIteration as finished:
        result: Admitted | Refused = finished.value
        return result


def _amounts(quotas: Mapping[str, int] | Iterable[str]) -> dict[str, int]:
    amounts = dict(quotas) if isinstance(quotas, Mapping) else dict.fromkeys([quotas] if isinstance(quotas, str)
                                                                            else quotas, 1)
    for quota, amount in amounts.items():
        if not isinstance(amount, int) or amount < 0:
            raise ConfigurationError(f"quota {quota!r}: the amount per request must be a whole number >= 0, "
                                     f"got {amount!r}")
    return amounts


def _headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The request headers the mapping reads (the contract's bounds, checked after, keep oversized ones from
    travelling), as the Envoy adapter reads them."""
    return joined_headers(((name.decode("latin-1").lower(), value) for name, value in raw), _READ,
                          lambda value: value.decode("latin-1"))


def _path_problem(path: str) -> str:
    if "?" in path or "#" in path:
        return "the decoded path holds '?' or '#'"
    segments = path.split("/")
    if any(segment in (".", "..") for segment in segments):
        return "the path holds a '.' or '..' segment"
    # An empty segment ("//", a trailing "/") would be checked as another resource than the one a framework that
    # normalises paths serves: refused rather than guessed.
    if path != "/" and any(segment == "" for segment in segments[1:]):
        return "the path holds an empty segment ('//' or a trailing '/')"
    return ""


def _quota_headers(result: QuotaResult) -> list[tuple[bytes, bytes]]:
    """``RateLimit-Policy`` names each quota's capacity (the most it holds at once) without a window: a
    ConsumeQuota answer does not say the quota's window, which the Envoy adapter adds."""
    policy = ratelimit_headers.joined(ratelimit_headers.policy_item(item.quota, item.limit) for item in result.items)
    state = ratelimit_headers.joined(ratelimit_headers.state_item(item.quota, item.remaining, item.reset_after)
                                     for item in result.items)
    return [(ratelimit_headers.POLICY_HEADER.encode(), policy.encode()),
            (ratelimit_headers.STATE_HEADER.encode(), state.encode())]


class _Refusal:
    """A refusal as HTTP: its status, JSON body (as the Envoy adapter's refusals have it) and headers."""

    def __init__(self, refused: Refused, quota: QuotaResult | None, quota_headers: list[tuple[bytes, bytes]]) -> None:
        self.status = _STATUS_BY_REASON.get(refused.reason, 403)
        self.reason = refused.reason
        body: dict[str, Any] = {"allowed": False, "reason": refused.reason}
        headers = [("content-type", "application/json")]
        if refused.decision_id:
            body["decision_id"] = refused.decision_id
            headers.append((DECISION_ID_HEADER, refused.decision_id))
        if refused.detail:
            body["detail"] = refused.detail
        if self.status == 401:
            headers.append(("www-authenticate", bearer_challenge(refused.reason != UNAUTHENTICATED,
                                                                 refused.reason == Reason.TOKEN_EXPIRED)))
        if self.status == 429:
            items = quota.items if quota is not None else ()  # (a QuotaResult's truth is its ``allowed``)
            body["quotas"] = [item.quota for item in items if not item.allowed and not item.shadow]
            body["retry_after"] = refused.retry_after
            headers.append((ratelimit_headers.RETRY_AFTER_HEADER, str(refused.retry_after)))
        self.body = json.dumps(body).encode()
        headers.append(("content-length", str(len(self.body))))
        self.headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
        if self.status == 429:
            self.headers += quota_headers


async def _refuse_http(refusal: _Refusal, send: Send) -> None:
    await send({"type": "http.response.start", "status": refusal.status, "headers": refusal.headers})
    await send({"type": "http.response.body", "body": refusal.body})


async def _refuse_websocket(refusal: _Refusal, scope: Scope, receive: Receive, send: Send) -> None:
    message = await receive()
    if message["type"] != "websocket.connect":  # the client left first
        return
    if "websocket.http.response" in (scope.get("extensions") or {}):
        await send({"type": "websocket.http.response.start", "status": refusal.status, "headers": refusal.headers})
        await send({"type": "websocket.http.response.body", "body": refusal.body})
        return
    code = TRY_AGAIN_LATER if refusal.status in (429, 503) else POLICY_VIOLATION
    await send({"type": "websocket.close", "code": code, "reason": refusal.reason})
