"""The registry through a running server's Admin API (``grpc://host:port``), for the CLI.

Manifests travel as text and are validated again by the server; keys are made with the server's
master key, so the CLI needs none.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, cast

from tenantgate.adminapi import wire
from tenantgate.channels import ChannelSecurity, open_channel
from tenantgate.identity import CALLER_METADATA
from tenantgate.registry.audit import AuditEntry, AuditVerification
from tenantgate.registry.backends import open_store
from tenantgate.registry.manifest import Manifest, PlanDocument
from tenantgate.registry.records import (
    ApplyResult,
    KeyFactory,
    RegistryAdmin,
    RegistrySettings,
    RotationResult,
    TenantInfo,
    TransitionResult,
)
from tenantgate.v1 import decision_pb2 as dpb
from tenantgate.v1 import registry_pb2 as pb
from tenantgate.v1 import registry_pb2_grpc


class RemoteRegistry:
    def __init__(self, target: str, *, timeout: float = 30.0, actor: str = "",
                 security: ChannelSecurity | None = None) -> None:
        self._channel = open_channel(target, security or ChannelSecurity.from_environment())
        self._stub = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self._timeout = timeout
        self._actor = actor

    def _call(self, method: str, request: Any, actor: str = "") -> Any:
        who = actor or self._actor
        metadata = ((CALLER_METADATA, who),) if who else ()
        return getattr(self._stub, method)(request, timeout=self._timeout, metadata=metadata)

    def close(self) -> None:
        self._channel.close()

    def apply(self, manifests: Sequence[Manifest], *, prune: bool = False, dry_run: bool = False,
              actor: str = "", key_factory: KeyFactory | None = None) -> ApplyResult:
        files = [pb.ManifestFile(name=f"plan {manifest.plan.id}" if isinstance(manifest, PlanDocument)
                                 else f"tenant {manifest.tenant.id}", content=json.dumps(manifest.document))
                 for manifest in manifests]
        response = self._call("ApplyManifests", pb.ApplyManifestsRequest(files=files, dry_run=dry_run, prune=prune),
                              actor)
        return wire.apply_from_wire(response)

    def transition(self, tenant_id: str, state: str, *, actor: str = "", force: bool = False,
                   reason: str = "") -> TransitionResult:
        request = pb.TransitionTenantRequest(tenant_id=tenant_id, state=wire.state_to_wire(state), force=force,
                                             reason=reason)
        return wire.transition_from_wire(tenant_id, self._call("TransitionTenant", request, actor))

    def rotate_key(self, tenant_id: str, purpose: str, *, actor: str = "",
                   key_factory: KeyFactory | None = None) -> RotationResult:
        request = pb.RotateTenantKeyRequest(tenant_id=tenant_id, purpose=purpose)
        return wire.rotation_from_wire(tenant_id, self._call("RotateTenantKey", request, actor))

    def update_key(self, tenant_id: str, purpose: str, *, version: int = 0, state: int = 0,
                   min_decryption_version: int | None = None, actor: str = "") -> int:
        request = pb.UpdateTenantKeyRequest(tenant_id=tenant_id, purpose=purpose, version=version,
                                            state=cast(dpb.KeyState, state))
        if min_decryption_version is not None:
            request.min_decryption_version = min_decryption_version
        response: pb.UpdateTenantKeyResponse = self._call("UpdateTenantKey", request, actor)
        return response.revision

    def get_tenant(self, tenant_id: str) -> TenantInfo:
        return wire.tenant_from_wire(self._call("GetTenant", pb.GetTenantRequest(tenant_id=tenant_id)))

    def list_tenants(self, *, state: str = "", labels: Mapping[str, str] | None = None, after: str = "",
                     limit: int = 100) -> list[TenantInfo]:
        found: list[TenantInfo] = []
        token = ""
        request = pb.ListTenantsRequest(labels=dict(labels or {}))
        if state:
            request.state = wire.state_to_wire(state)
        while len(found) < limit:
            request.page_size = min(1000, limit - len(found))
            request.page_token = token
            response = self._call("ListTenants", request)
            found.extend(wire.tenant_from_wire(t) for t in response.tenants if t.tenant_id > after)
            token = response.next_page_token
            if not token:
                break
        return found[:limit]

    def audit_entries(self, *, tenant_id: str = "", after_seq: int = 0, limit: int = 100) -> list[AuditEntry]:
        """Up to ``limit`` entries, as the store answers them, read in pages of at most 1000 that the server may cut
        short to stay under a message's size (``more``)."""
        found: list[AuditEntry] = []
        while True:
            request = pb.ListAuditEntriesRequest(tenant_id=tenant_id, after_seq=found[-1].seq if found else after_seq,
                                                 page_size=min(limit - len(found), 1000))
            response = self._call("ListAuditEntries", request)
            found.extend(wire.audit_from_wire(e) for e in response.entries)
            full = len(response.entries) == request.page_size
            if not response.entries or len(found) >= limit or not (response.more or full):
                return found

    def verify_audit(self) -> AuditVerification:
        return wire.verification_from_wire(self._call("VerifyAudit", pb.VerifyAuditRequest()))

    def settings(self) -> RegistrySettings:
        return wire.settings_from_wire(self._call("GetSettings", pb.GetSettingsRequest()))

    def update_settings(self, settings: RegistrySettings, *, actor: str = "") -> RegistrySettings:
        return wire.settings_from_wire(self._call("UpdateSettings", wire.settings_to_wire(settings), actor))


def open_admin(url: str, security: ChannelSecurity | None = None, actor: str = "", *,
               create: bool = True) -> RegistryAdmin:
    """A registry to change: a store (``sqlite://``, ``postgresql://``: opened by ``open_store``, which makes one
    where there is none unless ``create`` is False), or the Admin API of a running server (``grpc://host:port``),
    which is called as ``actor`` (with a client certificate, the certificate names the caller instead)."""
    if url.startswith("grpc://"):
        return RemoteRegistry(url.removeprefix("grpc://"), security=security, actor=actor)
    return open_store(url, create=create)
