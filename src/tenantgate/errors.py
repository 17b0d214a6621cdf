"""The errors tenantgate raises, each carrying the gRPC status code it maps to.

The code is a name (``"NOT_FOUND"``), not a ``grpc.StatusCode``, so that engines and the registry stay
free of gRPC; the server turns the name into a status in one place.
"""

from __future__ import annotations

from typing import ClassVar


class TenantgateError(Exception):
    """Base class: a failure the caller should see with a specific status code."""

    code: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidArgument(TenantgateError):
    code = "INVALID_ARGUMENT"


class NotFound(TenantgateError):
    """``resource_type`` and ``resource_name`` say what was not found (``quota``, ``api-requests``), for callers that
    act on it: the server sends them as a ``google.rpc.ResourceInfo``, so that no client reads the message."""

    code = "NOT_FOUND"

    def __init__(self, message: str, *, field: str = "", resource_type: str = "", resource_name: str = "") -> None:
        super().__init__(message, field=field)
        self.resource_type = resource_type
        self.resource_name = resource_name


class PermissionDenied(TenantgateError):
    code = "PERMISSION_DENIED"


class Unauthenticated(TenantgateError):
    code = "UNAUTHENTICATED"


class FailedPrecondition(TenantgateError):
    code = "FAILED_PRECONDITION"


class Aborted(TenantgateError):
    code = "ABORTED"


class ResourceExhausted(TenantgateError):
    code = "RESOURCE_EXHAUSTED"


class Unavailable(TenantgateError):
    code = "UNAVAILABLE"


class ConfigurationError(TenantgateError):
    """A setting or URL that cannot work; raised at start, before anything is served."""

    code = "INVALID_ARGUMENT"


class StorageError(Unavailable):
    """A registry or counter backend failed; the backend's own exception is the cause."""
