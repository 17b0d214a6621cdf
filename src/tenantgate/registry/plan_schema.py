"""The Plan document's schema (``kind: Plan``): a template of quotas, features and default access roles that
tenants name in ``spec.plan``. Quotas and roles read exactly as a tenant's do (``schema.py``); how a tenant's
fields are laid over its plan's is ``tenantgate.plans``."""

from __future__ import annotations

import re
from typing import Any

from tenantgate.model import PlanSpec
from tenantgate.registry.fields import Problems, known_fields, string, strings
from tenantgate.registry.schema import API_VERSION, parse_quotas, parse_roles
from tenantgate.sharing import shared_mapping, shared_text, shared_texts

# What a tenant's spec.plan must be to name a plan. A spec.plan that cannot be a plan id (free text such as
# "Gold (annual)", which tenants used before Plan documents existed) is a label only.
PLAN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
_TOP_FIELDS = {"apiVersion", "kind", "metadata", "spec"}
_METADATA_FIELDS = {"id", "name"}
_SPEC_FIELDS = {"features", "quotas", "access"}


def plan_key(plan: str) -> str:
    """The plan id a tenant's ``spec.plan`` names, or "" when it cannot name one (the registry indexes tenants
    by it)."""
    return plan if PLAN_ID.match(plan) else ""


def parse_plan(raw: Any, problems: Problems) -> PlanSpec | None:
    top = known_fields(raw, "", _TOP_FIELDS, problems)
    if top is None:
        return None
    if top.get("apiVersion") != API_VERSION:
        problems.add("apiVersion", f"expected {API_VERSION!r}, got {top.get('apiVersion')!r}")
    metadata = known_fields(top.get("metadata"), "metadata", _METADATA_FIELDS, problems) or {}
    if "id" not in metadata:
        problems.add("metadata.id", "required")
    plan_id = string(metadata.get("id", ""), "metadata.id", problems, PLAN_ID,
                     "plan id ([A-Za-z0-9][A-Za-z0-9_.-]{0,62}), what tenants name in spec.plan")
    name = string(metadata.get("name", plan_id), "metadata.name", problems)
    spec = known_fields(top.get("spec") or {}, "spec", _SPEC_FIELDS, problems) or {}
    features = shared_texts(strings(spec.get("features"), "spec.features", problems))
    quotas = parse_quotas(spec.get("quotas"), problems)
    access = known_fields(spec.get("access") or {}, "spec.access", {"roles"}, problems) or {}
    roles = parse_roles(access.get("roles"), problems)
    if problems.items:
        return None
    return PlanSpec(id=shared_text(plan_id), name=name, features=features, quotas=shared_mapping(quotas.items()),
                    roles=shared_mapping(roles.items()))
