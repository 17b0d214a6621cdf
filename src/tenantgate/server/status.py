"""The one place tenantgate errors become gRPC statuses (with a field violation for bad arguments, and what was not
found for NOT_FOUND)."""

from __future__ import annotations

import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from tenantgate import metrics
from tenantgate.errors import InvalidArgument, NotFound, TenantgateError
from tenantgate.server.handlers import Undecodable

log = logging.getLogger("tenantgate.server")

Request = TypeVar("Request")
Response = TypeVar("Response")
Handler = Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Response]]


def status_code(error: TenantgateError) -> grpc.StatusCode:
    return grpc.StatusCode[error.code]


def rich_status(error: TenantgateError) -> status_pb2.Status:
    code = status_code(error)
    status = status_pb2.Status(code=code.value[0], message=error.message)
    if error.field and error.code == "INVALID_ARGUMENT":
        violation = error_details_pb2.BadRequest.FieldViolation(field=error.field, description=error.message)
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    elif isinstance(error, NotFound) and error.resource_type:
        status.details.add().Pack(error_details_pb2.ResourceInfo(resource_type=error.resource_type,
                                                                 resource_name=error.resource_name,
                                                                 description=error.message))
    return status


def maps_errors(handler: Handler[Request, Response]) -> Handler[Request, Response]:
    """Turn a raised TenantgateError into its status, anything unexpected into INTERNAL with a logged id;
    count every call by method and code, and time it."""
    method = handler.__name__
    handled_ok = metrics.RPC_HANDLED.labels(method, "OK")
    latency = metrics.RPC_LATENCY.labels(method)

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Request, context: grpc.aio.ServicerContext) -> Response:
        started = time.perf_counter()
        try:
            if isinstance(request, Undecodable):
                raise InvalidArgument(f"the request is not a valid {request.message}: {request.problem}")
            response = await handler(self, request, context)
        except TenantgateError as error:
            metrics.RPC_HANDLED.labels(method, error.code).inc()
            latency.observe(time.perf_counter() - started)
            status = rpc_status.to_status(rich_status(error))
            # What abort_with_status does, called on the context the handler was given: a wrapped one (the
            # OpenTelemetry interceptor's, which records the code on the span) sees the status.
            await context.abort(status.code, status.details, status.trailing_metadata)
            raise AssertionError("unreachable: abort raises") from None
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except Exception:
            incident = secrets.token_hex(6)
            log.exception("internal error %s in %s", incident, method)
            metrics.RPC_HANDLED.labels(method, "INTERNAL").inc()
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error (incident {incident})")
            raise AssertionError("unreachable: abort raises") from None
        handled_ok.inc()
        latency.observe(time.perf_counter() - started)
        return response

    return wrapper
