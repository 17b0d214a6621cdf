"""The tenant document's schema: each field of a manifest read into the typed model (``tenantgate.model``).

The one module that knows the document's field paths. Every problem is reported with its field path, and all
of a document's problems together; ``manifest.py`` reads files and YAML around it.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from tenantgate.model import (
    DEFAULT_RETENTION,
    AccessSpec,
    Binding,
    CalendarPeriod,
    CrossTenantGrant,
    IssuerSpec,
    KeysSpec,
    QuotaKind,
    QuotaSpec,
    Role,
    TenantSpec,
    TenantState,
)
from tenantgate.policy import GROUP
from tenantgate.registry.fields import (
    Problems,
    choice,
    kind,
    known_fields,
    sequence,
    string,
    strings,
    table,
)
from tenantgate.registry.jwks import jwks_problems
from tenantgate.sharing import interned, shared_mapping, shared_set, shared_text, shared_texts
from tenantgate.units import parse_duration, parse_rate, parse_size

API_VERSION = "tenantgate/v1"
# Anchored with \Z, not $: "$" also matches before a final newline, which would let "acme\n" pass as an id.
TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}\Z")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
SUBJECT = re.compile(r"^[a-z][a-z0-9_-]*:[^\s:][^\s]{0,254}\Z")
ACTION = re.compile(r"^(\*|[A-Za-z0-9_.-]{1,64})\Z")

# What one rule may cost a check (globs.py): a run between stars that holds a ? is searched at every
# position of the resource, so its length bounds the work per resource character.
MAX_GLOB = 256
MAX_WILD_RUN = 16
_TOP_FIELDS = {"apiVersion", "kind", "metadata", "spec"}
_METADATA_FIELDS = {"id", "name", "labels"}
_SPEC_FIELDS = {
    "state", "plan", "profile", "isolation", "environments", "features",
    "quotas", "access", "tokens", "keys", "retention",
}
_PROFILES = ("multi-tenant", "single-tenant")
_ISOLATIONS = ("soft", "hard", "network-only", "custom")


def _rules(value: Any, path: str, problems: Problems) -> tuple[str, ...]:
    rules = strings(value, path, problems)
    for i, rule in enumerate(rules):
        problem = rule_problem(rule)
        if problem:
            problems.add(f"{path}[{i}]", problem)
    return shared_texts(rules)


def rule_problem(rule: str) -> str:
    """Why an ``action:resource`` rule is malformed, or "" when it is fine."""
    if rule == "*":
        return ""
    action, sep, resource = rule.partition(":")
    if not sep or not resource:
        return f"{rule!r} is not a rule (expected \"action:resource-glob\" or \"*\")"
    if not ACTION.match(action):
        return f"{rule!r} has a bad action {action!r} (a name or *)"
    if len(resource) > MAX_GLOB:
        return f"{_cut(rule)} has a resource glob of {len(resource)} characters; at most {MAX_GLOB}"
    for run in resource.split("*"):
        if "?" in run and len(run) > MAX_WILD_RUN:
            return (f"{_cut(rule)} has {_cut(run)} between stars: with a ? in it, such a run may be at most "
                    f"{MAX_WILD_RUN} characters (its cost is its length times the resource's)")
    return ""


def _cut(text: str, limit: int = 60) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "…"


def parse_tenant(raw: Any, problems: Problems) -> TenantSpec | None:
    top = known_fields(raw, "", _TOP_FIELDS, problems)
    if top is None:
        return None
    if top.get("apiVersion") != API_VERSION:
        problems.add("apiVersion", f"expected {API_VERSION!r}, got {top.get('apiVersion')!r}")
    if top.get("kind") != "Tenant":
        problems.add("kind", f"expected 'Tenant' or 'Plan', got {top.get('kind')!r}")
    metadata = known_fields(top.get("metadata"), "metadata", _METADATA_FIELDS, problems) or {}
    if "id" not in metadata:
        problems.add("metadata.id", "required")
    tenant_id = string(metadata.get("id", ""), "metadata.id", problems, TENANT_ID,
                        "tenant id ([a-z0-9][a-z0-9-]{1,62})")
    name = string(metadata.get("name", tenant_id), "metadata.name", problems)
    labels = {shared_text(str(key)): shared_text(string(label, f"metadata.labels.{key}", problems))
              for key, label in table(metadata.get("labels"), "metadata.labels", problems).items()}

    spec = known_fields(top.get("spec") or {}, "spec", _SPEC_FIELDS, problems) or {}
    state_text = choice(spec.get("state", "Draft"), "spec.state", problems, (s.value for s in TenantState))
    environments = shared_texts(strings(spec.get("environments"), "spec.environments", problems, NAME,
                                        "environment name"))
    quotas = parse_quotas(spec.get("quotas"), problems)
    plan = string(spec.get("plan", ""), "spec.plan", problems)
    access = _parse_access(spec.get("access") or {}, frozenset(environments), problems, plan=plan)
    issuers = _parse_tokens(spec.get("tokens") or {}, problems)
    keys = _parse_keys(spec.get("keys") or {}, problems)
    retention = DEFAULT_RETENTION
    if "retention" in spec:
        try:
            retention = parse_duration(str(spec["retention"]))
        except ValueError as exc:
            problems.add("spec.retention", str(exc))
    if problems.items:
        return None
    return TenantSpec(
        id=tenant_id,
        name=name,
        labels=shared_mapping(labels.items()),
        state=TenantState(state_text),
        plan=shared_text(plan),
        profile=choice(spec.get("profile", "multi-tenant"), "spec.profile", problems, _PROFILES),
        isolation=choice(spec.get("isolation", "soft"), "spec.isolation", problems, _ISOLATIONS),
        environments=environments,
        features=shared_texts(strings(spec.get("features"), "spec.features", problems)),
        quotas=shared_mapping(quotas.items()),
        access=access,
        issuers=issuers,
        keys=keys,
        retention=retention,
    )


_QUOTA_COMMON = {"shadow", "on_backend_error"}
_QUOTA_SHAPES: dict[str, set[str]] = {
    "rate": {"rate", "burst"} | _QUOTA_COMMON,
    "limit": {"limit", "period"} | _QUOTA_COMMON,
    "concurrency": {"concurrency", "lease_ttl"} | _QUOTA_COMMON,
    "allocation": {"allocation"} | _QUOTA_COMMON,
}
BACKEND_ERROR_POLICIES = ("deny", "allow")


def parse_quotas(raw: Any, problems: Problems) -> dict[str, QuotaSpec]:
    """``spec.quotas``: of a tenant, or of a plan."""
    quotas: dict[str, QuotaSpec] = {}
    for name, body in table(raw, "spec.quotas", problems).items():
        path = f"spec.quotas.{name}"
        if not isinstance(name, str) or not NAME.match(name):
            problems.add(path, f"{name!r} is not a valid quota name")
            continue
        shape = next((s for s in _QUOTA_SHAPES if isinstance(body, dict) and s in body), None)
        if shape is None:
            problems.add(path, "expected one of rate, limit (with period), concurrency or allocation")
            continue
        fields = known_fields(body, path, _QUOTA_SHAPES[shape], problems)
        if fields is None:
            continue
        shadow = fields.get("shadow", False)
        if not isinstance(shadow, bool):
            problems.add(f"{path}.shadow", f"expected true or false, got {kind(shadow)}")
            shadow = False
        policy = fields.get("on_backend_error", "")
        if policy and policy not in BACKEND_ERROR_POLICIES:
            problems.add(f"{path}.on_backend_error", f"{policy!r} is not one of {', '.join(BACKEND_ERROR_POLICIES)}")
        try:
            quota = _quota(name, shape, fields, shadow, path)
            quota = interned(dataclasses.replace(quota, on_backend_error=policy) if policy else quota)
            quotas[quota.name] = quota  # the shared quota's name: one string for every tenant on the plan
        except ValueError as exc:
            problems.add(exc.args[0], exc.args[1])
    return quotas


def _amount(value: Any, path: str) -> tuple[int, bool]:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise ValueError(path, str(exc)) from None


def _quota(name: str, shape: str, body: dict[str, Any], shadow: bool, path: str) -> QuotaSpec:
    if shape == "rate":
        try:
            limit, per_seconds = parse_rate(str(body["rate"]))
        except ValueError as exc:
            raise ValueError(f"{path}.rate", str(exc)) from None
        burst = _amount(body.get("burst", limit), f"{path}.burst")[0]
        if limit <= 0 or burst <= 0:
            raise ValueError(f"{path}.rate", "rate and burst must be positive")
        return QuotaSpec(name, QuotaKind.RATE, limit, per_seconds=per_seconds, burst=burst, shadow=shadow)
    if shape == "limit":
        limit, _ = _amount(body["limit"], f"{path}.limit")
        if "period" not in body:
            raise ValueError(f"{path}.period", "required with limit (day, week or month)")
        periods = [p.value for p in CalendarPeriod]
        if body["period"] not in periods:
            raise ValueError(f"{path}.period", f"{body['period']!r} is not one of {', '.join(periods)}")
        return QuotaSpec(name, QuotaKind.WINDOW, limit, period=CalendarPeriod(body["period"]), shadow=shadow)
    if shape == "concurrency":
        limit, _ = _amount(body["concurrency"], f"{path}.concurrency")
        try:
            ttl = parse_duration(str(body.get("lease_ttl", "60s")))
        except ValueError as exc:
            raise ValueError(f"{path}.lease_ttl", str(exc)) from None
        if ttl <= 0:
            raise ValueError(f"{path}.lease_ttl", "must be positive")
        return QuotaSpec(name, QuotaKind.CONCURRENCY, limit, lease_ttl=float(ttl), shadow=shadow)
    limit, in_bytes = _amount(body["allocation"], f"{path}.allocation")
    kind = QuotaKind.VOLUME if in_bytes else QuotaKind.ALLOCATION
    return QuotaSpec(name, kind, limit, shadow=shadow)


_ACCESS_FIELDS = {"roles", "bindings", "groups", "deny", "grants", "suspended_allow"}


def parse_roles(raw: Any, problems: Problems) -> dict[str, Role]:
    """``spec.access.roles``: of a tenant, or of a plan (its default roles)."""
    roles: dict[str, Role] = {}
    for role_name, role_body in table(raw, "spec.access.roles", problems).items():
        path = f"spec.access.roles.{role_name}"
        if not isinstance(role_name, str) or not NAME.match(role_name):
            problems.add(path, f"{role_name!r} is not a valid role name")
            continue
        fields = known_fields(role_body if role_body is not None else {}, path, {"allow", "deny"}, problems) or {}
        role = interned(Role(role_name, _rules(fields.get("allow"), f"{path}.allow", problems),
                             _rules(fields.get("deny"), f"{path}.deny", problems)))
        roles[role.name] = role
    return roles


def _parse_access(raw: Any, environments: frozenset[str], problems: Problems, *, plan: str) -> AccessSpec:
    """A tenant naming a ``plan`` may bind the plan's roles: its bindings' roles are checked when the plan is
    known (``plans.unknown_roles``, at apply), not here."""
    body = known_fields(raw, "spec.access", _ACCESS_FIELDS, problems)
    if body is None:
        return AccessSpec()
    roles = parse_roles(body.get("roles"), problems)

    groups: dict[str, tuple[str, ...]] = {}
    for group_name, members in table(body.get("groups"), "spec.access.groups", problems).items():
        path = f"spec.access.groups.{group_name}"
        if not isinstance(group_name, str) or not NAME.match(group_name):
            problems.add(path, f"{group_name!r} is not a valid group name")
            continue
        group_name = shared_text(group_name)
        groups[group_name] = strings(members, path, problems, SUBJECT, "subject (kind:name)")
        for j, member in enumerate(groups[group_name]):
            if member.startswith(GROUP):  # never expanded: it would become a subject callers can present
                problems.add(f"{path}[{j}]", f"{member!r} is a group; a group lists subjects, not other groups")

    bindings: list[Binding] = []
    for i, binding_raw in enumerate(sequence(body.get("bindings"), "spec.access.bindings", problems)):
        path = f"spec.access.bindings[{i}]"
        binding = known_fields(binding_raw, path, {"subject", "roles", "environments"}, problems)
        if binding is None:
            continue
        subject = string(binding.get("subject"), f"{path}.subject", problems, SUBJECT, "subject (kind:name)")
        if subject.startswith(GROUP):
            if subject[len(GROUP):] not in groups:
                problems.add(f"{path}.subject", f"unknown group {subject[6:]!r}")
            subject = shared_text(subject)  # a group's name repeats across tenants; a person's does not
        binding_roles = shared_texts(strings(binding.get("roles"), f"{path}.roles", problems))
        if not binding_roles:
            problems.add(f"{path}.roles", "at least one role is required")
        for j, role_name in enumerate(binding_roles):
            if role_name and role_name not in roles and not plan:
                problems.add(f"{path}.roles[{j}]", f"unknown role {role_name!r}")
        envs: frozenset[str] | None = None
        if binding.get("environments") is not None:
            envs = shared_set(shared_texts(strings(binding["environments"], f"{path}.environments", problems)))
            for env in sorted(envs - environments):
                problems.add(f"{path}.environments", f"unknown environment {env!r} (spec.environments lists "
                             f"{', '.join(sorted(environments)) or 'none'})")
        bound = Binding(subject, binding_roles, envs)
        bindings.append(interned(bound) if subject.startswith(GROUP) else bound)

    grants: list[CrossTenantGrant] = []
    for i, grant_raw in enumerate(sequence(body.get("grants"), "spec.access.grants", problems)):
        path = f"spec.access.grants[{i}]"
        grant = known_fields(grant_raw, path, {"tenant", "subject", "allow"}, problems)
        if grant is None:
            continue
        home = string(grant.get("tenant"), f"{path}.tenant", problems, TENANT_ID, "tenant id")
        grantee = string(grant.get("subject"), f"{path}.subject", problems, SUBJECT, "subject (kind:name)")
        if grantee.startswith(GROUP):  # groups belong to one tenant and are not expanded across tenants
            problems.add(f"{path}.subject", f"{grantee!r} is a group; a grant names one subject of the other tenant")
        grants.append(CrossTenantGrant(home, grantee, _rules(grant.get("allow"), f"{path}.allow", problems)))

    return AccessSpec(
        roles=shared_mapping(roles.items()),
        bindings=tuple(bindings),
        groups=groups,
        deny=_rules(body.get("deny"), "spec.access.deny", problems),
        grants=tuple(grants),
        suspended_allow=_rules(body.get("suspended_allow"), "spec.access.suspended_allow", problems),
    )


_ISSUER_FIELDS = {"issuer", "audience", "tenant_claim", "subject_claim", "jwks"}


def _parse_tokens(raw: Any, problems: Problems) -> tuple[IssuerSpec, ...]:
    body = known_fields(raw, "spec.tokens", {"issuers"}, problems)
    if body is None:
        return ()
    issuers: list[IssuerSpec] = []
    for i, issuer_raw in enumerate(sequence(body.get("issuers"), "spec.tokens.issuers", problems)):
        path = f"spec.tokens.issuers[{i}]"
        fields = known_fields(issuer_raw, path, _ISSUER_FIELDS, problems)
        if fields is None:
            continue
        for required in ("issuer", "audience", "jwks"):
            if required not in fields:
                problems.add(f"{path}.{required}", "required")
        jwks = fields.get("jwks")
        jwks_json = (_checked_jwks(jwks, f"{path}.jwks", problems) if jwks is not None else "") or "{}"
        issuers.append(interned(IssuerSpec(
            issuer=string(fields.get("issuer", ""), f"{path}.issuer", problems),
            audience=string(fields.get("audience", ""), f"{path}.audience", problems),
            jwks_json=jwks_json,
            tenant_claim=string(fields.get("tenant_claim", "tid"), f"{path}.tenant_claim", problems),
            subject_claim=string(fields.get("subject_claim", "sub"), f"{path}.subject_claim", problems),
        )))
    return interned(tuple(issuers))


def _checked_jwks(jwks: Any, path: str, problems: Problems) -> str:
    """The JWKS as stored (canonical JSON) when every key of it is usable, else "" with each problem added
    under ``path``."""
    found, text = jwks_problems(jwks)
    for subpath, message in found:
        problems.add(f"{path}{subpath}", message)
    return text


def _parse_keys(raw: Any, problems: Problems) -> KeysSpec:
    body = known_fields(raw, "spec.keys", {"purposes", "readers", "metadata_readers", "rotate_every"}, problems)
    if body is None:
        return KeysSpec()
    rotate_every: int | None = None
    if body.get("rotate_every") is not None:
        try:
            rotate_every = parse_duration(str(body["rotate_every"]))
        except ValueError as exc:
            problems.add("spec.keys.rotate_every", str(exc))
    purposes = shared_texts(strings(body.get("purposes"), "spec.keys.purposes", problems, NAME, "key purpose"))
    if len(set(purposes)) != len(purposes):
        problems.add("spec.keys.purposes", "lists a purpose twice")
    readers: dict[str, tuple[str, ...]] = {}
    for field in ("readers", "metadata_readers"):
        readers[field] = shared_texts(strings(body.get(field), f"spec.keys.{field}", problems, SUBJECT,
                                              "caller identity (kind:name)"))
        for index, reader in enumerate(readers[field]):
            # Callers are compared with these names literally: a group name here would be a caller that
            # names itself so, never the group's members.
            if reader.startswith(GROUP):
                problems.add(f"spec.keys.{field}[{index}]", f"{reader!r} is a group; list the callers that may "
                                                            "read keys")
    return interned(KeysSpec(
        purposes=purposes,
        readers=shared_set(readers["readers"]),
        metadata_readers=shared_set(readers["metadata_readers"]),
        rotate_every=rotate_every,
    ))
