"""The tenant a piece of work is done for, carried with it: set by the enforcement at a service's front door
(the server interceptors, the ASGI middleware), read by application code, added to log records, and sent on by
the client interceptors with every outgoing call, so that it travels from service to service.

    from tenantgate.client.context import current_tenant

    tenant = current_tenant()          # None outside a request
    if tenant is not None:
        repository.for_tenant(tenant.tenant_id)

It lives in a ``contextvars.ContextVar``: asyncio tasks and ``contextvars.copy_context()`` carry it, threads
started with ``concurrent.futures`` get it only when the context is handed to them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

# Request metadata (gRPC) and headers (HTTP) that carry the context between services. The token is sent as
# the standard ``authorization: Bearer`` header; gRPC metadata keys are lower case.
TENANT_METADATA = "x-tenant-id"
AUTHORIZATION_METADATA = "authorization"


@dataclass(frozen=True, slots=True)
class TenantContext:
    """Who a request is for. ``subject`` and ``home_tenant_id`` are the verified identity when a decision was
    made with a token (identity is the pair: ``user:alice`` of globex is not ``user:alice`` of acme)."""

    tenant_id: str
    subject: str = ""
    home_tenant_id: str = ""
    environment: str = ""
    token: str = field(default="", repr=False)  # a bearer credential: never printed
    decision_id: str = ""


_CURRENT: ContextVar[TenantContext | None] = ContextVar("tenantgate_tenant", default=None)


def current_tenant() -> TenantContext | None:
    """The tenant of the work in progress; None outside any."""
    return _CURRENT.get()


@contextmanager
def tenant_context(context: TenantContext) -> Iterator[TenantContext]:
    """``context`` is the current tenant inside the block, and what it was before after it."""
    reset = _CURRENT.set(context)
    try:
        yield context
    finally:
        _CURRENT.reset(reset)


def outgoing_metadata(context: TenantContext | None) -> tuple[tuple[str, str], ...]:
    """What an outgoing call carries of ``context``: the tenant id and, when there is one, the bearer token."""
    if context is None:
        return ()
    metadata = [(TENANT_METADATA, context.tenant_id)]
    if context.token:
        metadata.append((AUTHORIZATION_METADATA, f"Bearer {context.token}"))
    return tuple(metadata)


class TenantLogFilter(logging.Filter):
    """Adds the current tenant to every log record it sees: ``tenant_id``, ``subject`` and ``decision_id``
    attributes (empty strings outside a request), for a format such as ``%(tenant_id)s``. Install it on a
    handler, so that records of every logger it writes carry them."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _CURRENT.get()
        record.tenant_id = context.tenant_id if context else ""
        record.subject = context.subject if context else ""
        record.decision_id = context.decision_id if context else ""
        return True
