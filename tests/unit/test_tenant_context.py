"""The tenant context: set for a block, carried by asyncio tasks, sent on outgoing calls, added to logs."""

from __future__ import annotations

import asyncio
import logging

from tenantgate.client.context import (
    TenantContext,
    TenantLogFilter,
    current_tenant,
    outgoing_metadata,
    tenant_context,
)


def test_a_context_is_current_inside_its_block_only() -> None:
    assert current_tenant() is None
    outer = TenantContext("acme", subject="user:alice", home_tenant_id="acme", token="secret-token")
    with tenant_context(outer):
        assert current_tenant() is outer
        with tenant_context(TenantContext("globex")):
            assert current_tenant() == TenantContext("globex")
        assert current_tenant() is outer
    assert current_tenant() is None
    assert "secret-token" not in repr(outer)


async def test_tasks_started_inside_a_request_carry_its_tenant() -> None:
    async def read() -> TenantContext | None:
        await asyncio.sleep(0)
        return current_tenant()

    with tenant_context(TenantContext("acme")):
        task = asyncio.create_task(read())
    assert await task == TenantContext("acme")  # the task copied the context it was created in
    assert current_tenant() is None


def test_outgoing_calls_carry_the_tenant_and_its_token() -> None:
    assert outgoing_metadata(None) == ()
    assert outgoing_metadata(TenantContext("acme")) == (("x-tenant-id", "acme"),)
    assert outgoing_metadata(TenantContext("acme", token="t0k")) == (("x-tenant-id", "acme"),
                                                                     ("authorization", "Bearer t0k"))


def test_log_records_name_the_tenant(caplog: object) -> None:
    record = logging.LogRecord("app", logging.INFO, __file__, 1, "served", (), None)
    log_filter = TenantLogFilter()
    assert log_filter.filter(record) and record.tenant_id == ""  # type: ignore[attr-defined]
    with tenant_context(TenantContext("acme", subject="user:alice", decision_id="d-1")):
        assert log_filter.filter(record)
    assert (record.tenant_id, record.subject, record.decision_id) == ("acme", "user:alice", "d-1")  # type: ignore[attr-defined]
