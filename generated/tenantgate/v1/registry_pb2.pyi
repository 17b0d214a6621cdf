import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from tenantgate.v1 import decision_pb2 as _decision_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ManifestFile(_message.Message):
    __slots__ = ("name", "content")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    content: str
    def __init__(self, name: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class ApplyManifestsRequest(_message.Message):
    __slots__ = ("files", "dry_run", "prune")
    FILES_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    PRUNE_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[ManifestFile]
    dry_run: bool
    prune: bool
    def __init__(self, files: _Optional[_Iterable[_Union[ManifestFile, _Mapping]]] = ..., dry_run: _Optional[bool] = ..., prune: _Optional[bool] = ...) -> None: ...

class TenantChange(_message.Message):
    __slots__ = ("tenant_id", "action", "before_state", "after_state", "differences", "new_keys")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    BEFORE_STATE_FIELD_NUMBER: _ClassVar[int]
    AFTER_STATE_FIELD_NUMBER: _ClassVar[int]
    DIFFERENCES_FIELD_NUMBER: _ClassVar[int]
    NEW_KEYS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    action: str
    before_state: str
    after_state: str
    differences: _containers.RepeatedScalarFieldContainer[str]
    new_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tenant_id: _Optional[str] = ..., action: _Optional[str] = ..., before_state: _Optional[str] = ..., after_state: _Optional[str] = ..., differences: _Optional[_Iterable[str]] = ..., new_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class PlanChange(_message.Message):
    __slots__ = ("plan_id", "action", "differences", "tenants", "tenant_count")
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    DIFFERENCES_FIELD_NUMBER: _ClassVar[int]
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    TENANT_COUNT_FIELD_NUMBER: _ClassVar[int]
    plan_id: str
    action: str
    differences: _containers.RepeatedScalarFieldContainer[str]
    tenants: _containers.RepeatedScalarFieldContainer[str]
    tenant_count: int
    def __init__(self, plan_id: _Optional[str] = ..., action: _Optional[str] = ..., differences: _Optional[_Iterable[str]] = ..., tenants: _Optional[_Iterable[str]] = ..., tenant_count: _Optional[int] = ...) -> None: ...

class ApplyManifestsResponse(_message.Message):
    __slots__ = ("revision", "changes", "dry_run", "plan_changes", "quota_changes", "warnings", "quota_change_count")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    PLAN_CHANGES_FIELD_NUMBER: _ClassVar[int]
    QUOTA_CHANGES_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    QUOTA_CHANGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    revision: int
    changes: _containers.RepeatedCompositeFieldContainer[TenantChange]
    dry_run: bool
    plan_changes: _containers.RepeatedCompositeFieldContainer[PlanChange]
    quota_changes: _containers.RepeatedScalarFieldContainer[str]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    quota_change_count: int
    def __init__(self, revision: _Optional[int] = ..., changes: _Optional[_Iterable[_Union[TenantChange, _Mapping]]] = ..., dry_run: _Optional[bool] = ..., plan_changes: _Optional[_Iterable[_Union[PlanChange, _Mapping]]] = ..., quota_changes: _Optional[_Iterable[str]] = ..., warnings: _Optional[_Iterable[str]] = ..., quota_change_count: _Optional[int] = ...) -> None: ...

class KeyMetadata(_message.Message):
    __slots__ = ("key_id", "purpose", "version", "algorithm", "state", "created_at")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    purpose: str
    version: int
    algorithm: str
    state: _decision_pb2.KeyState
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, key_id: _Optional[str] = ..., purpose: _Optional[str] = ..., version: _Optional[int] = ..., algorithm: _Optional[str] = ..., state: _Optional[_Union[_decision_pb2.KeyState, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Tenant(_message.Message):
    __slots__ = ("tenant_id", "state", "revision", "document_json", "keys", "labels", "created_at", "updated_at", "state_since", "digest", "quotas")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_JSON_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_SINCE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    QUOTAS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    state: _decision_pb2.TenantState
    revision: int
    document_json: str
    keys: _containers.RepeatedCompositeFieldContainer[KeyMetadata]
    labels: _containers.ScalarMap[str, str]
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    state_since: _timestamp_pb2.Timestamp
    digest: str
    quotas: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tenant_id: _Optional[str] = ..., state: _Optional[_Union[_decision_pb2.TenantState, str]] = ..., revision: _Optional[int] = ..., document_json: _Optional[str] = ..., keys: _Optional[_Iterable[_Union[KeyMetadata, _Mapping]]] = ..., labels: _Optional[_Mapping[str, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., digest: _Optional[str] = ..., quotas: _Optional[_Iterable[str]] = ...) -> None: ...

class GetTenantRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class ListTenantsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "state", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    state: _decision_pb2.TenantState
    labels: _containers.ScalarMap[str, str]
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., state: _Optional[_Union[_decision_pb2.TenantState, str]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListTenantsResponse(_message.Message):
    __slots__ = ("tenants", "next_page_token")
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenants: _containers.RepeatedCompositeFieldContainer[Tenant]
    next_page_token: str
    def __init__(self, tenants: _Optional[_Iterable[_Union[Tenant, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class TransitionTenantRequest(_message.Message):
    __slots__ = ("tenant_id", "state", "force", "reason")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    state: _decision_pb2.TenantState
    force: bool
    reason: str
    def __init__(self, tenant_id: _Optional[str] = ..., state: _Optional[_Union[_decision_pb2.TenantState, str]] = ..., force: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class TransitionTenantResponse(_message.Message):
    __slots__ = ("revision", "previous_state", "state")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    revision: int
    previous_state: _decision_pb2.TenantState
    state: _decision_pb2.TenantState
    def __init__(self, revision: _Optional[int] = ..., previous_state: _Optional[_Union[_decision_pb2.TenantState, str]] = ..., state: _Optional[_Union[_decision_pb2.TenantState, str]] = ...) -> None: ...

class RotateTenantKeyRequest(_message.Message):
    __slots__ = ("tenant_id", "purpose")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    purpose: str
    def __init__(self, tenant_id: _Optional[str] = ..., purpose: _Optional[str] = ...) -> None: ...

class RotateTenantKeyResponse(_message.Message):
    __slots__ = ("revision", "key")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    revision: int
    key: KeyMetadata
    def __init__(self, revision: _Optional[int] = ..., key: _Optional[_Union[KeyMetadata, _Mapping]] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("seq", "at", "actor", "action", "tenant_id", "before_digest", "after_digest", "detail", "prev_hash", "hash")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    BEFORE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    AFTER_DIGEST_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    seq: int
    at: str
    actor: str
    action: str
    tenant_id: str
    before_digest: str
    after_digest: str
    detail: str
    prev_hash: str
    hash: str
    def __init__(self, seq: _Optional[int] = ..., at: _Optional[str] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., tenant_id: _Optional[str] = ..., before_digest: _Optional[str] = ..., after_digest: _Optional[str] = ..., detail: _Optional[str] = ..., prev_hash: _Optional[str] = ..., hash: _Optional[str] = ...) -> None: ...

class ListAuditEntriesRequest(_message.Message):
    __slots__ = ("tenant_id", "after_seq", "page_size")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    after_seq: int
    page_size: int
    def __init__(self, tenant_id: _Optional[str] = ..., after_seq: _Optional[int] = ..., page_size: _Optional[int] = ...) -> None: ...

class ListAuditEntriesResponse(_message.Message):
    __slots__ = ("entries", "more")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    more: bool
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ..., more: _Optional[bool] = ...) -> None: ...

class VerifyAuditRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VerifyAuditResponse(_message.Message):
    __slots__ = ("ok", "checked", "first_broken", "problem")
    OK_FIELD_NUMBER: _ClassVar[int]
    CHECKED_FIELD_NUMBER: _ClassVar[int]
    FIRST_BROKEN_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    checked: int
    first_broken: int
    problem: str
    def __init__(self, ok: _Optional[bool] = ..., checked: _Optional[int] = ..., first_broken: _Optional[int] = ..., problem: _Optional[str] = ...) -> None: ...

class WatchChangesRequest(_message.Message):
    __slots__ = ("from_revision",)
    FROM_REVISION_FIELD_NUMBER: _ClassVar[int]
    from_revision: int
    def __init__(self, from_revision: _Optional[int] = ...) -> None: ...

class Change(_message.Message):
    __slots__ = ("revision", "tenant_id", "action", "digest", "actor", "committed_at")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    revision: int
    tenant_id: str
    action: str
    digest: str
    actor: str
    committed_at: _timestamp_pb2.Timestamp
    def __init__(self, revision: _Optional[int] = ..., tenant_id: _Optional[str] = ..., action: _Optional[str] = ..., digest: _Optional[str] = ..., actor: _Optional[str] = ..., committed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetSettingsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RegistrySettings(_message.Message):
    __slots__ = ("max_tenants",)
    MAX_TENANTS_FIELD_NUMBER: _ClassVar[int]
    max_tenants: int
    def __init__(self, max_tenants: _Optional[int] = ...) -> None: ...

class GetQuotaUsageRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class QuotaUsage(_message.Message):
    __slots__ = ("quota", "consumed", "denied")
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    CONSUMED_FIELD_NUMBER: _ClassVar[int]
    DENIED_FIELD_NUMBER: _ClassVar[int]
    quota: str
    consumed: int
    denied: int
    def __init__(self, quota: _Optional[str] = ..., consumed: _Optional[int] = ..., denied: _Optional[int] = ...) -> None: ...

class GetQuotaUsageResponse(_message.Message):
    __slots__ = ("quotas",)
    QUOTAS_FIELD_NUMBER: _ClassVar[int]
    quotas: _containers.RepeatedCompositeFieldContainer[QuotaUsage]
    def __init__(self, quotas: _Optional[_Iterable[_Union[QuotaUsage, _Mapping]]] = ...) -> None: ...

class UpdateTenantKeyRequest(_message.Message):
    __slots__ = ("tenant_id", "purpose", "version", "state", "min_decryption_version")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MIN_DECRYPTION_VERSION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    purpose: str
    version: int
    state: _decision_pb2.KeyState
    min_decryption_version: int
    def __init__(self, tenant_id: _Optional[str] = ..., purpose: _Optional[str] = ..., version: _Optional[int] = ..., state: _Optional[_Union[_decision_pb2.KeyState, str]] = ..., min_decryption_version: _Optional[int] = ...) -> None: ...

class UpdateTenantKeyResponse(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: int
    def __init__(self, revision: _Optional[int] = ...) -> None: ...
