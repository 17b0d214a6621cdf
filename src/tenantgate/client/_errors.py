"""The errors a call raises: one class per status a tenantgate server answers, mapped in one place.

Each is a ``CallError`` and also the ``tenantgate.errors`` class of the same name (``except
tenantgate.errors.NotFound`` catches the client's ``NotFound`` too), so the names mean the same on both
sides of the wire. ``str(error)`` is ``"STATUS: details"``; ``field`` names the request field a server
rejected (from the ``google.rpc.BadRequest`` in the status details), when it named one."""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2

from tenantgate import errors

_STATUS_DETAILS = "grpc-status-details-bin"


class CallError(errors.TenantgateError):
    """A call that tenantgate answered with an error status, or that could not reach it (``status``)."""

    def __init__(self, status: grpc.StatusCode, details: str, *, field: str = "") -> None:
        super().__init__(f"{status.name}: {details}", field=field)
        self.status = status
        self.details = details


class InvalidArgument(CallError, errors.InvalidArgument):
    """A malformed request; ``field`` names the field."""


class NotFound(CallError, errors.NotFound):
    """An unknown tenant, quota, key purpose or version, or a lease that is not held. ``resource_type`` and
    ``resource_name`` say what, where the server said (``quota``, ``api-requests``)."""


class PermissionDenied(CallError, errors.PermissionDenied):
    """This caller may not do that (read a tenant's keys, say)."""


class Unauthenticated(CallError, errors.Unauthenticated):
    """The call named no caller where one is needed."""


class FailedPrecondition(CallError, errors.FailedPrecondition):
    """Not in this state: a tenant not Active, a disabled key version, ``min_revision`` not reached in time."""


class Aborted(CallError, errors.Aborted):
    """An idempotency key reused with another request."""


class ResourceExhausted(CallError, errors.ResourceExhausted):
    """The server has too many calls in flight."""


class Unavailable(CallError, errors.Unavailable):
    """No replica could answer (after the retries): down, draining, not loaded yet, or failing closed."""


class DeadlineExceeded(CallError):
    """The call's deadline passed before an answer came."""

    code = "DEADLINE_EXCEEDED"


_BY_STATUS: dict[grpc.StatusCode, type[CallError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}
_BY_NUMBER = {status.value[0]: status for status in grpc.StatusCode}


def status_of(number: int) -> grpc.StatusCode:
    """A ``google.rpc.Code`` number (what a batch's CheckError carries) as a status code."""
    return _BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def error_from_status(status: grpc.StatusCode, details: str, field: str = "") -> CallError:
    """The error for a status; any status not listed above is a plain CallError."""
    return _BY_STATUS.get(status, CallError)(status, details, field=field)


def error_from_rpc(error: grpc.RpcError) -> CallError:
    """A failed call's ``grpc.RpcError`` (sync or asyncio) as the error the client raises, with what its status
    details say: the field a ``google.rpc.BadRequest`` names, the resource a ``google.rpc.ResourceInfo`` names."""
    details = _status_details(error.trailing_metadata() or ())
    field = next((violation.field for detail in details if isinstance(detail, error_details_pb2.BadRequest)
                  for violation in detail.field_violations), "")
    raised = error_from_status(error.code(), error.details() or "", field)
    if isinstance(raised, NotFound):
        for detail in details:
            if isinstance(detail, error_details_pb2.ResourceInfo):
                raised.resource_type, raised.resource_name = detail.resource_type, detail.resource_name
                break
    return raised


_DETAIL_TYPES = (error_details_pb2.BadRequest, error_details_pb2.ResourceInfo)


def _status_details(metadata: Iterable[tuple[str, str | bytes]]) -> list[Message]:
    """The details this client reads (BadRequest, ResourceInfo) of the ``google.rpc.Status`` a server sent."""
    for key, value in metadata:
        if key != _STATUS_DETAILS or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            return []
        found: list[Message] = []
        for detail in status.details:
            for kind in _DETAIL_TYPES:
                message = kind()
                if detail.Unpack(message):
                    found.append(message)
        return found
    return []
