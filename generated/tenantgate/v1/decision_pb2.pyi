import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DecisionReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_REASON_UNSPECIFIED: _ClassVar[DecisionReason]
    DECISION_REASON_ALLOWED: _ClassVar[DecisionReason]
    DECISION_REASON_NO_MATCHING_GRANT: _ClassVar[DecisionReason]
    DECISION_REASON_EXPLICIT_DENY: _ClassVar[DecisionReason]
    DECISION_REASON_TENANT_NOT_ACTIVE: _ClassVar[DecisionReason]
    DECISION_REASON_TENANT_NOT_FOUND: _ClassVar[DecisionReason]
    DECISION_REASON_TOKEN_INVALID: _ClassVar[DecisionReason]
    DECISION_REASON_TOKEN_EXPIRED: _ClassVar[DecisionReason]
    DECISION_REASON_CROSS_TENANT_DENIED: _ClassVar[DecisionReason]
    DECISION_REASON_UNKNOWN_ENVIRONMENT: _ClassVar[DecisionReason]

class TenantState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TENANT_STATE_UNSPECIFIED: _ClassVar[TenantState]
    TENANT_STATE_DRAFT: _ClassVar[TenantState]
    TENANT_STATE_ACTIVE: _ClassVar[TenantState]
    TENANT_STATE_SUSPENDED: _ClassVar[TenantState]
    TENANT_STATE_ARCHIVED: _ClassVar[TenantState]
    TENANT_STATE_DELETED: _ClassVar[TenantState]

class KeyState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEY_STATE_UNSPECIFIED: _ClassVar[KeyState]
    KEY_STATE_ENABLED: _ClassVar[KeyState]
    KEY_STATE_DISABLED: _ClassVar[KeyState]
    KEY_STATE_DESTROYED: _ClassVar[KeyState]
DECISION_REASON_UNSPECIFIED: DecisionReason
DECISION_REASON_ALLOWED: DecisionReason
DECISION_REASON_NO_MATCHING_GRANT: DecisionReason
DECISION_REASON_EXPLICIT_DENY: DecisionReason
DECISION_REASON_TENANT_NOT_ACTIVE: DecisionReason
DECISION_REASON_TENANT_NOT_FOUND: DecisionReason
DECISION_REASON_TOKEN_INVALID: DecisionReason
DECISION_REASON_TOKEN_EXPIRED: DecisionReason
DECISION_REASON_CROSS_TENANT_DENIED: DecisionReason
DECISION_REASON_UNKNOWN_ENVIRONMENT: DecisionReason
TENANT_STATE_UNSPECIFIED: TenantState
TENANT_STATE_DRAFT: TenantState
TENANT_STATE_ACTIVE: TenantState
TENANT_STATE_SUSPENDED: TenantState
TENANT_STATE_ARCHIVED: TenantState
TENANT_STATE_DELETED: TenantState
KEY_STATE_UNSPECIFIED: KeyState
KEY_STATE_ENABLED: KeyState
KEY_STATE_DISABLED: KeyState
KEY_STATE_DESTROYED: KeyState

class CheckAccessRequest(_message.Message):
    __slots__ = ("tenant_id", "subject", "subject_tenant_id", "token", "action", "resource", "environment", "context", "min_revision")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    MIN_REVISION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    subject: str
    subject_tenant_id: str
    token: str
    action: str
    resource: str
    environment: str
    context: _containers.ScalarMap[str, str]
    min_revision: int
    def __init__(self, tenant_id: _Optional[str] = ..., subject: _Optional[str] = ..., subject_tenant_id: _Optional[str] = ..., token: _Optional[str] = ..., action: _Optional[str] = ..., resource: _Optional[str] = ..., environment: _Optional[str] = ..., context: _Optional[_Mapping[str, str]] = ..., min_revision: _Optional[int] = ...) -> None: ...

class CheckAccessResponse(_message.Message):
    __slots__ = ("allowed", "reason", "rule", "revision", "decision_id")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    reason: DecisionReason
    rule: str
    revision: int
    decision_id: str
    def __init__(self, allowed: _Optional[bool] = ..., reason: _Optional[_Union[DecisionReason, str]] = ..., rule: _Optional[str] = ..., revision: _Optional[int] = ..., decision_id: _Optional[str] = ...) -> None: ...

class CheckAccessBatchItem(_message.Message):
    __slots__ = ("correlation_id", "check")
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    correlation_id: str
    check: CheckAccessRequest
    def __init__(self, correlation_id: _Optional[str] = ..., check: _Optional[_Union[CheckAccessRequest, _Mapping]] = ...) -> None: ...

class CheckAccessBatchRequest(_message.Message):
    __slots__ = ("items", "min_revision")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MIN_REVISION_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[CheckAccessBatchItem]
    min_revision: int
    def __init__(self, items: _Optional[_Iterable[_Union[CheckAccessBatchItem, _Mapping]]] = ..., min_revision: _Optional[int] = ...) -> None: ...

class CheckError(_message.Message):
    __slots__ = ("code", "message", "field")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    field: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., field: _Optional[str] = ...) -> None: ...

class CheckAccessBatchResult(_message.Message):
    __slots__ = ("correlation_id", "decision", "error")
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    correlation_id: str
    decision: CheckAccessResponse
    error: CheckError
    def __init__(self, correlation_id: _Optional[str] = ..., decision: _Optional[_Union[CheckAccessResponse, _Mapping]] = ..., error: _Optional[_Union[CheckError, _Mapping]] = ...) -> None: ...

class CheckAccessBatchResponse(_message.Message):
    __slots__ = ("results", "revision")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[CheckAccessBatchResult]
    revision: int
    def __init__(self, results: _Optional[_Iterable[_Union[CheckAccessBatchResult, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class QuotaItem(_message.Message):
    __slots__ = ("quota", "amount", "lease_id")
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    quota: str
    amount: int
    lease_id: str
    def __init__(self, quota: _Optional[str] = ..., amount: _Optional[int] = ..., lease_id: _Optional[str] = ...) -> None: ...

class ConsumeQuotaRequest(_message.Message):
    __slots__ = ("tenant_id", "items", "idempotency_key", "release", "min_revision")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    MIN_REVISION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    items: _containers.RepeatedCompositeFieldContainer[QuotaItem]
    idempotency_key: str
    release: bool
    min_revision: int
    def __init__(self, tenant_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[QuotaItem, _Mapping]]] = ..., idempotency_key: _Optional[str] = ..., release: _Optional[bool] = ..., min_revision: _Optional[int] = ...) -> None: ...

class QuotaItemResult(_message.Message):
    __slots__ = ("quota", "allowed", "limit", "remaining", "reset_after", "retry_after", "lease_id", "shadow")
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    RESET_AFTER_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    quota: str
    allowed: bool
    limit: int
    remaining: int
    reset_after: _duration_pb2.Duration
    retry_after: _duration_pb2.Duration
    lease_id: str
    shadow: bool
    def __init__(self, quota: _Optional[str] = ..., allowed: _Optional[bool] = ..., limit: _Optional[int] = ..., remaining: _Optional[int] = ..., reset_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., retry_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., lease_id: _Optional[str] = ..., shadow: _Optional[bool] = ...) -> None: ...

class ConsumeQuotaResponse(_message.Message):
    __slots__ = ("allowed", "results", "revision")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    results: _containers.RepeatedCompositeFieldContainer[QuotaItemResult]
    revision: int
    def __init__(self, allowed: _Optional[bool] = ..., results: _Optional[_Iterable[_Union[QuotaItemResult, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class GetTenantKeyRequest(_message.Message):
    __slots__ = ("tenant_id", "purpose", "version", "min_revision")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MIN_REVISION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    purpose: str
    version: int
    min_revision: int
    def __init__(self, tenant_id: _Optional[str] = ..., purpose: _Optional[str] = ..., version: _Optional[int] = ..., min_revision: _Optional[int] = ...) -> None: ...

class GetTenantKeyResponse(_message.Message):
    __slots__ = ("key_id", "version", "algorithm", "material", "state", "created_at")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    MATERIAL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    version: int
    algorithm: str
    material: bytes
    state: KeyState
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, key_id: _Optional[str] = ..., version: _Optional[int] = ..., algorithm: _Optional[str] = ..., material: _Optional[bytes] = ..., state: _Optional[_Union[KeyState, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ValidateTokenRequest(_message.Message):
    __slots__ = ("token", "tenant_id", "min_revision")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    MIN_REVISION_FIELD_NUMBER: _ClassVar[int]
    token: str
    tenant_id: str
    min_revision: int
    def __init__(self, token: _Optional[str] = ..., tenant_id: _Optional[str] = ..., min_revision: _Optional[int] = ...) -> None: ...

class ValidateTokenResponse(_message.Message):
    __slots__ = ("valid", "reason", "tenant_id", "subject", "scopes", "expires_at", "detail")
    VALID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    reason: DecisionReason
    tenant_id: str
    subject: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    expires_at: _timestamp_pb2.Timestamp
    detail: str
    def __init__(self, valid: _Optional[bool] = ..., reason: _Optional[_Union[DecisionReason, str]] = ..., tenant_id: _Optional[str] = ..., subject: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., detail: _Optional[str] = ...) -> None: ...

class ResolveTenantRequest(_message.Message):
    __slots__ = ("tenant_id", "min_revision")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    MIN_REVISION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    min_revision: int
    def __init__(self, tenant_id: _Optional[str] = ..., min_revision: _Optional[int] = ...) -> None: ...

class ResolveTenantResponse(_message.Message):
    __slots__ = ("tenant_id", "name", "state", "plan", "profile", "isolation", "environments", "features", "labels", "revision", "stale")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    ISOLATION_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENTS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    name: str
    state: TenantState
    plan: str
    profile: str
    isolation: str
    environments: _containers.RepeatedScalarFieldContainer[str]
    features: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    revision: int
    stale: bool
    def __init__(self, tenant_id: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[_Union[TenantState, str]] = ..., plan: _Optional[str] = ..., profile: _Optional[str] = ..., isolation: _Optional[str] = ..., environments: _Optional[_Iterable[str]] = ..., features: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., revision: _Optional[int] = ..., stale: _Optional[bool] = ...) -> None: ...

class KeyVersionInfo(_message.Message):
    __slots__ = ("key_id", "version", "algorithm", "state", "created_at")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    version: int
    algorithm: str
    state: KeyState
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, key_id: _Optional[str] = ..., version: _Optional[int] = ..., algorithm: _Optional[str] = ..., state: _Optional[_Union[KeyState, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetTenantKeyMetadataRequest(_message.Message):
    __slots__ = ("tenant_id", "purpose", "min_revision")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    MIN_REVISION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    purpose: str
    min_revision: int
    def __init__(self, tenant_id: _Optional[str] = ..., purpose: _Optional[str] = ..., min_revision: _Optional[int] = ...) -> None: ...

class GetTenantKeyMetadataResponse(_message.Message):
    __slots__ = ("versions", "primary_version", "min_decryption_version")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    MIN_DECRYPTION_VERSION_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[KeyVersionInfo]
    primary_version: int
    min_decryption_version: int
    def __init__(self, versions: _Optional[_Iterable[_Union[KeyVersionInfo, _Mapping]]] = ..., primary_version: _Optional[int] = ..., min_decryption_version: _Optional[int] = ...) -> None: ...

class GetDataKeyRequest(_message.Message):
    __slots__ = ("tenant_id", "purpose", "min_revision")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    MIN_REVISION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    purpose: str
    min_revision: int
    def __init__(self, tenant_id: _Optional[str] = ..., purpose: _Optional[str] = ..., min_revision: _Optional[int] = ...) -> None: ...

class GetDataKeyResponse(_message.Message):
    __slots__ = ("key_id", "version", "plaintext", "wrapped")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    version: int
    plaintext: bytes
    wrapped: bytes
    def __init__(self, key_id: _Optional[str] = ..., version: _Optional[int] = ..., plaintext: _Optional[bytes] = ..., wrapped: _Optional[bytes] = ...) -> None: ...

class DecryptDataKeyRequest(_message.Message):
    __slots__ = ("tenant_id", "purpose", "wrapped", "min_revision")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_FIELD_NUMBER: _ClassVar[int]
    MIN_REVISION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    purpose: str
    wrapped: bytes
    min_revision: int
    def __init__(self, tenant_id: _Optional[str] = ..., purpose: _Optional[str] = ..., wrapped: _Optional[bytes] = ..., min_revision: _Optional[int] = ...) -> None: ...

class DecryptDataKeyResponse(_message.Message):
    __slots__ = ("key_id", "version", "plaintext")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    version: int
    plaintext: bytes
    def __init__(self, key_id: _Optional[str] = ..., version: _Optional[int] = ..., plaintext: _Optional[bytes] = ...) -> None: ...

class HeldRole(_message.Message):
    __slots__ = ("role", "group", "environments")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENTS_FIELD_NUMBER: _ClassVar[int]
    role: str
    group: str
    environments: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, role: _Optional[str] = ..., group: _Optional[str] = ..., environments: _Optional[_Iterable[str]] = ...) -> None: ...

class SubjectTenant(_message.Message):
    __slots__ = ("tenant_id", "state", "allowed", "reason", "roles", "grants")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    state: TenantState
    allowed: bool
    reason: DecisionReason
    roles: _containers.RepeatedCompositeFieldContainer[HeldRole]
    grants: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tenant_id: _Optional[str] = ..., state: _Optional[_Union[TenantState, str]] = ..., allowed: _Optional[bool] = ..., reason: _Optional[_Union[DecisionReason, str]] = ..., roles: _Optional[_Iterable[_Union[HeldRole, _Mapping]]] = ..., grants: _Optional[_Iterable[str]] = ...) -> None: ...

class ListSubjectTenantsRequest(_message.Message):
    __slots__ = ("subject", "subject_tenant_id", "token", "environment", "include_inactive", "page_size", "page_token", "min_revision")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_INACTIVE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MIN_REVISION_FIELD_NUMBER: _ClassVar[int]
    subject: str
    subject_tenant_id: str
    token: str
    environment: str
    include_inactive: bool
    page_size: int
    page_token: str
    min_revision: int
    def __init__(self, subject: _Optional[str] = ..., subject_tenant_id: _Optional[str] = ..., token: _Optional[str] = ..., environment: _Optional[str] = ..., include_inactive: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., min_revision: _Optional[int] = ...) -> None: ...

class ListSubjectTenantsResponse(_message.Message):
    __slots__ = ("reason", "subject", "subject_tenant_id", "tenants", "next_page_token", "revision", "detail")
    REASON_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    reason: DecisionReason
    subject: str
    subject_tenant_id: str
    tenants: _containers.RepeatedCompositeFieldContainer[SubjectTenant]
    next_page_token: str
    revision: int
    detail: str
    def __init__(self, reason: _Optional[_Union[DecisionReason, str]] = ..., subject: _Optional[str] = ..., subject_tenant_id: _Optional[str] = ..., tenants: _Optional[_Iterable[_Union[SubjectTenant, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., revision: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class CheckTenantAccessRequest(_message.Message):
    __slots__ = ("tenant_id", "subject", "subject_tenant_id", "token", "environment", "min_revision")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    MIN_REVISION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    subject: str
    subject_tenant_id: str
    token: str
    environment: str
    min_revision: int
    def __init__(self, tenant_id: _Optional[str] = ..., subject: _Optional[str] = ..., subject_tenant_id: _Optional[str] = ..., token: _Optional[str] = ..., environment: _Optional[str] = ..., min_revision: _Optional[int] = ...) -> None: ...

class CheckTenantAccessResponse(_message.Message):
    __slots__ = ("allowed", "reason", "state", "roles", "grants", "subject", "subject_tenant_id", "revision")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    reason: DecisionReason
    state: TenantState
    roles: _containers.RepeatedCompositeFieldContainer[HeldRole]
    grants: _containers.RepeatedScalarFieldContainer[str]
    subject: str
    subject_tenant_id: str
    revision: int
    def __init__(self, allowed: _Optional[bool] = ..., reason: _Optional[_Union[DecisionReason, str]] = ..., state: _Optional[_Union[TenantState, str]] = ..., roles: _Optional[_Iterable[_Union[HeldRole, _Mapping]]] = ..., grants: _Optional[_Iterable[str]] = ..., subject: _Optional[str] = ..., subject_tenant_id: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...
