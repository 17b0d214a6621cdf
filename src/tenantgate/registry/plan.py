"""What an apply would change: a pure comparison of stored tenants and plans with the manifests."""

from __future__ import annotations

from collections.abc import Mapping, Set
from typing import Any

from tenantgate.model import TenantState
from tenantgate.registry.manifest import ManifestDocument, PlanDocument
from tenantgate.registry.records import PlanChange, PlanRecord, TenantChange, TenantRecord


def plan_changes(
    current: Mapping[str, TenantRecord],
    desired: Mapping[str, ManifestDocument],
    existing_keys: Mapping[str, Set[str]],
    *,
    prune: bool,
) -> list[TenantChange]:
    """Changes in tenant-id order. Keys are planned for every declared purpose that has none yet; with
    ``prune``, tenants the manifests no longer define are planned for deletion."""
    changes: list[TenantChange] = []
    for tenant_id in sorted(set(current) | set(desired)):
        before, after = current.get(tenant_id), desired.get(tenant_id)
        if after is None:
            assert before is not None
            if prune and before.state != TenantState.DELETED.value:
                changes.append(TenantChange(tenant_id, "delete", before.state, TenantState.DELETED.value))
            continue
        spec = after.tenant
        new_keys = () if spec.state is TenantState.DELETED else tuple(
            p for p in spec.keys.purposes if p not in existing_keys.get(tenant_id, ()))
        if before is None:
            changes.append(TenantChange(tenant_id, "create", "", spec.state.value, (), new_keys))
        elif before.document != after.document or new_keys:
            changes.append(TenantChange(tenant_id, "update", before.state, spec.state.value,
                                        tuple(_differences(before.document, after.document)), new_keys))
    return changes


def plan_document_changes(current: Mapping[str, PlanRecord], desired: Mapping[str, PlanDocument], *,
                          prune: bool) -> list[PlanChange]:
    """Changes of Plan documents in id order (the tenants on each are found by the store); with ``prune``,
    plans the manifests no longer define are planned for deletion."""
    changes: list[PlanChange] = []
    for plan_id in sorted(set(current) | set(desired)):
        before, after = current.get(plan_id), desired.get(plan_id)
        if after is None:
            if prune:
                changes.append(PlanChange(plan_id, "delete"))
        elif before is None:
            changes.append(PlanChange(plan_id, "create"))
        elif before.document != after.document:
            changes.append(PlanChange(plan_id, "update", tuple(_differences(before.document, after.document))))
    return changes


def _differences(before: Any, after: Any, path: str = "") -> list[str]:
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        lines: list[str] = []
        for key in sorted(set(before) | set(after), key=str):
            child = f"{path}.{key}" if path else str(key)
            if key not in before:
                lines.append(f"+ {child}: {_show(after[key])}")
            elif key not in after:
                lines.append(f"- {child}: {_show(before[key])}")
            else:
                lines.extend(_differences(before[key], after[key], child))
        return lines
    if before != after:
        return [f"~ {path}: {_show(before)} -> {_show(after)}"]
    return []


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= 120 else text[:117] + "..."
