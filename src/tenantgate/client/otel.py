"""OpenTelemetry for the SDK's clients (the ``otel`` extra): a client span for each call, made by
opentelemetry-instrumentation-grpc, and the trace context sent with it (``traceparent`` metadata), so that a
server run with ``--otel`` continues the caller's trace with its own span.

    from tenantgate.client import AsyncClient, Client, TenantPropagation
    from tenantgate.client.otel import aio_client_interceptors, client_interceptors

    client = Client("tenantgate:50051", interceptors=client_interceptors())
    async_client = AsyncClient("tenantgate:50051", interceptors=aio_client_interceptors())  # on its event loop

The interceptors work on any channel of the same kind (``grpc.intercept_channel``, ``grpc.aio``'s
``interceptors``), beside others, e.g. ``[*client_interceptors(), TenantPropagation()]``. Spans go to the
global tracer provider unless ``tracer_provider`` is given. Importing this module needs the extra; the rest
of the SDK never imports it."""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable
from typing import Any

import grpc
from opentelemetry.instrumentation import grpc as instrumentation
from opentelemetry.instrumentation.grpc import grpcext
from opentelemetry.trace import TracerProvider

from tenantgate.client.propagation import _CallDetails

__all__ = ["aio_client_interceptors", "client_interceptors"]


def client_interceptors(tracer_provider: TracerProvider | None = None) -> list[grpc.UnaryUnaryClientInterceptor]:
    """For ``Client(..., interceptors=...)`` or ``grpc.intercept_channel``: a span per unary call, its trace
    context sent to the server."""
    spans = instrumentation.client_interceptor(tracer_provider=tracer_provider)  # type: ignore[no-untyped-call]
    return [_UnarySpans(spans)]


def aio_client_interceptors(tracer_provider: TracerProvider | None = None) -> list[grpc.aio.ClientInterceptor]:
    """For ``AsyncClient(..., interceptors=...)`` or a ``grpc.aio`` channel: a span per call (one interceptor per
    call kind, as grpc.aio takes them), its trace context sent to the server."""
    return list(instrumentation.aio_client_interceptors(tracer_provider=tracer_provider))  # type: ignore[no-untyped-call]


class _UnaryClientInfo(namedtuple("_UnaryClientInfo", ("full_method", "timeout")),
                       grpcext.UnaryClientInfo):
    """What the instrumentation's interceptor reads about a unary call."""


class _UnarySpans(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """The instrumentation's interceptor for blocking channels speaks an interface of its own (``grpcext``, put on
    a channel by its ``intercept_channel``): this one puts it behind gRPC's, which ``grpc.intercept_channel``
    and so ``Client`` take. The span ends when the call's outcome is known: at once for a blocking call, in the
    future's done callback for ``.future()``."""

    def __init__(self, spans: grpcext.UnaryClientInterceptor) -> None:
        self._spans = spans

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        def invoke(request: Any, metadata: Any) -> Any:  # metadata: the call's, with the trace context added
            return continuation(_CallDetails(details.method, details.timeout, metadata, details.credentials,
                                             getattr(details, "wait_for_ready", None),
                                             getattr(details, "compression", None)), request)

        info = _UnaryClientInfo(details.method, details.timeout)
        return self._spans.intercept_unary(request, details.metadata, info, invoke)  # type: ignore[no-untyped-call]
