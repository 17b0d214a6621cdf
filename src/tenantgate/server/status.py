"""The one place tenantgate errors become gRPC statuses (with a field violation for bad arguments)."""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from tenantgate.errors import TenantgateError

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
    return status


def maps_errors(handler: Handler[Request, Response]) -> Handler[Request, Response]:
    """Turn a raised TenantgateError into its status, anything unexpected into INTERNAL with a logged id."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Request, context: grpc.aio.ServicerContext) -> Response:
        try:
            return await handler(self, request, context)
        except TenantgateError as error:
            await context.abort_with_status(rpc_status.to_status(rich_status(error)))
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except Exception:
            incident = secrets.token_hex(6)
            log.exception("internal error %s in %s", incident, handler.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error (incident {incident})")
        raise AssertionError("unreachable: abort raises")

    return wrapper
