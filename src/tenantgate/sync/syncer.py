"""Follows the registry's change feed and keeps the snapshot holder current.

Waits for a change (NOTIFY where the store has it, else the poll interval), reads every changed tenant
in one transaction, builds their views beside the current snapshot, compiles those that must be (in a worker
thread, never on the event loop) and swaps one reference. When the registry cannot be read it keeps serving
what it has and says so (``stale``); started cold while the registry is down, it serves the last-known-good file.

What is compiled when. A full build compiles nothing: each tenant compiles when a call first needs it (off the
event loop, ``SnapshotHolder.compile``), so 100,000 tenants load fast and hold little. A change compiles at once
the changed tenants that are new, whose own document or state changed, that were compiled already, or whose plan
this server cannot read; so the first call after a change finds them ready, and one that does not compile is
found before the swap and served at its last revision that compiles (``_last_that_compiles``). A tenant changed
only through its plan or its keys that no call has needed yet stays uncompiled: a plan change on 100,000 tenants
compiles none of them. It compiles on first use, against its new revision; should that fail, its calls are
refused (FAILED_PRECONDITION, logged and counted in tenantgate_tenant_compile_failures_total), as they would be
after a restart: there is no compiled earlier revision to fall back on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tenantgate import metrics
from tenantgate.clock import Clock, SystemClock
from tenantgate.errors import FailedPrecondition, TenantgateError
from tenantgate.keywrap import KeyProvider
from tenantgate.membership import reach_of
from tenantgate.model import KeyState, PlanSpec, TenantState
from tenantgate.plans import effective_spec
from tenantgate.registry.manifest import (
    document_plan,
    issuer_urls,
    plan_from_document,
    stored_grants,
    tenant_from_document,
)
from tenantgate.registry.records import (
    ChangeSet,
    KeyRecord,
    PlanRecord,
    RegistryReader,
    RegistryState,
    TenantRecord,
)
from tenantgate.sharing import shared_text
from tenantgate.snapshot import (
    CompiledTenant,
    KeyVersion,
    Snapshot,
    SnapshotHolder,
    TenantView,
    build_snapshot,
    compile_all,
    compile_tenant,
    with_changes,
)
from tenantgate.sync import lastgood

log = logging.getLogger("tenantgate.sync")


class Syncer:
    def __init__(
        self,
        store: RegistryReader,
        holder: SnapshotHolder,
        master_key: KeyProvider | None,
        *,
        interval: float = 0.2,
        clock: Clock | None = None,
        snapshot_file: Path | None = None,
        snapshot_file_interval: float = 5.0,
        replace_snapshot_file: bool = False,
    ) -> None:
        """``replace_snapshot_file``: let the registry followed replace a last-known-good file that holds
        another registry, or a later revision of this one (otherwise such a file is kept, and logged)."""
        self._store = store
        self._holder = holder
        self._master_key = master_key
        self._interval = interval
        self._clock = clock or SystemClock()
        self._snapshot_file = snapshot_file
        self._snapshot_file_interval = snapshot_file_interval
        self._replace_snapshot_file = replace_snapshot_file
        self._registry_id = ""  # of the registry last read in full
        # What the registry holds, mirrored for the last-known-good file (only kept when there is one).
        self._mirror: RegistryState | None = None
        self._from_file = False
        # What the file holds (None: no file), once read; then what this syncer last wrote to it.
        self._held: lastgood.Held | None = None
        self._held_known = False
        # When the file was kept rather than replaced: its (inode, mtime, size), to notice an operator removing
        # or replacing it without reading and decoding the whole file again.
        self._kept_stat: tuple[int, int, int] | None = None
        self._next_save_at = 0.0  # the file is written at most every snapshot_file_interval
        self._logged = ""  # the last complaint about the file, so that it is logged once, not every poll

    def build_full(self) -> Snapshot:
        """Read the whole registry and build a snapshot of it (blocking)."""
        state = self._store.load()
        self._registry_id = state.registry_id
        if self._snapshot_file is not None:
            self._mirror = state
        return self._build(state, stale=False)

    def _build(self, state: RegistryState, *, stale: bool) -> Snapshot:
        plans = _parsed_plans(state.plans)
        views = [self._view(record, state.keys.get(tenant_id, ()), plans)
                 for tenant_id, record in state.tenants.items()]
        snapshot = build_snapshot(state.revision, views, self._clock.now())
        return dataclasses.replace(snapshot, stale=True) if stale else snapshot

    def build_next(self, base: Snapshot) -> Snapshot:
        """``base`` brought up to the registry's revision (blocking); ``base`` itself when nothing changed."""
        if self._store.current_revision() == base.revision:
            return base
        changes = self._store.changes_since(base.revision)
        if changes.registry_id != self._registry_id:
            log.warning("the registry is now registry %s, no longer %s (replaced under the same address); "
                        "rebuilding the snapshot", changes.registry_id, self._registry_id)
            return self.build_full()
        if changes.revision < base.revision:
            log.warning("registry revision went back from %d to %d; rebuilding the snapshot",
                        base.revision, changes.revision)
            return self.build_full()
        plans = _parsed_plans(changes.plans)
        changed = {tenant_id: None if record is None else self._view(record, changes.keys.get(tenant_id, ()), plans)
                   for tenant_id, record in changes.tenants.items()}
        # Compiled here, in the syncer's thread (see the module's doc for which, and why not all of them).
        unreadable_plans = {plan_id for plan_id, plan in plans.items() if plan is None}
        compile_all(view for tenant_id, view in changed.items() if view is not None and _compile_now(
            base.tenants.get(tenant_id), view, changes.tenants[tenant_id], unreadable_plans))
        for tenant_id, view in changed.items():
            kept = _last_that_compiles(base.tenants.get(tenant_id), view)
            if kept is not None:
                log.error("serving tenant %s at revision %d, its last revision that compiles, instead of revision "
                          "%d", tenant_id, kept.revision, view.revision if view else 0)
                changed[tenant_id] = kept
        self._mirror_changes(changes)
        return with_changes(base, changes.revision, changed, self._clock.now())

    def _mirror_changes(self, changes: ChangeSet) -> None:
        """The mirror kept for the last-known-good file, brought up to ``changes``."""
        if self._mirror is None:
            return
        tenants = dict(self._mirror.tenants)
        keys = dict(self._mirror.keys)
        for tenant_id, record in changes.tenants.items():
            if record is None:
                tenants.pop(tenant_id, None)
            else:
                tenants[tenant_id] = record
            keys.pop(tenant_id, None)
            if changes.keys.get(tenant_id):
                keys[tenant_id] = changes.keys[tenant_id]
        # Every stored plan: those that changed are among the changes, those deleted are no longer in plan_ids.
        plans = {plan_id: plan for plan_id, plan in self._mirror.plans.items() if plan_id in changes.plan_ids}
        for plan_id, plan in changes.plans.items():
            if plan is None:
                plans.pop(plan_id, None)
            else:
                plans[plan_id] = plan
        self._mirror = RegistryState(changes.revision, tenants, keys, changes.registry_id, plans)

    async def sync_once(self) -> Snapshot:
        """One read of the registry; raises when it cannot be read."""
        current = self._holder.current
        if current is None or self._from_file:
            snapshot = await asyncio.to_thread(self.build_full)
            self._from_file = False
        else:
            snapshot = await asyncio.to_thread(self.build_next, current)
            if snapshot is current and current.stale:
                snapshot = dataclasses.replace(current, stale=False)
        self._holder.confirmed_at = self._clock.now()
        if snapshot is not current:
            self._swap(snapshot)
            log.info("snapshot at revision %d (%d tenants)", snapshot.revision, len(snapshot.tenants))
        await self._save_last_good()
        return snapshot

    def _swap(self, snapshot: Snapshot) -> None:
        self._holder.swap(snapshot)
        metrics.SNAPSHOT_REVISION.set(snapshot.revision)
        metrics.SNAPSHOT_STALE.set(1 if snapshot.stale else 0)

    async def _save_last_good(self, *, force: bool = False) -> None:
        """Write the mirror to the last-known-good file after a change, at most every interval (at once the
        first time, and when ``force``d), never over a file of another registry or of a later revision unless
        told to replace it."""
        path, state = self._snapshot_file, self._mirror
        if path is None or state is None:
            return
        written = lastgood.Held(state.registry_id, state.revision)
        if self._held_known and self._held == written:
            return
        now = self._clock.now()
        if not force and now < self._next_save_at:
            return
        self._next_save_at = now + self._snapshot_file_interval
        if self._kept_stat is not None and await asyncio.to_thread(_file_stat, path) != self._kept_stat:
            self._held_known, self._kept_stat = False, None
        if not self._held_known:
            self._held = await asyncio.to_thread(lastgood.identify, path)
            self._held_known = True
            if self._held is not None and self._held.outdated:
                log.warning("the last-known-good snapshot %s was written by an older tenantgate; replacing it", path)
        refusal = lastgood.refusal(self._held, state)
        if refusal is not None and not self._replace_snapshot_file:
            self._log_once(logging.ERROR, f"keeping the last-known-good snapshot {path}: {refusal.reason}. "
                                          f"{refusal.advice}")
            self._kept_stat = await asyncio.to_thread(_file_stat, path)  # looked at again after an interval
            return
        try:
            await asyncio.to_thread(lastgood.save, path, state, now)
        except OSError as exc:
            self._log_once(logging.ERROR, f"cannot write the last-known-good snapshot {path}: {exc}")
            return
        if refusal is not None:
            log.warning("replaced the last-known-good snapshot %s, as replace_snapshot_file allows: %s", path,
                        refusal.reason)
        self._held, self._logged, self._kept_stat = written, "", None

    def _log_once(self, level: int, message: str) -> None:
        if message != self._logged:
            log.log(level, "%s", message)
            self._logged = message

    async def _fall_back(self) -> None:
        """The registry cannot be read: keep serving, and say so; cold, serve the last-known-good file."""
        current = self._holder.current
        if current is not None:
            if not current.stale:
                self._swap(dataclasses.replace(current, stale=True))
            return
        path = self._snapshot_file
        if path is None or not path.exists():
            self._log_once(logging.WARNING, "no last-known-good snapshot to serve: NOT_SERVING until the registry "
                                            "can be read")
            return
        try:
            state, saved_at = await asyncio.to_thread(lastgood.load, path)
        except TenantgateError as exc:
            self._log_once(logging.ERROR, f"{exc.message}; NOT_SERVING until the registry can be read")
            return
        snapshot = await asyncio.to_thread(self._build, state, stale=True)
        self._mirror = state
        self._held, self._held_known = lastgood.Held(state.registry_id, state.revision), True
        self._from_file = True
        self._holder.confirmed_at = saved_at
        self._swap(snapshot)
        log.warning("registry unreachable: serving the last-known-good snapshot of registry %s at revision %d "
                    "from %s", state.registry_id, state.revision, path)

    async def run(self) -> None:
        """Sync until cancelled; registry errors are logged and retried, the last snapshot stays served."""
        failing = False
        try:
            while True:
                try:
                    await self.sync_once()
                    if failing:
                        log.warning("registry readable again at revision %d", self._holder.current.revision
                                    if self._holder.current else 0)
                    failing = False
                except TenantgateError as exc:
                    metrics.REGISTRY_ERRORS.inc()
                    if not failing:
                        log.error("cannot read the registry: %s", exc.message)
                    failing = True
                    await self._fall_back()
                await asyncio.to_thread(self._store.wait_for_change, self._interval)
        finally:
            await self._save_last_good(force=True)

    def _view(self, record: TenantRecord, keys: Iterable[KeyRecord],
              plans: Mapping[str, PlanSpec | None]) -> TenantView:
        """A view that parses the tenant, lays it over its plan (``plans``: as ``_parsed_plans`` makes them),
        compiles it and unwraps its keys when it is first compiled."""
        tenant_id, revision, text, wrapped = record.id, record.revision, record.document_json, tuple(keys)

        def load() -> CompiledTenant:
            # A stored document this version cannot read or compile: that tenant's calls are refused (the
            # view keeps the reason), rather than decided on a guess; every other tenant is served.
            try:
                spec = tenant_from_document(json.loads(text))
                if spec.plan in plans and plans[spec.plan] is None:
                    raise FailedPrecondition(f"its plan {spec.plan!r} cannot be read by this server")
                spec = effective_spec(plans.get(spec.plan), spec)
            except Exception as exc:  # any stored text: not JSON, JSON but not a document, a bad document
                detail = exc.message if isinstance(exc, TenantgateError) else f"{type(exc).__name__}: {exc}"
                log.error("tenant %s at revision %d is not loadable: %s", tenant_id, revision, detail)
                metrics.TENANT_COMPILE_FAILURES.inc()
                raise _not_loadable(tenant_id, revision) from None
            try:
                return compile_tenant(spec, [self._unwrap(key, tenant_id) for key in wrapped])
            except Exception:
                log.exception("tenant %s at revision %d does not compile", tenant_id, revision)
                metrics.TENANT_COMPILE_FAILURES.inc()
                raise _not_loadable(tenant_id, revision) from None

        return _StoredView(tenant_id, revision, TenantState(record.state), issuer_urls(text), load,
                           reach_of(tenant_id, *stored_grants(text)), fingerprint=hash(text))

    def _unwrap(self, key: KeyRecord, tenant_id: str) -> KeyVersion:
        """The key with its material, unwrapped under the master key (blocking: run when the tenant compiles,
        in a worker thread); a key that does not unwrap is kept with the reason it is unavailable."""
        material, unavailable = b"", ""
        if key.state == KeyState.DESTROYED:
            unavailable = "destroyed"
        elif self._master_key is None:
            unavailable = "no master key is configured on this server"
        else:
            try:
                material = self._master_key.unwrap(key.wrapped, tenant_id=key.tenant_id, purpose=key.purpose,
                                                   version=key.version)
            except TenantgateError as exc:
                unavailable = exc.message
                log.error("%s", exc.message)
        # The view's id (equal to the key's) and the shared purpose and algorithm: no string of its own.
        return KeyVersion(tenant_id, shared_text(key.purpose), key.version, shared_text(key.algorithm),
                          KeyState(key.state),
                          key.created_at, material, unavailable, key.min_decryption_version)


class _StoredView(TenantView):
    """A view of a stored tenant that knows a hash of its stored document's text (not its digest column, which a
    hand edit may leave behind): the next change compiles it at once only when its own document changed, not when
    only its plan did (``_compile_now``)."""

    __slots__ = ("fingerprint",)

    def __init__(self, *args: Any, fingerprint: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fingerprint = fingerprint


def _compile_now(previous: TenantView | None, view: TenantView, record: TenantRecord | None,
                 unreadable_plans: set[str]) -> bool:
    """Whether a changed tenant is compiled before the snapshot is swapped, or left to its first use: compiled
    when it is new here, was compiled (or found not to compile) already, changed its state or its own document,
    or names a plan this server cannot read (its earlier revision is then kept, ``_last_that_compiles``)."""
    if previous is None or not previous.pending or previous.state is not view.state:
        return True
    if not isinstance(previous, _StoredView) or record is None or previous.fingerprint != hash(record.document_json):
        return True
    return bool(unreadable_plans) and document_plan(record.document) in unreadable_plans


def _parsed_plans(records: Mapping[str, PlanRecord | None]) -> dict[str, PlanSpec | None]:
    """Each stored plan parsed once for all its tenants: its spec, or None when this version cannot read it
    (logged; its tenants are then refused, not served without their plan). A name no plan defines is left out."""
    parsed: dict[str, PlanSpec | None] = {}
    for plan_id, record in records.items():
        if record is None:
            continue
        try:
            parsed[plan_id] = plan_from_document(json.loads(record.document_json))
        except Exception as exc:  # any stored text, as for tenants
            detail = exc.message if isinstance(exc, TenantgateError) else f"{type(exc).__name__}: {exc}"
            log.error("plan %s at revision %d is not loadable: %s", plan_id, record.revision, detail)
            parsed[plan_id] = None
    return parsed


def _last_that_compiles(previous: TenantView | None, changed: TenantView | None) -> TenantView | None:
    """The view to keep serving instead of ``changed``, a revision that does not compile: the previous one, when
    it compiles and the change left the tenant in the same state (a bad write never takes a tenant down). Never
    across a change of state: a suspension, archival or deletion takes effect even when the tenant's document
    cannot be read (its calls are then refused, or denied for its state), and keys are never served past it."""
    if changed is None or not changed.problem or previous is None or previous.state is not changed.state:
        return None
    # A tenant no call has needed since a full build is compiled now, so that whether it is kept does not
    # depend on what this server happened to be asked before.
    return previous if previous.compile() is not None else None


def _not_loadable(tenant_id: str, revision: int) -> FailedPrecondition:
    return FailedPrecondition(f"tenant {tenant_id!r} at revision {revision} cannot be loaded by this server; "
                              "see its log")


def _file_stat(path: Path) -> tuple[int, int, int]:
    """What changes when a file is removed, replaced or rewritten; zeros when there is none."""
    try:
        found = path.stat()
    except FileNotFoundError:
        return (0, 0, 0)
    return (found.st_ino, found.st_mtime_ns, found.st_size)
