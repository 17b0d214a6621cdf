"""The Python SDK of tenantgate's decision API: a blocking ``Client`` and an asyncio ``AsyncClient`` with the
same calls, answering typed values.

    from tenantgate.client import Client, ClientConfig

    with Client(ClientConfig(["10.0.0.1:50051", "10.0.0.2:50051"], timeout=1.0)) as client:
        decision = client.check_access("acme", "read", "docs/1", subject="user:alice")
        if not decision.allowed:
            ...  # decision.reason says why

Both spread calls over the replicas round-robin and retry UNAVAILABLE with backoff (gRPC's balancer and
retry policy, from the channel's service config), give every call a deadline, send the caller's name, speak
TLS or mutual TLS, and read at the newest registry revision they were told about (``observe_revision``).
Errors are ``CallError`` subclasses, one per status (``NotFound``, ``PermissionDenied``, ``Unavailable``...).

Inside services: ``TenantContext`` (``current_tenant()``, ``TenantLogFilter``) is who the work in progress is
for; ``EnforcementInterceptor`` / ``AsyncEnforcementInterceptor`` decide a service's own gRPC calls by an
``EnforcementPolicy`` and set it; ``TenantPropagation`` / ``async_tenant_propagation()`` send it on.
"""

from tenantgate.channels import ChannelSecurity
from tenantgate.client._config import NO_RETRIES, ClientConfig, RetryPolicy
from tenantgate.client._errors import (
    Aborted,
    CallError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from tenantgate.client._results import (
    Check,
    CheckFailure,
    DataKey,
    Decision,
    HeldRole,
    KeyMetadata,
    KeyVersionInfo,
    QuotaItemResult,
    QuotaResult,
    Reason,
    SubjectTenants,
    TenantAccess,
    TenantInfo,
    TenantKey,
    TokenInfo,
)
from tenantgate.client.aio import AsyncClient
from tenantgate.client.context import TenantContext, TenantLogFilter, current_tenant, tenant_context
from tenantgate.client.enforcement import EnforcementInterceptor, EnforcementPolicy, MethodAccess, access_by_name
from tenantgate.client.enforcement_aio import AsyncEnforcementInterceptor
from tenantgate.client.propagation import TenantPropagation, async_tenant_propagation
from tenantgate.client.sync import Client
from tenantgate.model import KeyState, TenantState

__all__ = [
    "NO_RETRIES",
    "Aborted",
    "AsyncClient",
    "AsyncEnforcementInterceptor",
    "CallError",
    "ChannelSecurity",
    "Check",
    "CheckFailure",
    "Client",
    "ClientConfig",
    "DataKey",
    "DeadlineExceeded",
    "Decision",
    "EnforcementInterceptor",
    "EnforcementPolicy",
    "FailedPrecondition",
    "HeldRole",
    "InvalidArgument",
    "KeyMetadata",
    "KeyState",
    "KeyVersionInfo",
    "MethodAccess",
    "NotFound",
    "PermissionDenied",
    "QuotaItemResult",
    "QuotaResult",
    "Reason",
    "ResourceExhausted",
    "RetryPolicy",
    "SubjectTenants",
    "TenantAccess",
    "TenantContext",
    "TenantInfo",
    "TenantKey",
    "TenantLogFilter",
    "TenantPropagation",
    "TenantState",
    "TokenInfo",
    "Unauthenticated",
    "Unavailable",
    "access_by_name",
    "async_tenant_propagation",
    "current_tenant",
    "tenant_context",
]
