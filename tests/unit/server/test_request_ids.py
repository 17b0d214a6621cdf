"""Tenant ids from callers: the pattern holds to the end of the string, a final newline included."""

from __future__ import annotations

import pytest

from tenantgate.errors import InvalidArgument
from tenantgate.server.requests import read_check, tenant_id
from tenantgate.v1 import decision_pb2 as pb


@pytest.mark.parametrize("value", ["acme\n", "acme\r\n", "\nacme"])
def test_a_tenant_id_with_a_newline_is_invalid(value: str) -> None:
    with pytest.raises(InvalidArgument, match="is not a tenant id"):
        tenant_id(value)
    request = pb.CheckAccessRequest(tenant_id=value, subject="user:a", action="read", resource="r")
    with pytest.raises(InvalidArgument, match="is not a tenant id"):
        read_check(request)
