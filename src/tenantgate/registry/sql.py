"""The registry over SQL, written once for every SQL backend: reads here, writes in ``tenant_writes`` and
``key_writes``, transactions and their bookkeeping in ``ledger``, rows in ``rows``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from tenantgate.clock import Clock, SystemClock
from tenantgate.errors import InvalidArgument, NotFound
from tenantgate.model import TenantState
from tenantgate.registry.audit import AuditEntry, AuditVerification, verify_chain
from tenantgate.registry.key_writes import KeyWrites
from tenantgate.registry.ledger import SqlBackend, Tx, Write
from tenantgate.registry.manifest import document_labels, document_plan, effective_quota_names
from tenantgate.registry.records import (
    ChangeEntry,
    ChangeSet,
    PlanRecord,
    RegistrySettings,
    RegistryState,
    TenantInfo,
    TenantRecord,
)
from tenantgate.registry.rows import (
    AUDIT_COLUMNS,
    CHANGE_COLUMNS,
    KEY_INFO_COLUMNS,
    KEY_SELECT,
    PLAN_COLUMNS,
    TENANT_COLUMNS,
    audit_from_row,
    change_from_row,
    key_info_from_row,
    keys_by_tenant,
    plan_from_row,
    tenant_from_row,
)
from tenantgate.registry.tenant_writes import TenantWrites, registry_settings, select_for, tenant_state

__all__ = ["SqlBackend", "SqlRegistry", "Tx"]


class SqlRegistry(TenantWrites, KeyWrites):
    """A registry store (reader and admin) over any SQL backend."""

    def __init__(self, backend: SqlBackend, *, clock: Clock | None = None) -> None:
        self._backend = backend
        self._clock = clock or SystemClock()

    @property
    def description(self) -> str:
        return self._backend.description

    def close(self) -> None:
        self._backend.close()

    def wait_for_change(self, timeout: float) -> None:
        self._backend.wait_for_change(timeout)

    # -- reading -------------------------------------------------------------------------------------------

    def current_revision(self) -> int:
        with self._backend.transaction(write=False) as tx:
            return self._revision(tx)

    @staticmethod
    def _revision(tx: Tx) -> int:
        return int(tx.rows("SELECT value FROM meta WHERE key = 'revision'")[0][0])

    @staticmethod
    def _registry_id(tx: Tx) -> str:
        return str(tx.rows("SELECT value FROM meta WHERE key = 'registry_id'")[0][0])

    def load(self) -> RegistryState:
        with self._backend.transaction(write=False) as tx:
            revision, registry_id = self._revision(tx), self._registry_id(tx)
            tenants = {row[0]: tenant_from_row(row) for row in tx.rows(f"SELECT {TENANT_COLUMNS} FROM tenants")}
            keys = keys_by_tenant(tx.rows(f"{KEY_SELECT} ORDER BY k.tenant_id, k.purpose, k.version"))
            plans = {row[0]: plan_from_row(row) for row in tx.rows(f"SELECT {PLAN_COLUMNS} FROM plans ORDER BY id")}
        return RegistryState(revision, tenants, keys, registry_id, plans)

    def changes_since(self, revision: int) -> ChangeSet:
        with self._backend.transaction(write=False) as tx:
            current, registry_id = self._revision(tx), self._registry_id(tx)
            changed = [row[0] for row in tx.rows(
                "SELECT DISTINCT tenant_id FROM changes WHERE revision > ? ORDER BY tenant_id", (revision,))]
            # In chunks, not a query per tenant: a plan change lists every tenant on it, maybe 100,000.
            tenants: dict[str, TenantRecord | None] = dict.fromkeys(changed)
            named: set[str] = set()
            for row in select_for(tx, f"SELECT {TENANT_COLUMNS}, plan FROM tenants", "id", changed):
                tenants[row[0]] = tenant_from_row(row)
                named.add(str(row[6]))
            keys = keys_by_tenant(select_for(tx, KEY_SELECT, "k.tenant_id", changed,
                                             order="k.tenant_id, k.purpose, k.version"))
            plans: dict[str, PlanRecord | None] = dict.fromkeys(sorted(named - {""}))
            plans.update((row[0], plan_from_row(row)) for row in select_for(
                tx, f"SELECT {PLAN_COLUMNS} FROM plans", "id", named - {""}))
            # Plans that changed themselves, tenants on them or not; and which exist, to drop deleted ones.
            plan_ids = frozenset(str(row[0]) for row in tx.rows("SELECT id FROM plans"))
            plans.update((row[0], plan_from_row(row)) for row in tx.rows(
                f"SELECT {PLAN_COLUMNS} FROM plans WHERE revision > ? ORDER BY id", (revision,)))
        return ChangeSet(current, tenants, keys, registry_id, plans, plan_ids)

    def changes(self, after_revision: int, limit: int = 1000) -> list[ChangeEntry]:
        with self._backend.transaction(write=False) as tx:
            rows = tx.rows(f"SELECT {CHANGE_COLUMNS} FROM changes WHERE revision > ? ORDER BY revision, tenant_id"
                           " LIMIT ?", (after_revision, limit))
        return [change_from_row(row) for row in rows]

    def get_tenant(self, tenant_id: str) -> TenantInfo:
        with self._backend.transaction(write=False) as tx:
            found = self._infos(tx, tx.rows(f"SELECT {TENANT_COLUMNS}, created_at, updated_at FROM tenants"
                                            " WHERE id = ?", (tenant_id,)))
        if not found:
            raise NotFound(f"unknown tenant {tenant_id!r}", field="tenant_id")
        return found[0]

    def list_tenants(self, *, state: str = "", labels: Mapping[str, str] | None = None, after: str = "",
                     limit: int = 100) -> list[TenantInfo]:
        if state:
            tenant_state(state)
        wanted = dict(labels or {})
        found: list[TenantInfo] = []
        with self._backend.transaction(write=False) as tx:
            while len(found) < limit:
                query = f"SELECT {TENANT_COLUMNS}, created_at, updated_at FROM tenants WHERE id > ?"
                params: list[Any] = [after]
                if state:
                    query += " AND state = ?"
                    params.append(state)
                rows = tx.rows(query + " ORDER BY id LIMIT 500", params)
                if not rows:
                    break
                after = rows[-1][0]
                for info in self._infos(tx, rows):
                    tenant_labels = document_labels(info.record.document)
                    if all(tenant_labels.get(k) == v for k, v in wanted.items()):
                        found.append(info)
        return found[:limit]

    def _infos(self, tx: Tx, rows: list[tuple[Any, ...]]) -> list[TenantInfo]:
        records = [tenant_from_row(row) for row in rows]
        # The plans they name, for the quotas each is served with (a Deleted tenant takes nothing from its plan).
        on_plan = {record.id: document_plan(record.document) for record in records
                   if record.state != TenantState.DELETED.value}
        plans = {row[0]: plan_from_row(row) for row in select_for(
            tx, f"SELECT {PLAN_COLUMNS} FROM plans", "id", set(on_plan.values()) - {""})}
        infos = []
        for row, record in zip(rows, records, strict=True):
            keys = tuple(key_info_from_row(r) for r in tx.rows(
                f"SELECT {KEY_INFO_COLUMNS} FROM tenant_keys WHERE tenant_id = ? ORDER BY purpose, version", (row[0],)))
            plan = plans.get(on_plan.get(record.id, ""))
            quotas = effective_quota_names(record.document, plan.document if plan is not None else None)
            infos.append(TenantInfo(record, keys, float(row[6]), float(row[7]), quotas))
        return infos

    def audit_entries(self, *, tenant_id: str = "", after_seq: int = 0, limit: int = 100) -> list[AuditEntry]:
        query = f"SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > ?"
        params: list[Any] = [after_seq]
        if tenant_id:
            query += " AND tenant_id = ?"
            params.append(tenant_id)
        with self._backend.transaction(write=False) as tx:
            rows = tx.rows(query + " ORDER BY seq LIMIT ?", [*params, limit])
        return [audit_from_row(row) for row in rows]

    def verify_audit(self) -> AuditVerification:
        with self._backend.transaction(write=False) as tx:
            return verify_chain(self._all_audit(tx))

    def _all_audit(self, tx: Tx) -> Iterator[AuditEntry]:
        after = 0
        while True:
            rows = tx.rows(f"SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > ? ORDER BY seq LIMIT 1000", (after,))
            if not rows:
                return
            for row in rows:
                yield audit_from_row(row)
            after = int(rows[-1][0])

    def settings(self) -> RegistrySettings:
        with self._backend.transaction(write=False) as tx:
            return registry_settings(tx)

    def update_settings(self, settings: RegistrySettings, *, actor: str = "cli") -> RegistrySettings:
        if settings.max_tenants is not None and settings.max_tenants < 0:
            raise InvalidArgument("max_tenants must not be negative", field="max_tenants")
        with self._backend.transaction(write=True) as tx:
            write = Write(tx, actor, self._clock.now())
            if registry_settings(tx) == settings:
                return settings
            value = "" if settings.max_tenants is None else str(settings.max_tenants)
            tx.run("DELETE FROM meta WHERE key = 'max_tenants'")
            tx.run("INSERT INTO meta (key, value) VALUES ('max_tenants', ?)", (value,))
            write.audit("settings.update", detail=f"max_tenants={value or 'unlimited'}")
            write.commit(self._backend)
        return settings
