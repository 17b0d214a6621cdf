"""OpenTelemetry on the serving side (``serve --otel``, with the ``otel`` extra installed): a server span for
each call, made by opentelemetry-instrumentation-grpc's grpc.aio interceptor and continuing the caller's trace
(its ``traceparent`` metadata), and on the spans of DecisionService calls the tenant asked about and what was
decided.

Imported only when the setting is on (``app``): a server without it imports no OpenTelemetry and runs none of
this per call, not even a check. Spans go to the global tracer provider, which the process is run with
(``opentelemetry-instrument``, or an embedding application's own ``TracerProvider``)."""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import (
    GrpcAioInstrumentorServer,
    aio_server_interceptor,
    filters,
)

from tenantgate.engines.access import Reason
from tenantgate.errors import ConfigurationError
from tenantgate.server.decision import DecisionServicer
from tenantgate.v1 import decision_pb2 as pb

TENANT_ID = "tenantgate.tenant_id"
# The engine's reason (ALLOWED, NO_MATCHING_GRANT...; QUOTA_EXCEEDED for a quota), as the decision log and the
# Envoy adapter's metadata name it.
REASON = "tenantgate.decision.reason"
DECISION_ID = "tenantgate.decision.id"
ALLOWED = "tenantgate.decision.allowed"
REVISION = "tenantgate.registry.revision"

HEALTH_SERVICE = "grpc.health.v1.Health"
# Not traced: health, whose Watch the interceptor breaks (it takes every server-streaming handler for an async
# generator, and Watch writes with context.write: open-telemetry/opentelemetry-python-contrib#3066; every SDK
# client watches health), and reflection, which is tooling, not the work.
_UNTRACED = filters.negate(filters.any_of(filters.service_name(HEALTH_SERVICE),
                                          filters.service_prefix("grpc.reflection.")))
_REASONS = {reason.value: reason.name for reason in Reason}

Attributes = Mapping[str, str | bool | int]
Handler = Callable[[DecisionServicer, Any, grpc.aio.ServicerContext], Awaitable[Any]]


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The span interceptor for a grpc.aio server; none when the process already adds one to every grpc.aio
    server (``opentelemetry-instrument`` runs the grpc instrumentation, which wraps ``grpc.aio.server``), so
    that each call has one server span, not two. That one must leave health out (see _UNTRACED), or no
    client that checks health would send this server a call: refused unless it does."""
    if not _server_instrumented_globally():
        return [aio_server_interceptor(filter_=_UNTRACED)]  # type: ignore[no-untyped-call]
    # Read as the instrumentation read it when it was set up (the process's start).
    excluded = {name.strip() for name in os.environ.get("OTEL_PYTHON_GRPC_EXCLUDED_SERVICES", "").split(",")}
    if HEALTH_SERVICE not in excluded:
        raise ConfigurationError(
            "this process adds OpenTelemetry's interceptor to every grpc.aio server (opentelemetry-instrument), "
            f"{HEALTH_SERVICE} included, whose Watch it breaks (open-telemetry/opentelemetry-python-contrib#3066): "
            "run with OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=grpc_aio_server (otel adds its own interceptor), or "
            f"with OTEL_PYTHON_GRPC_EXCLUDED_SERVICES={HEALTH_SERVICE}")
    return []


def flush_spans(timeout_millis: int = 5000) -> None:
    """Export the spans still buffered (a batch processor holds seconds of them): ``serve`` ends the process with
    ``os._exit``, which runs no exit hook, so the provider's own flush at exit never comes. The API's default
    provider holds nothing and has no flush."""
    flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if flush is not None:
        flush(timeout_millis)


def _server_instrumented_globally() -> bool:
    # The instrumentor is a singleton; its constructor is not called here, as it would reset the filter the
    # global instrumentation was given.
    instrumentor = GrpcAioInstrumentorServer._instance
    return instrumentor is not None and bool(instrumentor.is_instrumented_by_opentelemetry)


def _access_decision(serialized: bytes) -> Attributes:
    # CheckAccess answers its response serialized (DecisionServicer.SERIALIZED_ANSWERS).
    response = pb.CheckAccessResponse.FromString(serialized)
    return {REASON: _REASONS.get(response.reason, "UNSPECIFIED"), ALLOWED: response.allowed,
            DECISION_ID: response.decision_id, REVISION: response.revision}


def _tenant_access_decision(response: pb.CheckTenantAccessResponse) -> Attributes:
    return {REASON: _REASONS.get(response.reason, "UNSPECIFIED"), ALLOWED: response.allowed,
            REVISION: response.revision}


def _quota_decision(response: pb.ConsumeQuotaResponse) -> Attributes:
    return {REASON: "ALLOWED" if response.allowed else "QUOTA_EXCEEDED", ALLOWED: response.allowed,
            REVISION: response.revision}


def _token_decision(response: pb.ValidateTokenResponse) -> Attributes:
    # The tenant of a token is known once it is read: the request names, at most, the one it is expected from.
    found: dict[str, str | bool | int] = {REASON: _REASONS.get(response.reason, "UNSPECIFIED"),
                                          ALLOWED: response.valid}
    if response.tenant_id:
        found[TENANT_ID] = response.tenant_id
    return found


def _traced(handler: Handler, request_type: type[Any],
            describe: Callable[[Any], Attributes] | None = None) -> Handler:
    """``handler``, putting the request's tenant on the call's span before it runs (a call that fails still
    says whose it was) and, once it has answered, what ``describe`` reads from the answer."""

    @functools.wraps(handler)
    async def traced(servicer: DecisionServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        span = trace.get_current_span()
        # An undecodable request (handlers.Undecodable) has no tenant: the handler answers INVALID_ARGUMENT.
        if isinstance(request, request_type) and request.tenant_id:
            span.set_attribute(TENANT_ID, request.tenant_id)
        response = await handler(servicer, request, context)
        if describe is not None:
            span.set_attributes(describe(response))
        return response

    return traced


class TracedDecisionServicer(DecisionServicer):
    """DecisionService with the tenant and the decision on each call's span. CheckAccessBatch is left as it is:
    its checks may each name another tenant."""

    CheckAccess = _traced(DecisionServicer.CheckAccess, pb.CheckAccessRequest, _access_decision)
    ConsumeQuota = _traced(DecisionServicer.ConsumeQuota, pb.ConsumeQuotaRequest, _quota_decision)
    ValidateToken = _traced(DecisionServicer.ValidateToken, pb.ValidateTokenRequest, _token_decision)
    GetTenantKey = _traced(DecisionServicer.GetTenantKey, pb.GetTenantKeyRequest)
    GetTenantKeyMetadata = _traced(DecisionServicer.GetTenantKeyMetadata, pb.GetTenantKeyMetadataRequest)
    GetDataKey = _traced(DecisionServicer.GetDataKey, pb.GetDataKeyRequest)
    DecryptDataKey = _traced(DecisionServicer.DecryptDataKey, pb.DecryptDataKeyRequest)
    ResolveTenant = _traced(DecisionServicer.ResolveTenant, pb.ResolveTenantRequest)
    CheckTenantAccess = _traced(DecisionServicer.CheckTenantAccess, pb.CheckTenantAccessRequest,
                                _tenant_access_decision)
