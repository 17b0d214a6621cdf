"""Client interceptors that send the current tenant on: every call made through a channel carrying them
gets ``x-tenant-id`` and the bearer token (``authorization: Bearer``) of ``current_tenant()``, so the next
service decides for the same tenant and the same verified caller.

    channel = grpc.intercept_channel(grpc.insecure_channel("orders:50051"), TenantPropagation())
    channel = grpc.aio.insecure_channel("orders:50051", interceptors=async_tenant_propagation())

Unary and streaming calls alike. A call that sets one of those keys itself keeps its own value; outside a
tenant (no ``current_tenant()``) calls go out unchanged. The token is a credential: put these on channels to
the services that should act for the caller, or pass ``forward_token=False`` to send the tenant alone.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterable
from typing import Any

import grpc

from tenantgate.client.context import TENANT_METADATA, current_tenant, outgoing_metadata


def _added(metadata: Iterable[tuple[str, str | bytes]] | None, forward_token: bool) -> list[tuple[str, str]]:
    """What the current tenant adds to a call's ``metadata``: its keys the call does not set itself."""
    tenant = current_tenant()
    if tenant is None:
        return []
    present = {key for key, _ in metadata or ()}
    return [(key, value) for key, value in outgoing_metadata(tenant)
            if key not in present and (forward_token or key == TENANT_METADATA)]


class _CallDetails(namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                                               "compression")),
                   grpc.ClientCallDetails):  # type: ignore[misc]
    """A blocking call's details with other metadata: grpc offers no public constructor for them."""


class TenantPropagation(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
                        grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):  # type: ignore[misc]
    """For ``grpc.intercept_channel``: sends the current tenant with every call, unary and streaming."""

    def __init__(self, *, forward_token: bool = True) -> None:
        self._forward_token = forward_token

    def _details(self, details: Any) -> Any:
        added = _added(details.metadata, self._forward_token)
        if not added:
            return details
        return _CallDetails(details.method, details.timeout, (*(details.metadata or ()), *added),
                            details.credentials, getattr(details, "wait_for_ready", None),
                            getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


class _AsyncPropagation:
    def __init__(self, forward_token: bool) -> None:
        self._forward_token = forward_token

    def _details(self, details: Any) -> Any:
        added = _added(details.metadata, self._forward_token)
        if not added:
            return details
        return grpc.aio.ClientCallDetails(details.method, details.timeout,
                                          grpc.aio.Metadata(*(details.metadata or ()), *added),
                                          details.credentials, details.wait_for_ready)


# grpc.aio files each interceptor under the first call kind it implements: one class per kind.
class _AsyncUnaryUnary(_AsyncPropagation, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _AsyncUnaryStream(_AsyncPropagation, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _AsyncStreamUnary(_AsyncPropagation, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


class _AsyncStreamStream(_AsyncPropagation, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def async_tenant_propagation(*, forward_token: bool = True) -> list[grpc.aio.ClientInterceptor]:
    """For a ``grpc.aio`` channel's ``interceptors``: sends the current tenant with every call, unary and
    streaming (one interceptor per call kind, as grpc.aio takes them)."""
    return [kind(forward_token) for kind in (_AsyncUnaryUnary, _AsyncUnaryStream, _AsyncStreamUnary,
                                             _AsyncStreamStream)]
