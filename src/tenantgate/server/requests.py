"""Turning protobuf requests into engine requests; anything malformed is INVALID_ARGUMENT naming the field."""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass

from tenantgate.bounds import MAX_ACTION as MAX_ACTION
from tenantgate.bounds import MAX_ID as MAX_ID
from tenantgate.bounds import MAX_RESOURCE as MAX_RESOURCE
from tenantgate.bounds import MAX_TOKEN_BYTES
from tenantgate.engines.access import AccessRequest, Principal
from tenantgate.engines.quota import QuotaRequestItem
from tenantgate.errors import InvalidArgument
from tenantgate.registry.manifest import TENANT_ID
from tenantgate.v1 import decision_pb2 as pb

MAX_SUBJECT = 256
MAX_CONTEXT_ENTRIES = 64
MAX_CONTEXT_VALUE = 1024
MAX_BATCH = 1000
MAX_IDEMPOTENCY_KEY = 256


def require_text(value: str, field: str, limit: int) -> str:
    if not value:
        raise InvalidArgument(f"{field} is required", field=field)
    return bounded_text(value, field, limit)


def bounded_text(value: str, field: str, limit: int) -> str:
    if len(value) > limit:
        raise InvalidArgument(f"{field} is {len(value)} characters long; the maximum is {limit}", field=field)
    return value


def tenant_id(value: str, field: str = "tenant_id", *, required: bool = True,
              known_tenants: Container[str] = ()) -> str:
    """``known_tenants``: ids already validated (the snapshot's), which skip the pattern match."""
    if (not value and not required) or value in known_tenants:
        return value
    require_text(value, field, MAX_ID)
    if not TENANT_ID.match(value):
        raise InvalidArgument(f"{field} {value!r} is not a tenant id ([a-z0-9][a-z0-9-]{{1,62}})", field=field)
    return value


def read_check(request: pb.CheckAccessRequest, known_tenants: Container[str] = ()) -> tuple[Principal, str, str]:
    """A CheckAccess as the engine reads it: who asks where, the action and the resource.
    ``known_tenants``: ids already validated (the snapshot's), which skip the pattern match."""
    tenant, subject, home, token = request.tenant_id, request.subject, request.subject_tenant_id, request.token
    action, resource, environment = request.action, request.resource, request.environment
    # The hot path: a well-formed request passes these comparisons and nothing else is built (``parse_checks``
    # makes the same ones, in two steps).
    if (action and resource and (subject or token) and not (subject and token) and len(action) <= MAX_ACTION
            and len(resource) <= MAX_RESOURCE and len(subject) <= MAX_SUBJECT and len(token) <= MAX_TOKEN_BYTES
            and len(environment) <= MAX_ID and (tenant in known_tenants or _is_tenant_id(tenant))
            and (not home or home in known_tenants or _is_tenant_id(home)) and not request.context):
        return (tenant, subject, home, token, environment), action, resource
    checked = _checked_access_request(request, "")
    return ((checked.tenant_id, checked.subject, checked.subject_tenant_id, checked.token, checked.environment),
            checked.action, checked.resource)


# One check of a batch as parsed: its correlation id; who asks where (an index into the principals parsed with
# it), or why the check cannot be decided (naming its field); the action; the resource.
ParsedCheck = tuple[str, int | InvalidArgument, str, str]


def parse_checks(items: Iterable[pb.CheckAccessBatchItem], known_tenants: Container[str] = (), *,
                 field: str = "items") -> tuple[list[ParsedCheck], list[Principal]]:
    """The checks of a batch, each validated as ``read_check`` validates a CheckAccess, without an object
    per check: the principal that checks share is validated once, and what a check names is read once.
    Returns the checks in order, and the distinct valid principals they name.
    ``field``: the name of the repeated field, for the field named in an error (``items[3].check.action``)."""
    parsed: list[ParsedCheck] = []
    append = parsed.append
    principals: list[Principal] = []
    seen: dict[Principal, int] = {}  # principal -> its index in principals; -1 when it is not valid
    for item in items:
        check = item.check
        principal = (check.tenant_id, check.subject, check.subject_tenant_id, check.token, check.environment)
        action, resource = check.action, check.resource
        who = seen.get(principal)
        if who is None:
            who = seen[principal] = _index(principals, principal) if _is_valid_principal(principal, known_tenants) \
                else -1
        if (who >= 0 and action and resource and len(action) <= MAX_ACTION and len(resource) <= MAX_RESOURCE
                and not check.context):
            append((item.correlation_id, who, action, resource))
            continue
        # What the comparisons above do not accept, checked field by field: the error names the field; a check
        # that passes (context attributes, which are validated and not decided on) is decided as any other.
        try:
            _checked_access_request(check, f"{field}[{len(parsed)}].check.")  # one entry per item so far
        except InvalidArgument as error:
            append((item.correlation_id, error, action, resource))
        else:
            if who < 0:  # not expected: the comparisons accept every principal the field checks accept
                who = seen[principal] = _index(principals, principal)
            append((item.correlation_id, who, action, resource))
    return parsed, principals


def _index(principals: list[Principal], principal: Principal) -> int:
    principals.append(principal)
    return len(principals) - 1


def _is_valid_principal(principal: Principal, known_tenants: Container[str]) -> bool:
    """``read_check``'s comparisons on who asks where."""
    tenant, subject, home, token, environment = principal
    if bool(subject) == bool(token):  # one of them, not both
        return False
    return (len(subject) <= MAX_SUBJECT and len(token) <= MAX_TOKEN_BYTES and len(environment) <= MAX_ID
            and (tenant in known_tenants or _is_tenant_id(tenant))
            and (not home or home in known_tenants or _is_tenant_id(home)))


def _is_tenant_id(value: str) -> bool:
    return 2 <= len(value) <= MAX_ID and TENANT_ID.match(value) is not None


def _checked_access_request(request: pb.CheckAccessRequest, prefix: str) -> AccessRequest:
    """Every check, one at a time, naming the field at fault."""
    if request.subject and request.token:
        raise InvalidArgument("give a subject or a token, not both", field=f"{prefix}token")
    if not request.subject and not request.token:
        raise InvalidArgument("a subject or a token is required", field=f"{prefix}subject")
    bounded_text(request.token, f"{prefix}token", MAX_TOKEN_BYTES)
    bounded_text(request.subject, f"{prefix}subject", MAX_SUBJECT)
    bounded_text(request.environment, f"{prefix}environment", MAX_ID)
    if len(request.context) > MAX_CONTEXT_ENTRIES:
        raise InvalidArgument(f"at most {MAX_CONTEXT_ENTRIES} context entries", field=f"{prefix}context")
    for key, value in request.context.items():
        bounded_text(key, f"{prefix}context", MAX_ACTION)
        bounded_text(value, f"{prefix}context[{key}]", MAX_CONTEXT_VALUE)
    return AccessRequest(
        tenant_id=tenant_id(request.tenant_id, f"{prefix}tenant_id"),
        action=require_text(request.action, f"{prefix}action", MAX_ACTION),
        resource=require_text(request.resource, f"{prefix}resource", MAX_RESOURCE),
        subject=request.subject,
        subject_tenant_id=tenant_id(request.subject_tenant_id, f"{prefix}subject_tenant_id", required=False),
        token=request.token,
        environment=request.environment,
    )


def quota_items(request: pb.ConsumeQuotaRequest) -> list[QuotaRequestItem]:
    if len(request.idempotency_key) > MAX_IDEMPOTENCY_KEY:
        bounded_text(request.idempotency_key, "idempotency_key", MAX_IDEMPOTENCY_KEY)
    items = []
    listed = request.items
    # By index: iterating a repeated field of messages costs more than reading its one item.
    for index in range(len(listed)):
        item = listed[index]
        quota, lease_id = item.quota, item.lease_id
        if not quota or len(quota) > MAX_ID or len(lease_id) > MAX_ID:
            require_text(quota, f"items[{index}].quota", MAX_ID)
            bounded_text(lease_id, f"items[{index}].lease_id", MAX_ID)
        items.append(QuotaRequestItem(quota, item.amount, lease_id))
    return items


# ListSubjectTenants: a page holds at most MAX_PAGE_SIZE tenants, DEFAULT_PAGE_SIZE when the request says 0.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

SubjectRequest = pb.ListSubjectTenantsRequest | pb.CheckTenantAccessRequest


@dataclass(slots=True)
class Identity:
    """Who a ListSubjectTenants or CheckTenantAccess asks about: a subject and its home tenant, or a token
    (verified by the servicer; ``home``, when given, the only tenant it may belong to)."""

    subject: str
    home: str
    token: str
    environment: str


def identity(request: SubjectRequest, known_tenants: Container[str] = (), *, default_home: str = "") -> Identity:
    """Checked as CheckAccess checks its subject, token, home tenant and environment; a subject needs its home
    tenant (``default_home`` when the request names none)."""
    subject, token = request.subject, request.token
    if subject and token:
        raise InvalidArgument("give a subject or a token, not both", field="token")
    if not subject and not token:
        raise InvalidArgument("a subject or a token is required", field="subject")
    bounded_text(token, "token", MAX_TOKEN_BYTES)
    bounded_text(subject, "subject", MAX_SUBJECT)
    bounded_text(request.environment, "environment", MAX_ID)
    home = tenant_id(request.subject_tenant_id or default_home, "subject_tenant_id", required=bool(subject),
                     known_tenants=known_tenants)
    return Identity(subject, home, token, request.environment)


def page_size(value: int) -> int:
    if value > MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size is {value}; the maximum is {MAX_PAGE_SIZE}", field="page_size")
    return value or DEFAULT_PAGE_SIZE
