"""A thin typed client over the generated stubs: deadlines and the caller identity on every call."""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType

from tenantgate.channels import ChannelSecurity, open_channel
from tenantgate.identity import CALLER_METADATA
from tenantgate.v1 import decision_pb2 as pb
from tenantgate.v1 import decision_pb2_grpc


class DecisionClient:
    def __init__(self, target: str, *, timeout: float = 5.0, caller: str = "",
                 security: ChannelSecurity | None = None) -> None:
        self._channel = open_channel(target, security)
        self._stub = decision_pb2_grpc.DecisionServiceStub(self._channel)
        self._timeout = timeout
        self._metadata = ((CALLER_METADATA, caller),) if caller else ()

    def __enter__(self) -> DecisionClient:
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def check_access(self, tenant_id: str, action: str, resource: str, *, subject: str = "", token: str = "",
                     subject_tenant_id: str = "", environment: str = "",
                     min_revision: int = 0) -> pb.CheckAccessResponse:
        request = pb.CheckAccessRequest(tenant_id=tenant_id, subject=subject, token=token,
                                        subject_tenant_id=subject_tenant_id, action=action, resource=resource,
                                        environment=environment, min_revision=min_revision)
        response: pb.CheckAccessResponse = self._stub.CheckAccess(request, timeout=self._timeout,
                                                                  metadata=self._metadata)
        return response

    def consume_quota(self, tenant_id: str, items: Iterable[tuple[str, int]], *, release: bool = False,
                      lease_id: str = "", idempotency_key: str = "") -> pb.ConsumeQuotaResponse:
        request = pb.ConsumeQuotaRequest(
            tenant_id=tenant_id, release=release, idempotency_key=idempotency_key,
            items=[pb.QuotaItem(quota=quota, amount=amount, lease_id=lease_id) for quota, amount in items])
        response: pb.ConsumeQuotaResponse = self._stub.ConsumeQuota(request, timeout=self._timeout,
                                                                    metadata=self._metadata)
        return response

    def get_tenant_key(self, tenant_id: str, purpose: str, version: int = 0) -> pb.GetTenantKeyResponse:
        request = pb.GetTenantKeyRequest(tenant_id=tenant_id, purpose=purpose, version=version)
        response: pb.GetTenantKeyResponse = self._stub.GetTenantKey(request, timeout=self._timeout,
                                                                    metadata=self._metadata)
        return response

    def resolve_tenant(self, tenant_id: str) -> pb.ResolveTenantResponse:
        response: pb.ResolveTenantResponse = self._stub.ResolveTenant(
            pb.ResolveTenantRequest(tenant_id=tenant_id), timeout=self._timeout, metadata=self._metadata)
        return response

    def validate_token(self, token: str, tenant_id: str = "") -> pb.ValidateTokenResponse:
        response: pb.ValidateTokenResponse = self._stub.ValidateToken(
            pb.ValidateTokenRequest(token=token, tenant_id=tenant_id), timeout=self._timeout,
            metadata=self._metadata)
        return response
