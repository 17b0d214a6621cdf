"""Key writes of the SQL registry: rotations, version states and floors, master key rewraps."""

from __future__ import annotations

from typing import Any

from tenantgate.clock import Clock
from tenantgate.errors import FailedPrecondition, InvalidArgument, NotFound
from tenantgate.model import KeyState, TenantState, key_id
from tenantgate.registry.ledger import SqlBackend, Write
from tenantgate.registry.manifest import stored_keys
from tenantgate.registry.records import KeyFactory, Rewrapper, RotationResult
from tenantgate.registry.rows import TENANT_COLUMNS, tenant_from_row
from tenantgate.registry.tenant_writes import add_key, stored_digest, stored_tenant


class KeyWrites:
    """Mixed into ``SqlRegistry``: its backend and clock."""

    _backend: SqlBackend
    _clock: Clock

    def rotate_key(self, tenant_id: str, purpose: str, *, actor: str = "cli",
                   key_factory: KeyFactory | None = None) -> RotationResult:
        with self._backend.transaction(write=True) as tx:
            write = Write(tx, actor, self._clock.now())
            tenant = stored_tenant(tx, tenant_id)
            if tenant.state == TenantState.DELETED.value:
                raise FailedPrecondition(f"tenant {tenant_id!r} is Deleted; its keys are destroyed")
            if purpose not in stored_keys(tenant.document)[0]:
                raise NotFound(f"tenant {tenant_id!r} declares no key purpose {purpose!r}", field="purpose")
            if key_factory is None:
                raise FailedPrecondition("rotating a key needs the master key (set TENANTGATE_MASTER_KEY_FILE)")
            latest = tx.rows("SELECT MAX(version) FROM tenant_keys WHERE tenant_id = ? AND purpose = ?",
                             (tenant_id, purpose))[0][0]
            key = add_key(write, tenant_id, purpose, int(latest or 0) + 1, key_factory, "key.rotate")
            revision = write.commit(self._backend)
        return RotationResult(revision, key)

    def update_key(self, tenant_id: str, purpose: str, *, version: int = 0, state: int = 0,
                   min_decryption_version: int | None = None, actor: str = "cli") -> int:
        if not state and min_decryption_version is None:
            raise InvalidArgument("nothing to change: give a state or a min_decryption_version", field="state")
        if state and state not in (KeyState.ENABLED, KeyState.DISABLED, KeyState.DESTROYED):
            raise InvalidArgument(f"{state} is not a key state", field="state")
        with self._backend.transaction(write=True) as tx:
            write = Write(tx, actor, self._clock.now())
            versions = {int(row[0]): int(row[1]) for row in tx.rows(
                "SELECT version, state FROM tenant_keys WHERE tenant_id = ? AND purpose = ?", (tenant_id, purpose))}
            if not versions:
                raise NotFound(f"tenant {tenant_id!r} has no key for purpose {purpose!r}", field="purpose")
            if state:
                self._change_state(write, tenant_id, purpose, version, versions.get(version), KeyState(state))
            if min_decryption_version is not None:
                self._change_floor(write, tenant_id, purpose, min_decryption_version, max(versions))
            revision = write.commit(self._backend)
        if write.destroyed_keys:
            self._backend.after_destroy()
        return revision

    @staticmethod
    def _change_state(write: Write, tenant_id: str, purpose: str, version: int, current: int | None,
                      state: KeyState) -> None:
        if current is None:
            raise NotFound(f"tenant {tenant_id!r} has no version {version} of key {purpose!r}", field="version")
        name = key_id(tenant_id, purpose, version)
        if current == KeyState.DESTROYED and state != KeyState.DESTROYED:
            raise FailedPrecondition(f"key {name} is destroyed; it can never be used again", field="state")
        if current == state:
            return
        erase = ", wrapped = ?" if state == KeyState.DESTROYED else ""
        params: list[Any] = [int(state), *([b""] if erase else []), tenant_id, purpose, version]
        write.tx.run(f"UPDATE tenant_keys SET state = ?{erase} WHERE tenant_id = ? AND purpose = ? AND version = ?",
                     params)
        write.destroyed_keys = state == KeyState.DESTROYED
        write.audit(f"key.{state.name.lower()}", tenant_id,
                    detail=f"{name}: {KeyState(current).name.lower()} -> {state.name.lower()}")
        write.changed(tenant_id, "update", stored_digest(write.tx, tenant_id))

    @staticmethod
    def _change_floor(write: Write, tenant_id: str, purpose: str, floor: int, newest: int) -> None:
        if floor > newest:
            raise FailedPrecondition(f"min_decryption_version {floor} is above the newest version of "
                                     f"{tenant_id}/{purpose} ({newest})", field="min_decryption_version")
        tx = write.tx
        before = tx.rows("SELECT min_decryption_version FROM key_policies WHERE tenant_id = ? AND purpose = ?",
                         (tenant_id, purpose))
        if before and int(before[0][0]) == floor:
            return
        tx.run("DELETE FROM key_policies WHERE tenant_id = ? AND purpose = ?", (tenant_id, purpose))
        tx.run("INSERT INTO key_policies (tenant_id, purpose, min_decryption_version) VALUES (?, ?, ?)",
               (tenant_id, purpose, floor))
        write.audit("key.min_decryption_version", tenant_id,
                    detail=f"{tenant_id}/{purpose}: min_decryption_version {int(before[0][0]) if before else 0} "
                           f"-> {floor}")
        write.changed(tenant_id, "update", stored_digest(tx, tenant_id))

    def rotate_due_keys(self, key_factory: KeyFactory, *, actor: str = "rotation") -> list[RotationResult]:
        with self._backend.transaction(write=True) as tx:
            write = Write(tx, actor, self._clock.now())
            newest = {(row[0], row[1]): (int(row[2]), float(row[3])) for row in tx.rows(
                "SELECT tenant_id, purpose, MAX(version), MAX(created_at) FROM tenant_keys"
                " GROUP BY tenant_id, purpose")}
            rotated = []
            # Only documents that mention rotate_every are parsed: most registries rotate few tenants.
            for row in tx.rows(f"SELECT {TENANT_COLUMNS} FROM tenants WHERE state <> ? AND document LIKE ?",
                               (TenantState.DELETED.value, "%rotate_every%")):
                record = tenant_from_row(row)
                purposes, every = stored_keys(record.document)
                if not every:
                    continue
                for purpose in purposes:
                    latest = newest.get((record.id, purpose))
                    if latest is not None and latest[1] + every <= write.now:
                        rotated.append(add_key(write, record.id, purpose, latest[0] + 1, key_factory, "key.rotate"))
            revision = write.commit(self._backend)
        return [RotationResult(revision, key) for key in rotated]

    def rewrap_keys(self, rewrap: Rewrapper, *, actor: str = "cli") -> int:
        with self._backend.transaction(write=True) as tx:
            write = Write(tx, actor, self._clock.now())
            rows = tx.rows("SELECT tenant_id, purpose, version, wrapped FROM tenant_keys WHERE state <> ?",
                           (int(KeyState.DESTROYED),))
            for tenant_id, purpose, version, wrapped in rows:
                tx.run("UPDATE tenant_keys SET wrapped = ? WHERE tenant_id = ? AND purpose = ? AND version = ?",
                       (rewrap(tenant_id, purpose, int(version), bytes(wrapped)), tenant_id, purpose, version))
                write.changed(tenant_id, "update", stored_digest(tx, tenant_id))
            write.audit("master_key.rewrap", detail=f"{len(rows)} keys rewrapped under a new master key")
            write.commit(self._backend)
        return len(rows)
