"""Plans as templates: a tenant's effective spec is its plan's fields with the tenant's own laid over them.

The merge is written once, here, on typed values. The syncer applies it before it compiles a tenant, so the
snapshot and the engines only ever see effective specs; the registry's apply uses the same rules to check
what a change would make of every tenant it touches. Field by field:

* ``quotas``: merged by name; a tenant's quota replaces the plan's quota of the same name, whole.
* ``features``: the plan's, then the tenant's that the plan does not list.
* ``access.roles``: merged by name; a tenant's role replaces the plan's role of the same name, whole. A
  tenant's bindings may name the plan's roles.
* Everything else (state, labels, environments, bindings, groups, denies, grants, tokens, keys, retention)
  is the tenant's own: a plan has none of it.

A tenant whose ``spec.plan`` names no Plan document keeps its own fields: the plan is a label, as it was
before Plan documents existed. A Deleted tenant naming a plan takes nothing from it and keeps no access rules:
nothing is allowed on it, and its bindings may name roles that only its plan defined and that may be gone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TypeVar

from tenantgate.model import AccessSpec, PlanSpec, TenantSpec, TenantState
from tenantgate.sharing import shared_mapping, shared_texts

V = TypeVar("V")


def effective_spec(plan: PlanSpec | None, spec: TenantSpec) -> TenantSpec:
    """``spec`` as its tenant is served: merged with ``plan`` (the Plan its ``spec.plan`` names, or None)."""
    if spec.state is TenantState.DELETED:
        return dataclasses.replace(spec, access=AccessSpec()) if spec.plan else spec
    if plan is None:
        return spec
    return dataclasses.replace(
        spec,
        features=_features(plan.features, spec.features),
        quotas=_by_name(plan.quotas, spec.quotas),
        access=dataclasses.replace(spec.access, roles=_by_name(plan.roles, spec.access.roles)),
    )


def unknown_roles(spec: TenantSpec, plan: PlanSpec | None) -> list[tuple[int, int, str]]:
    """(binding index, role index, role) of each role a binding names that neither the tenant nor ``plan``
    defines: a tenant naming a plan is parsed without this check, made once its plan is known."""
    own = spec.access.roles
    planned: Mapping[str, object] = plan.roles if plan is not None else {}
    return [(i, j, role) for i, binding in enumerate(spec.access.bindings) for j, role in enumerate(binding.roles)
            if role not in own and role not in planned]


def _features(planned: tuple[str, ...], own: tuple[str, ...]) -> tuple[str, ...]:
    if not own:
        return planned
    listed = set(planned)
    return shared_texts((*planned, *(feature for feature in own if feature not in listed)))


def _by_name(planned: Mapping[str, V], own: Mapping[str, V]) -> Mapping[str, V]:
    """The plan's items with the tenant's laid over them by name (the tenant's new names last); shared between
    tenants with the same result, and the plan's own mapping when the tenant adds nothing."""
    if not own:
        return planned
    if not planned:
        return own
    merged = dict(planned)
    merged.update(own)
    return shared_mapping(merged.items())
