"""RegistryService, the Admin API: registry changes and reads over gRPC.

Everything that touches the store, and the parsing and encoding around it, runs in a worker thread: an apply
of thousands of tenants takes seconds, and the event loop it would block also answers the decisions.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import AsyncIterator

import grpc
from grpc_status import rpc_status

from tenantgate.adminapi import wire
from tenantgate.engines.quota import QuotaEngine
from tenantgate.errors import InvalidArgument, PermissionDenied, TenantgateError, Unauthenticated, Unavailable
from tenantgate.registry.manifest import parse_manifest_texts
from tenantgate.registry.records import KeyFactory, RegistryStore
from tenantgate.server.handlers import Undecodable
from tenantgate.server.identity import CallerIdentity
from tenantgate.server.status import maps_errors, rich_status
from tenantgate.snapshot import SnapshotHolder
from tenantgate.v1 import registry_pb2 as pb
from tenantgate.v1 import registry_pb2_grpc

MAX_PAGE = 1000
DEFAULT_PAGE = 100
WATCH_BATCH = 500
# A page of audit entries stops before passing this many bytes (a client takes at most 4 MiB by default): an
# entry of a registry written by an older version may list thousands of tenants.
AUDIT_PAGE_BYTES = 1 << 20


def _page_size(requested: int) -> int:
    if requested > MAX_PAGE:
        raise InvalidArgument(f"page_size must be at most {MAX_PAGE}", field="page_size")
    return requested or DEFAULT_PAGE


def _position(value: int, field: str) -> int:
    """Sequence numbers and revisions as the stores keep them (signed 64-bit)."""
    if value >= 1 << 63:
        raise InvalidArgument(f"{field} is beyond any {field.split('_')[-1]} this registry can have", field=field)
    return value


def _decode_token(token: str) -> str:
    try:
        return base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode() if token else ""
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidArgument("page_token is not one this server issued", field="page_token") from None


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):  # type: ignore[misc]
    """Every method first checks that the caller is one of the configured admins; the caller is then the
    actor the audit ledger records."""

    def _admin(self, context: grpc.aio.ServicerContext) -> str:
        caller = self._identity.of(context)
        if not caller:
            raise Unauthenticated("the Admin API needs an identified caller (a client certificate, or "
                                  "x-tenantgate-caller behind a trusted proxy)")
        if caller not in self._admins:
            raise PermissionDenied(f"caller {caller!r} is not an admin of this registry")
        return caller

    def __init__(self, store: RegistryStore, holder: SnapshotHolder, key_factory: KeyFactory | None,
                 quota: QuotaEngine, identity: CallerIdentity, admins: frozenset[str]) -> None:
        self._identity = identity
        self._admins = admins
        self._store = store
        self._holder = holder
        self._key_factory = key_factory
        self._quota = quota

    @maps_errors
    async def ApplyManifests(self, request: pb.ApplyManifestsRequest,
                             context: grpc.aio.ServicerContext) -> pb.ApplyManifestsResponse:
        actor = self._admin(context)
        if not request.files:
            raise InvalidArgument("at least one manifest file is required", field="files")

        def apply() -> pb.ApplyManifestsResponse:
            documents = parse_manifest_texts((f.name or f"files[{i}]", f.content)
                                             for i, f in enumerate(request.files))
            result = self._store.apply(documents, prune=request.prune,
                                       dry_run=request.dry_run, actor=actor, key_factory=self._key_factory)
            return wire.apply_to_wire(result)

        return await asyncio.to_thread(apply)

    @maps_errors
    async def GetTenant(self, request: pb.GetTenantRequest, context: grpc.aio.ServicerContext) -> pb.Tenant:
        self._admin(context)
        return await asyncio.to_thread(lambda: wire.tenant_to_wire(self._store.get_tenant(request.tenant_id)))

    @maps_errors
    async def ListTenants(self, request: pb.ListTenantsRequest,
                          context: grpc.aio.ServicerContext) -> pb.ListTenantsResponse:
        self._admin(context)
        size = _page_size(request.page_size)
        state, labels = wire.state_from_wire(request.state), dict(request.labels)
        after = _decode_token(request.page_token)

        def page() -> pb.ListTenantsResponse:
            found = self._store.list_tenants(state=state, labels=labels, after=after, limit=size + 1)
            token = base64.urlsafe_b64encode(found[size - 1].record.id.encode()).decode() if len(found) > size else ""
            return pb.ListTenantsResponse(tenants=[wire.tenant_to_wire(t) for t in found[:size]],
                                          next_page_token=token)

        return await asyncio.to_thread(page)

    @maps_errors
    async def TransitionTenant(self, request: pb.TransitionTenantRequest,
                               context: grpc.aio.ServicerContext) -> pb.TransitionTenantResponse:
        actor = self._admin(context)
        target = wire.state_from_wire(request.state)
        if not target:
            raise InvalidArgument("state is required", field="state")
        result = await asyncio.to_thread(self._store.transition, request.tenant_id, target, actor=actor,
                                         force=request.force, reason=request.reason)
        return wire.transition_to_wire(result)

    @maps_errors
    async def RotateTenantKey(self, request: pb.RotateTenantKeyRequest,
                              context: grpc.aio.ServicerContext) -> pb.RotateTenantKeyResponse:
        actor = self._admin(context)
        result = await asyncio.to_thread(self._store.rotate_key, request.tenant_id, request.purpose,
                                         actor=actor, key_factory=self._key_factory)
        return wire.rotation_to_wire(result)

    @maps_errors
    async def UpdateTenantKey(self, request: pb.UpdateTenantKeyRequest,
                              context: grpc.aio.ServicerContext) -> pb.UpdateTenantKeyResponse:
        actor = self._admin(context)
        minimum = request.min_decryption_version if request.HasField("min_decryption_version") else None
        revision = await asyncio.to_thread(self._store.update_key, request.tenant_id, request.purpose,
                                           version=request.version, state=int(request.state),
                                           min_decryption_version=minimum, actor=actor)
        return pb.UpdateTenantKeyResponse(revision=revision)

    @maps_errors
    async def ListAuditEntries(self, request: pb.ListAuditEntriesRequest,
                               context: grpc.aio.ServicerContext) -> pb.ListAuditEntriesResponse:
        self._admin(context)
        tenant_id, after_seq = request.tenant_id, _position(request.after_seq, "after_seq")
        limit = _page_size(request.page_size)

        def page() -> pb.ListAuditEntriesResponse:
            response = pb.ListAuditEntriesResponse()
            size = 0
            for entry in self._store.audit_entries(tenant_id=tenant_id, after_seq=after_seq, limit=limit):
                message = wire.audit_to_wire(entry)
                size += message.ByteSize() + 8  # and the field's tag and length
                if response.entries and size > AUDIT_PAGE_BYTES:
                    response.more = True
                    break
                response.entries.append(message)
            return response

        return await asyncio.to_thread(page)

    @maps_errors
    async def VerifyAudit(self, request: pb.VerifyAuditRequest,
                          context: grpc.aio.ServicerContext) -> pb.VerifyAuditResponse:
        self._admin(context)
        return wire.verification_to_wire(await asyncio.to_thread(self._store.verify_audit))

    @maps_errors
    async def GetSettings(self, request: pb.GetSettingsRequest,
                          context: grpc.aio.ServicerContext) -> pb.RegistrySettings:
        self._admin(context)
        return wire.settings_to_wire(await asyncio.to_thread(self._store.settings))

    @maps_errors
    async def UpdateSettings(self, request: pb.RegistrySettings,
                             context: grpc.aio.ServicerContext) -> pb.RegistrySettings:
        actor = self._admin(context)
        updated = await asyncio.to_thread(self._store.update_settings, wire.settings_from_wire(request),
                                          actor=actor)
        return wire.settings_to_wire(updated)

    @maps_errors
    async def GetQuotaUsage(self, request: pb.GetQuotaUsageRequest,
                            context: grpc.aio.ServicerContext) -> pb.GetQuotaUsageResponse:
        self._admin(context)
        snapshot = self._holder.current
        if snapshot is None:
            raise Unavailable("no snapshot of the registry is loaded yet")
        tenant = snapshot.tenants.get(request.tenant_id)
        if tenant is not None and tenant.built is None:
            await self._holder.compile((tenant,))  # the quotas it declares
        usage = await self._quota.usage(snapshot, request.tenant_id)
        return pb.GetQuotaUsageResponse(quotas=[pb.QuotaUsage(quota=quota, consumed=consumed, denied=denied)
                                                for quota, (consumed, denied) in usage.items()])

    def _changes(self, after: int) -> list[pb.Change]:
        """The next changes after revision ``after`` (blocking)."""
        return [wire.change_to_wire(change) for change in self._store.changes(after, WATCH_BATCH)]

    async def WatchChanges(self, request: pb.WatchChangesRequest,
                           context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Change]:
        try:
            if isinstance(request, Undecodable):
                raise InvalidArgument(f"the request is not a valid {request.message}: {request.problem}")
            revision = _position(request.from_revision, "from_revision")
            self._admin(context)
            while True:
                batch = await asyncio.to_thread(self._changes, revision)
                for change in batch:
                    yield change
                    revision = change.revision
                if len(batch) < WATCH_BATCH:
                    # Woken by the next snapshot, or after a short poll when this server's syncer lags.
                    current = self._holder.current.revision if self._holder.current else 0
                    await self._holder.wait_for_revision(current + 1, 0.5)
        except TenantgateError as error:
            await context.abort_with_status(rpc_status.to_status(rich_status(error)))
