"""Registry records to and from their Admin API messages (used by the servicer and the remote client)."""

from __future__ import annotations

from typing import cast

from google.protobuf.timestamp_pb2 import Timestamp

from tenantgate.model import TenantState
from tenantgate.registry.audit import AuditEntry, AuditVerification
from tenantgate.registry.manifest import document_labels
from tenantgate.registry.records import (
    ApplyResult,
    ChangeEntry,
    KeyInfo,
    PlanChange,
    RegistrySettings,
    RotationResult,
    TenantChange,
    TenantInfo,
    TenantRecord,
    TransitionResult,
)
from tenantgate.v1 import decision_pb2 as dpb
from tenantgate.v1 import registry_pb2 as pb
from tenantgate.wiretime import seconds_of, set_seconds


def timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    set_seconds(stamp, seconds)
    return stamp



def state_to_wire(state: str) -> dpb.TenantState:
    return cast(dpb.TenantState, dpb.TenantState.Value(f"TENANT_STATE_{TenantState(state).name}"))


def state_from_wire(value: int) -> str:
    if value == dpb.TENANT_STATE_UNSPECIFIED:
        return ""
    return TenantState[dpb.TenantState.Name(cast(dpb.TenantState, value)).removeprefix("TENANT_STATE_")].value


def key_to_wire(key: KeyInfo) -> pb.KeyMetadata:
    return pb.KeyMetadata(key_id=key.key_id, purpose=key.purpose,
                          version=key.version, algorithm=key.algorithm, state=cast(dpb.KeyState, key.state),
                          created_at=timestamp(key.created_at))


def key_from_wire(tenant_id: str, key: pb.KeyMetadata) -> KeyInfo:
    return KeyInfo(tenant_id, key.purpose, key.version, key.algorithm, int(key.state), seconds_of(key.created_at))


def tenant_to_wire(info: TenantInfo) -> pb.Tenant:
    record = info.record
    labels = document_labels(record.document)
    return pb.Tenant(tenant_id=record.id, state=state_to_wire(record.state), revision=record.revision,
                     document_json=record.document_json, digest=record.digest,
                     keys=[key_to_wire(k) for k in info.keys], labels=labels, created_at=timestamp(info.created_at),
                     updated_at=timestamp(info.updated_at), state_since=timestamp(record.state_since),
                     quotas=info.quotas)


def tenant_from_wire(tenant: pb.Tenant) -> TenantInfo:
    record = TenantRecord(tenant.tenant_id, tenant.document_json, tenant.digest, tenant.revision,
                          state_from_wire(tenant.state), seconds_of(tenant.state_since))
    return TenantInfo(record, tuple(key_from_wire(tenant.tenant_id, k) for k in tenant.keys),
                      seconds_of(tenant.created_at), seconds_of(tenant.updated_at), tuple(tenant.quotas))


def apply_to_wire(result: ApplyResult) -> pb.ApplyManifestsResponse:
    return pb.ApplyManifestsResponse(revision=result.revision, dry_run=result.dry_run, changes=[
        pb.TenantChange(tenant_id=c.tenant_id, action=c.action, before_state=c.before_state,
                        after_state=c.after_state, differences=c.differences, new_keys=c.new_keys)
        for c in result.changes], plan_changes=[
        pb.PlanChange(plan_id=p.plan_id, action=p.action, differences=p.differences, tenants=p.tenants,
                      tenant_count=p.tenant_count)
        for p in result.plans], quota_changes=result.quota_changes, warnings=result.warnings,
        quota_change_count=result.quota_change_count)


def apply_from_wire(response: pb.ApplyManifestsResponse) -> ApplyResult:
    return ApplyResult(response.revision, tuple(
        TenantChange(c.tenant_id, c.action, c.before_state, c.after_state, tuple(c.differences), tuple(c.new_keys))
        for c in response.changes), response.dry_run, tuple(
        PlanChange(p.plan_id, p.action, tuple(p.differences), tuple(p.tenants), p.tenant_count or len(p.tenants))
        for p in response.plan_changes),
        tuple(response.quota_changes), tuple(response.warnings),
        response.quota_change_count or len(response.quota_changes))  # a server that counts them, or all of them


def transition_to_wire(result: TransitionResult) -> pb.TransitionTenantResponse:
    return pb.TransitionTenantResponse(revision=result.revision, previous_state=state_to_wire(result.before),
                                       state=state_to_wire(result.after))


def transition_from_wire(tenant_id: str, response: pb.TransitionTenantResponse) -> TransitionResult:
    return TransitionResult(response.revision, tenant_id, state_from_wire(response.previous_state),
                            state_from_wire(response.state))


def rotation_to_wire(result: RotationResult) -> pb.RotateTenantKeyResponse:
    return pb.RotateTenantKeyResponse(revision=result.revision, key=key_to_wire(result.key))


def rotation_from_wire(tenant_id: str, response: pb.RotateTenantKeyResponse) -> RotationResult:
    return RotationResult(response.revision, key_from_wire(tenant_id, response.key))


def audit_to_wire(entry: AuditEntry) -> pb.AuditEntry:
    return pb.AuditEntry(seq=entry.seq, at=entry.at, actor=entry.actor, action=entry.action,
                         tenant_id=entry.tenant_id, before_digest=entry.before_digest,
                         after_digest=entry.after_digest, detail=entry.detail, prev_hash=entry.prev_hash,
                         hash=entry.hash)


def audit_from_wire(entry: pb.AuditEntry) -> AuditEntry:
    return AuditEntry(entry.seq, entry.at, entry.actor, entry.action, entry.tenant_id, entry.before_digest,
                      entry.after_digest, entry.detail, entry.prev_hash, entry.hash)


def verification_to_wire(result: AuditVerification) -> pb.VerifyAuditResponse:
    return pb.VerifyAuditResponse(ok=result.ok, checked=result.checked, first_broken=result.first_broken or 0,
                                  problem=result.problem)


def verification_from_wire(response: pb.VerifyAuditResponse) -> AuditVerification:
    return AuditVerification(response.checked, response.first_broken or None, response.problem)


def change_to_wire(change: ChangeEntry) -> pb.Change:
    return pb.Change(revision=change.revision, tenant_id=change.tenant_id, action=change.action,
                     digest=change.digest, actor=change.actor, committed_at=timestamp(change.committed_at))


def change_from_wire(change: pb.Change) -> ChangeEntry:
    return ChangeEntry(change.revision, change.tenant_id, change.action, change.digest, change.actor,
                       seconds_of(change.committed_at))


def settings_to_wire(settings: RegistrySettings) -> pb.RegistrySettings:
    return pb.RegistrySettings(max_tenants=settings.max_tenants) if settings.max_tenants is not None \
        else pb.RegistrySettings()


def settings_from_wire(settings: pb.RegistrySettings) -> RegistrySettings:
    return RegistrySettings(settings.max_tenants if settings.HasField("max_tenants") else None)
