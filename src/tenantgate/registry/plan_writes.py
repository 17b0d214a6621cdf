"""Plan documents in an apply: what changing, creating or deleting a plan does to the tenants on it, checked and
written inside the apply's transaction (``tenant_writes.TenantWrites.apply`` drives it; ``registry/plan.py`` is
the pure diff of stored records and manifests).

A plan change is one revision for every tenant on it: their rows take the apply's revision and each gets a
change-feed row, so a syncer swaps them all at once, and the plan gets one audit entry that counts them and names
the first ``NAMED_TENANTS`` (the change feed at that revision names every one: a plan may be on 100,000 tenants,
and an entry must fit one Admin API message). A plan that a tenant (not Deleted) still names is never deleted.
Everything is decided before anything is written, so a refused apply changes nothing, and a dry run reports
exactly what the apply would do.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from tenantgate.errors import FailedPrecondition
from tenantgate.model import PlanSpec, QuotaSpec, TenantState
from tenantgate.plans import unknown_roles
from tenantgate.registry.canonical import canonical_json
from tenantgate.registry.fields import ManifestError, Problems
from tenantgate.registry.ledger import Tx, Write, digest
from tenantgate.registry.manifest import (
    ManifestDocument,
    PlanDocument,
    document_plan,
    plan_from_document,
    stored_quotas,
    tenant_from_document,
)
from tenantgate.registry.plan import plan_document_changes
from tenantgate.registry.records import (
    NAMED_TENANTS,
    ApplyResult,
    PlanChange,
    PlanRecord,
    TenantChange,
    TenantRecord,
    named,
)
from tenantgate.registry.rows import PLAN_COLUMNS, TENANT_COLUMNS, plan_from_row, plan_row, tenant_from_row
from tenantgate.registry.schema import parse_quotas

# How many tenants a refusal names before it says how many more there are.
_NAMED_IN_ERRORS = 20
_DELETED = TenantState.DELETED.value


@dataclass
class PlanEffects:
    """What the apply does through plans: each plan change with the tenants on it, the tenants whose effective
    quotas change (for any reason), and warnings about tenants naming plans no Plan document defines."""

    changes: list[PlanChange] = field(default_factory=list)  # each with every tenant on its plan
    quota_changes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    # As read before anything is written: the plans, and the digest of each tenant on a changed plan (what its
    # change-feed row names when the apply does not write the tenant itself, and so leaves its digest as it is).
    stored: Mapping[str, PlanRecord] = field(default_factory=dict)
    digests: Mapping[str, str] = field(default_factory=dict)

    def result(self, revision: int, changes: tuple[TenantChange, ...], *, dry_run: bool) -> ApplyResult:
        """The apply's result, which names at most NAMED_TENANTS tenants per list and counts them all."""
        return ApplyResult(revision, changes, dry_run,
                           tuple(replace(change, tenants=change.tenants[:NAMED_TENANTS]) for change in self.changes),
                           self.quota_changes[:NAMED_TENANTS], self.warnings, len(self.quota_changes))


@dataclass(frozen=True)
class _Side:
    """A tenant before or after the apply: its document (as stored), state and, when stored, digest."""

    document: Mapping[str, Any]
    state: str
    digest: str = ""

    @property
    def live(self) -> bool:
        return self.state != _DELETED

    @property
    def plan(self) -> str:
        return document_plan(self.document)


class _Plans:
    """The plans before and after the apply; parsed only when a check needs the typed plan."""

    def __init__(self, stored: Mapping[str, PlanRecord], desired: Mapping[str, PlanDocument],
                 changes: list[PlanChange]) -> None:
        self.stored = stored
        self.desired = desired
        self._deleted = {change.plan_id for change in changes if change.action == "delete"}
        self._parsed: dict[str, PlanSpec] = {}

    def before(self, plan_id: str) -> Mapping[str, Any] | None:
        record = self.stored.get(plan_id)
        return record.document if record is not None else None

    def after(self, plan_id: str) -> Mapping[str, Any] | None:
        if plan_id in self.desired:
            return self.desired[plan_id].document
        return None if plan_id in self._deleted else self.before(plan_id)

    def after_spec(self, plan_id: str) -> PlanSpec | None:
        if plan_id in self.desired:
            return self.desired[plan_id].plan
        if self.after(plan_id) is None:
            return None
        if plan_id not in self._parsed:
            self._parsed[plan_id] = plan_from_document(self.stored[plan_id].document)
        return self._parsed[plan_id]

    def any_after(self) -> bool:
        return bool(self.desired) or bool(set(self.stored) - self._deleted)


def plan_effects(tx: Tx, tenant_changes: list[TenantChange], current: Mapping[str, TenantRecord],
                 desired: Mapping[str, ManifestDocument], desired_plans: Mapping[str, PlanDocument], *,
                 prune: bool) -> PlanEffects:
    """What the apply of ``desired`` tenants and ``desired_plans`` does through plans; raises, changing nothing,
    when it would delete a plan still named, or leave a binding naming a role neither its tenant nor its plan
    defines."""
    stored = {row[0]: plan_from_row(row) for row in tx.rows(f"SELECT {PLAN_COLUMNS} FROM plans ORDER BY id")}
    changes = plan_document_changes(stored, desired_plans, prune=prune)
    plans = _Plans(stored, desired_plans, changes)
    changed_plans = {change.plan_id for change in changes}
    tenants = _tenants(tx, changed_plans, tenant_changes, current, desired)
    on_plan: dict[str, list[str]] = {plan_id: [] for plan_id in changed_plans}
    for tenant_id, (_, after) in sorted(tenants.items()):
        if after.live and after.plan in on_plan:
            on_plan[after.plan].append(tenant_id)
    for change in changes:
        if change.action == "delete" and on_plan[change.plan_id]:
            raise FailedPrecondition(f"plan {change.plan_id!r} cannot be deleted: {_listed(on_plan[change.plan_id])} "
                                     "still name it in spec.plan; move them to another plan first", field="spec.plan")
    _check_roles(tenants, desired, plans, changed_plans, {c.tenant_id for c in tenant_changes})
    quotas = _QuotaReader()
    return PlanEffects(
        changes=[replace(change, tenants=tuple(on_plan[change.plan_id]), tenant_count=len(on_plan[change.plan_id]))
                 for change in changes],
        quota_changes=tuple(tenant_id for tenant_id, (before, after) in sorted(tenants.items())
                            if before is not None and before.live and after.live
                            and quotas.effective(before, plans.before) != quotas.effective(after, plans.after)),
        warnings=_warnings(desired, plans),
        stored=stored,
        digests={tenant_id: after.digest for tenant_id, (_, after) in tenants.items()},
    )


def _tenants(tx: Tx, changed_plans: set[str], tenant_changes: list[TenantChange],
             current: Mapping[str, TenantRecord], desired: Mapping[str, ManifestDocument],
             ) -> dict[str, tuple[_Side | None, _Side]]:
    """(before, after) of every tenant the apply touches: those it changes, and those on a changed plan."""
    found: dict[str, tuple[_Side | None, _Side]] = {}
    if changed_plans:
        wanted = sorted(changed_plans)
        query = f"SELECT {TENANT_COLUMNS} FROM tenants WHERE state <> ? AND plan IN"
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            for row in tx.rows(f"{query} ({', '.join('?' * len(chunk))})", [_DELETED, *chunk]):
                record = tenant_from_row(row)
                side = _Side(record.document, record.state, record.digest)
                found[record.id] = (side, side)
    for change in tenant_changes:
        stored = current.get(change.tenant_id)
        before = _Side(stored.document, stored.state, stored.digest) if stored is not None else None
        if change.action == "delete":
            assert before is not None
            found[change.tenant_id] = (before, replace(before, state=_DELETED))
        else:
            doc = desired[change.tenant_id]
            found[change.tenant_id] = (before, _Side(doc.document, doc.tenant.state.value))
    return found


def _check_roles(tenants: Mapping[str, tuple[_Side | None, _Side]], desired: Mapping[str, ManifestDocument],
                 plans: _Plans, changed_plans: set[str], changed_tenants: set[str]) -> None:
    """Every binding of every tenant the apply touches names a role its tenant or its plan defines."""
    problems: list[str] = []
    refusals: list[str] = []
    for tenant_id, (_, after) in sorted(tenants.items()):
        if not after.live or (tenant_id not in changed_tenants and after.plan not in changed_plans):
            continue
        plan = plans.after_spec(after.plan) if after.plan else None
        if tenant_id in desired:
            doc = desired[tenant_id]
            for i, j, role in unknown_roles(doc.tenant, plan):
                problems.append(f"{doc.source}: spec.access.bindings[{i}].roles[{j}]: unknown role {role!r} "
                                f"({_definers(doc.tenant.plan, plan)})")
        elif _removes_roles(plans, after.plan):
            for i, _, role in unknown_roles(tenant_from_document(after.document), plan):
                refusals.append(f"tenant {tenant_id!r} binds role {role!r} (spec.access.bindings[{i}]), which plan "
                                f"{after.plan!r} would no longer define")
    if problems:
        raise ManifestError(problems)
    if refusals:
        raise FailedPrecondition("refused: " + "; ".join(refusals[:_NAMED_IN_ERRORS])
                                 + (f"; and {len(refusals) - _NAMED_IN_ERRORS} more" if len(refusals) > _NAMED_IN_ERRORS
                                    else ""), field="spec.access.roles")


def _removes_roles(plans: _Plans, plan_id: str) -> bool:
    before, after = plans.before(plan_id), plans.after(plan_id)
    return before is not None and bool(_role_names(before) - _role_names(after or {}))


def _role_names(document: Mapping[str, Any]) -> set[str]:
    roles = (document.get("spec", {}).get("access") or {}).get("roles") or {}
    return set(roles) if isinstance(roles, dict) else set()


def _definers(named: str, plan: PlanSpec | None) -> str:
    if not named:
        return "the tenant defines no such role"
    if plan is None:
        return f"the tenant defines no such role, and no Plan document defines its plan {named!r}"
    return f"neither the tenant nor its plan {named!r} defines it"


class _QuotaReader:
    """Effective quotas compared by what they mean, not how they are written (``1000/minute`` with no burst is
    ``1000/minute`` with burst 1000, ``lease_ttl: 1m`` is ``60s``): each plan document is parsed once however many
    tenants are on it, and each distinct table of a tenant's own quotas once (most tenants have none)."""

    def __init__(self) -> None:
        self._plans: dict[int, tuple[Mapping[str, Any], Mapping[str, Any]]] = {}  # id(document) -> (it, quotas)
        self._own: dict[str, Mapping[str, Any]] = {}

    def effective(self, side: _Side, plan_document: Callable[[str], Mapping[str, Any] | None]) -> dict[str, Any]:
        """A tenant's effective quotas, by name: its plan's, with its own laid over them by name."""
        planned = plan_document(side.plan) if side.plan else None
        own = stored_quotas(side.document)
        return {**(self._planned(planned) if planned is not None else {}), **(self._owned(own) if own else {})}

    def _planned(self, document: Mapping[str, Any]) -> Mapping[str, Any]:
        held = self._plans.get(id(document))
        if held is None:  # the document is kept with its quotas, so that its id is not reused meanwhile
            held = self._plans[id(document)] = (document, _parsed_quotas(stored_quotas(document)))
        return held[1]

    def _owned(self, written: Mapping[str, Any]) -> Mapping[str, Any]:
        text = json.dumps(written, sort_keys=True)
        found = self._own.get(text)
        if found is None:
            found = self._own[text] = _parsed_quotas(written)
        return found


def _parsed_quotas(written: Mapping[str, Any]) -> Mapping[str, Any]:
    """``spec.quotas`` as QuotaSpecs; a quota this version cannot read (stored by a newer one) stays as written."""
    parsed: dict[str, QuotaSpec] = parse_quotas(dict(written), Problems("stored quotas"))
    return {name: parsed.get(name, body) for name, body in written.items()}


def _warnings(desired: Mapping[str, ManifestDocument], plans: _Plans) -> tuple[str, ...]:
    """Once a registry has Plan documents, a tenant naming a plan none defines is probably a mistake."""
    if not plans.any_after():
        return ()
    return tuple(f"tenant {tenant_id} names plan {doc.tenant.plan!r}, which no Plan document defines: it keeps "
                 "its own fields only" for tenant_id, doc in sorted(desired.items())
                 if doc.tenant.plan and doc.tenant.state is not TenantState.DELETED
                 and plans.after(document_plan(doc.document)) is None)


def write_plans(write: Write, effects: PlanEffects, plans: Mapping[str, PlanDocument], written: set[str]) -> None:
    """Store the plan changes (after the tenants' own writes, which set their plan column) and move every tenant
    on a changed plan to this revision, with one audit entry per plan; ``written``: the tenants whose own change
    this apply wrote (their change-feed rows say so already)."""
    tx = write.tx
    for change in effects.changes:
        before = effects.stored.get(change.plan_id)
        before_digest = before.digest if before is not None else ""
        after_digest = ""
        if change.action == "delete":
            tx.run("DELETE FROM plans WHERE id = ?", (change.plan_id,))
        else:
            document = plans[change.plan_id].document
            after_digest = digest(document)
            record = PlanRecord(change.plan_id, canonical_json(document), after_digest, write.next_revision)
            tx.run(f"INSERT INTO plans ({PLAN_COLUMNS}, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)"
                   " ON CONFLICT (id) DO UPDATE SET document = excluded.document, digest = excluded.digest,"
                   " revision = excluded.revision, updated_at = excluded.updated_at",
                   (*plan_row(record), write.now, write.now))
        if change.tenants:
            tx.run("UPDATE tenants SET revision = ?, updated_at = ? WHERE plan = ? AND state <> ?",
                   (write.next_revision, write.now, change.plan_id, _DELETED))
            for tenant_id in change.tenants:
                if tenant_id not in written:
                    write.changed(tenant_id, "update", effects.digests[tenant_id])
        write.audit(f"plan.{change.action}", "", before_digest, after_digest, _plan_detail(change, write.next_revision))


def _plan_detail(change: PlanChange, revision: int) -> str:
    """The plan's audit detail: bounded however many tenants are on it (the change feed names them all)."""
    count = len(change.tenants)
    detail = f"plan {change.plan_id}; tenants on it ({count}): {named(change.tenants[:NAMED_TENANTS], count)}"
    return detail + (f" (the change feed at revision {revision} names every one)" if count > NAMED_TENANTS else "")


def _listed(tenant_ids: list[str]) -> str:
    return f"tenant{'s' if len(tenant_ids) > 1 else ''} {named(tenant_ids[:_NAMED_IN_ERRORS], len(tenant_ids))}"
