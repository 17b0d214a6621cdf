"""Drop-in enforcement for a service's own gRPC methods: server interceptors that ask tenantgate whether each
call may run, refuse those that may not, and run the others with their tenant as the current
``TenantContext``.

    from tenantgate.client import Client, EnforcementInterceptor, EnforcementPolicy

    policy = EnforcementPolicy(quotas={"api-requests": 1}, public={"/grpc.health.v1.Health/*"})
    server = grpc.server(executor, interceptors=[EnforcementInterceptor(Client("tenantgate:50051"), policy)])

``AsyncEnforcementInterceptor`` (``enforcement_aio``) does the same on a ``grpc.aio`` server with an
``AsyncClient``. Both read a call by one ``EnforcementPolicy`` and decide it by one flow (``_admission``, which
the ASGI middleware's decisions follow too). A refused call is answered

- UNAUTHENTICATED: no credentials, or a token that is invalid or expired;
- PERMISSION_DENIED: the check denied it;
- RESOURCE_EXHAUSTED: a quota is spent; the ``retry-after`` trailer says in how many seconds to retry;
- UNAVAILABLE: tenantgate could not be asked (unless ``on_unavailable="allow"``), or cannot read the tenant;
- INVALID_ARGUMENT: the call's tenant or token is malformed, or given twice;

with the reason in its details, and the ``x-tenantgate-decision-id`` trailer when tenantgate made a decision.
The questions are asked in the handler's turn (a worker thread of a grpc server, the call's task on a
grpc.aio server), never on the thread that dispatches calls, and the handler runs, streams included, with
its tenant current; a concurrency quota's unit is given back when the handler ends.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypeVar

import grpc

from tenantgate.client._admission import (
    INVALID_REQUEST,
    QUOTA_EXCEEDED,
    TENANT_UNAVAILABLE,
    UNAUTHENTICATED,
    UNAVAILABLE,
    Admitted,
    Question,
    Refused,
    admission,
    release,
    run_blocking,
)
from tenantgate.client._results import Reason
from tenantgate.client.context import AUTHORIZATION_METADATA, TENANT_METADATA, TenantContext, tenant_context
from tenantgate.client.sync import Client
from tenantgate.errors import ConfigurationError
from tenantgate.httpmapping import bearer_token
from tenantgate.identity import caller_from_auth_context

T = TypeVar("T")
# Trailing metadata of a refused call: the decision to look up in tenantgate's decision log, and (a quota
# spent) how many whole seconds to wait before trying again, as HTTP's Retry-After.
DECISION_ID_METADATA = "x-tenantgate-decision-id"
RETRY_AFTER_METADATA = "retry-after"
Metadata = Iterable[tuple[str, str | bytes]]


@dataclass(frozen=True, slots=True)
class MethodAccess:
    """What a call to one method is checked as: ``action`` on ``resource`` of the caller's tenant, spending
    ``quotas`` (quota name -> amount) of that tenant per call; ``quotas`` None spends the policy's."""

    action: str
    resource: str
    quotas: Mapping[str, int] | None = None


def access_by_name(service: str, method: str) -> MethodAccess:
    """The default mapping: ``/shop.v1.Orders/GetOrder`` is action ``GetOrder`` on resource
    ``shop.v1.Orders``. A manifest grants one method (``GetOrder:shop.v1.Orders``), every method of a service
    (``*:shop.v1.Orders``) or of a package (``*:shop.v1.*``)."""
    return MethodAccess(method, service)


@dataclass(frozen=True)
class EnforcementPolicy:
    """How the enforcement reads a call; the same for the grpc and the grpc.aio interceptor.

    ``methods``: the access of listed methods, by full name (``/shop.v1.Orders/GetOrder``) or for a whole
    service (``/shop.v1.Orders/*``); any other method is checked as ``default(service, method)`` says
    (``access_by_name``). ``public``: methods (same forms) that run unchecked and without a tenant, such as
    ``/grpc.health.v1.Health/*`` for probes; nothing is public unless listed. ``quotas``: quota name ->
    amount each allowed call spends of its tenant's quotas, all or nothing (a method's
    ``MethodAccess.quotas`` replaces it); a quota the tenant does not declare is left out.

    The tenant is the ``x-tenant-id`` metadata, else the home tenant of the bearer token (``authorization:
    Bearer``); the subject is the one the token verifies. ``subject_metadata``: a metadata key (say
    ``x-tenantgate-subject``) naming the subject of a call with no token, which must then name its tenant:
    for service-to-service calls from callers this service trusts to name themselves. ``subject_callers``: the
    callers allowed to, as their client certificates name them under mutual TLS (``service:<name>``, named as
    tenantgate names its own callers: a SAN URI ending ``/service/<name>``, else the first DNS SAN, else the
    CN); a call naming a subject from any other caller is UNAUTHENTICATED. Without ``subject_callers``, any
    caller that reaches the service can claim any subject: only where a network it trusts keeps others out.
    ``environment``: the environment this service runs in, for bindings limited to environments; this
    service's to say, not the caller's.

    ``on_unavailable``: what a call gets when tenantgate gives no answer (down, overloaded, past the
    client's deadline): ``"deny"`` (UNAVAILABLE, the default) or ``"allow"``, which runs it with no tenant
    context at all (nothing was verified) and logs a warning for each such call."""

    methods: Mapping[str, MethodAccess] = field(default_factory=dict)
    default: Callable[[str, str], MethodAccess] = access_by_name
    public: Collection[str] = ()
    quotas: Mapping[str, int] = field(default_factory=dict)
    environment: str = ""
    subject_metadata: str = ""
    subject_callers: Collection[str] = ()
    on_unavailable: Literal["deny", "allow"] = "deny"

    def __post_init__(self) -> None:
        if self.on_unavailable not in ("deny", "allow"):
            raise ConfigurationError(f"on_unavailable is 'deny' or 'allow', got {self.on_unavailable!r}")
        for name in (*self.methods, *self.public):
            if not name.startswith("/") or name.count("/") != 2:
                raise ConfigurationError(f"{name!r} is not a method: give /package.Service/Method or "
                                         "/package.Service/*")
        for quotas in (self.quotas, *(access.quotas for access in self.methods.values() if access.quotas)):
            for quota, amount in quotas.items():
                if not quota or not isinstance(amount, int) or amount < 0:
                    raise ConfigurationError(f"quota {quota!r} needs a name and a whole amount of 0 or more, "
                                             f"got {amount!r}")
        if self.subject_metadata != self.subject_metadata.lower() or self.subject_metadata in (
                TENANT_METADATA, AUTHORIZATION_METADATA):
            raise ConfigurationError(f"subject_metadata {self.subject_metadata!r} must be a lower-case metadata "
                                     "key of its own (gRPC metadata keys are lower case)")
        if self.subject_callers and not self.subject_metadata:
            raise ConfigurationError("subject_callers name who may use subject_metadata: give subject_metadata too")
        if isinstance(self.subject_callers, str):
            raise ConfigurationError("subject_callers is a collection of callers, such as {'service:web'}")
        # Frozen: the normalised forms are set once, here.
        object.__setattr__(self, "subject_callers", frozenset(self.subject_callers))
        object.__setattr__(self, "methods", MappingProxyType(dict(self.methods)))
        object.__setattr__(self, "public", frozenset(self.public))
        object.__setattr__(self, "quotas", MappingProxyType(dict(self.quotas)))

    @property
    def fail_open(self) -> bool:
        return self.on_unavailable == "allow"

    def access_for(self, method: str) -> MethodAccess | None:
        """How a call to ``method`` (``/package.Service/Method``) is checked; None for a public method."""
        service, _, name = method.removeprefix("/").rpartition("/")
        whole_service = f"/{service}/*"
        if method in self.public or whole_service in self.public:
            return None
        return self.methods.get(method) or self.methods.get(whole_service) or self.default(service, name)

    def question(self, access: MethodAccess, metadata: Metadata) -> Question | Refused:
        """What tenantgate is asked about a call with ``metadata``, or why it cannot be asked. A key given
        twice with different values is refused: which one the check reads must never be a guess."""
        wanted = {TENANT_METADATA, AUTHORIZATION_METADATA, self.subject_metadata} - {""}
        found: dict[str, str] = {}
        for key, value in metadata:
            if key in wanted and isinstance(value, str) and found.setdefault(key, value) != value:
                return Refused(INVALID_REQUEST, f"{key} is given twice, with different values")
        tenant_id = found.get(TENANT_METADATA, "")
        quotas = self.quotas if access.quotas is None else access.quotas
        token = bearer_token(found.get(AUTHORIZATION_METADATA, ""))
        if token == "":
            return Refused(Reason.TOKEN_INVALID.value, "the bearer token is empty")
        if token is not None:
            return Question(tenant_id, access.action, access.resource, token=token, environment=self.environment,
                            quotas=quotas)
        subject = found.get(self.subject_metadata, "") if self.subject_metadata else ""
        if not subject:
            return Refused(UNAUTHENTICATED, "no bearer token" + (f" and no {self.subject_metadata}"
                                                                 if self.subject_metadata else ""))
        if not tenant_id:
            return Refused(INVALID_REQUEST, f"a call naming its subject must name its tenant ({TENANT_METADATA})")
        return Question(tenant_id, access.action, access.resource, subject=subject, environment=self.environment,
                        quotas=quotas)

    def untrusted_subject(self, question: Question | Refused, context: Any) -> Refused | None:
        """A refusal for ``question`` when it names a subject (``subject_metadata``) and its caller, by the call's
        ``context`` (its connection's auth context, read only then), is not one of ``subject_callers``."""
        if not self.subject_callers or not isinstance(question, Question) or not question.subject:
            return None
        caller = caller_from_auth_context(context)
        if caller in self.subject_callers:
            return None
        return Refused(UNAUTHENTICATED, f"{caller or 'a caller without a client certificate'} may not name its "
                                        f"subject ({self.subject_metadata})")


# Refusals by reason; any other reason is a CheckAccess deny: PERMISSION_DENIED.
_STATUS = {UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED, Reason.TOKEN_INVALID: grpc.StatusCode.UNAUTHENTICATED,
           Reason.TOKEN_EXPIRED: grpc.StatusCode.UNAUTHENTICATED, INVALID_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
           QUOTA_EXCEEDED: grpc.StatusCode.RESOURCE_EXHAUSTED, TENANT_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
           UNAVAILABLE: grpc.StatusCode.UNAVAILABLE}


def refusal_status(refused: Refused) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """How a refused call is answered: its status, details and trailing metadata."""
    trailers: list[tuple[str, str]] = []
    if refused.decision_id:
        trailers.append((DECISION_ID_METADATA, refused.decision_id))
    if refused.retry_after:
        trailers.append((RETRY_AFTER_METADATA, str(refused.retry_after)))
    details = f"{refused.reason}: {refused.detail}" if refused.detail else refused.reason
    return _STATUS.get(refused.reason, grpc.StatusCode.PERMISSION_DENIED), details, tuple(trailers)


# The four kinds of handler, how each is made again around a wrapped behavior, and whether its responses
# stream (a request stream passes through the wrapper untouched).
_KINDS = (("unary_unary", grpc.unary_unary_rpc_method_handler, False),
          ("unary_stream", grpc.unary_stream_rpc_method_handler, True),
          ("stream_unary", grpc.stream_unary_rpc_method_handler, False),
          ("stream_stream", grpc.stream_stream_rpc_method_handler, True))
Behavior = Callable[..., Any]


def guarded(handler: grpc.RpcMethodHandler, unary: Callable[[Behavior], Behavior],
            streaming: Callable[[Behavior], Behavior]) -> grpc.RpcMethodHandler:
    """``handler`` with its behavior wrapped by ``unary`` or, when its responses stream, ``streaming``."""
    for kind, make, streams in _KINDS:
        behavior = getattr(handler, kind)
        if behavior is not None:
            return make((streaming if streams else unary)(behavior),
                        request_deserializer=handler.request_deserializer,
                        response_serializer=handler.response_serializer)
    return handler


def as_tenant(tenant: TenantContext | None) -> AbstractContextManager[Any]:
    return tenant_context(tenant) if tenant is not None else nullcontext()


class EnforcementInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Enforcement on a ``grpc.server``: each call of a method that is not public is decided through
    ``client`` (blocking, on the worker thread that runs the handler) as ``policy`` reads it."""

    def __init__(self, client: Client, policy: EnforcementPolicy | None = None) -> None:
        self._client = client
        self._policy = policy or EnforcementPolicy()

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        access = self._policy.access_for(details.method)
        if handler is None or access is None:
            return handler
        question = self._policy.question(access, tuple(details.invocation_metadata or ()))
        return guarded(handler, lambda behavior: self._unary(behavior, question),
                       lambda behavior: self._streaming(behavior, question))

    def _admit(self, question: Question | Refused, context: grpc.ServicerContext) -> Admitted:
        question = self._policy.untrusted_subject(question, context) or question
        verdict = (question if isinstance(question, Refused)
                   else run_blocking(self._client, admission(question, fail_open=self._policy.fail_open),
                                     context.time_remaining))
        if isinstance(verdict, Admitted):
            return verdict
        status, details, trailers = refusal_status(verdict)
        context.set_trailing_metadata(trailers)
        context.abort(status, details)  # raises: the handler never runs
        raise RuntimeError("grpc's abort() returned")  # and if it ever did, still never run the handler

    def _leave(self, admitted: Admitted) -> None:
        if admitted.leases:
            run_blocking(self._client, release(admitted))

    def _unary(self, behavior: Behavior, question: Question | Refused) -> Behavior:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            admitted = self._admit(question, context)
            try:
                with as_tenant(admitted.tenant):
                    return behavior(request, context)
            finally:
                self._leave(admitted)

        return run

    def _streaming(self, behavior: Behavior, question: Question | Refused) -> Behavior:
        def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            admitted = self._admit(question, context)
            return self._responses(admitted, lambda: behavior(request, context))

        return run

    def _responses(self, admitted: Admitted, start: Callable[[], Iterable[T]]) -> Iterator[T]:
        """The responses of ``start()``, each produced in a context of this call's own where its tenant is
        current. grpc takes them one by one between other work on its thread: a tenant set on the thread
        itself would stay there for that work too, and for later calls if the caller went away mid-stream."""
        context = contextvars.copy_context()
        responses = _responses_as(admitted.tenant, start)
        try:
            while True:
                try:
                    response = context.run(next, responses)
                except StopIteration:
                    return
                yield response
        finally:
            context.run(responses.close)  # ends the handler's stream where its tenant was set
            self._leave(admitted)


def _responses_as(tenant: TenantContext | None, start: Callable[[], Iterable[T]]) -> Generator[T, None, None]:
    with as_tenant(tenant):
        yield from start()
