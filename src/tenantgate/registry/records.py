"""The registry's records and interfaces: plain data and Protocols, importing nothing of the layers above.

``RegistryReader`` is what a syncer follows; ``RegistryAdmin`` is what the CLI and the Admin API change
the registry through. SQL stores are both; the Admin API client (``tenantgate.adminapi``) is an admin only.
Each record has one codec per representation: SQL rows (``registry/rows.py``), the last-known-good JSON
(``registry/statefile.py``) and protobuf (``adminapi/wire.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

from tenantgate.model import key_id
from tenantgate.registry.audit import AuditEntry, AuditVerification

if TYPE_CHECKING:  # the manifest parser is a layer above these records; only its type is named here
    from tenantgate.registry.manifest import Manifest

# (tenant_id, purpose, version) -> (wrapped key, algorithm); the store never sees plaintext keys.
KeyFactory = Callable[[str, str, int], tuple[bytes, str]]
# How many tenants an apply's result and a plan's audit entry name, with the count of all of them: a plan may be
# on 100,000 tenants, and one Admin API message is at most 4 MiB. Every one is in the change feed at the revision.
NAMED_TENANTS = 100


@dataclass(frozen=True)
class TenantRecord:
    id: str
    # The manifest document as canonical JSON: kept as text, parsed when asked (a snapshot of many
    # tenants parses each one only when a request first needs it).
    document_json: str
    digest: str
    revision: int
    state: str = "Draft"
    state_since: float = 0.0  # when the tenant entered its state (retention counts from Archived)

    @cached_property
    def document(self) -> Mapping[str, Any]:
        parsed: dict[str, Any] = json.loads(self.document_json)
        return parsed


@dataclass(frozen=True)
class PlanRecord:
    """A ``kind: Plan`` document as stored; tenants name it by ``id`` in their ``spec.plan``."""

    id: str
    document_json: str  # canonical JSON
    digest: str
    revision: int  # the revision that last changed the plan

    @cached_property
    def document(self) -> Mapping[str, Any]:
        parsed: dict[str, Any] = json.loads(self.document_json)
        return parsed


@dataclass(frozen=True)
class KeyRecord:
    tenant_id: str
    purpose: str
    version: int
    wrapped: bytes = field(repr=False)
    algorithm: str
    state: int
    created_at: float
    min_decryption_version: int = 0  # of the purpose: older versions are not served

    @property
    def key_id(self) -> str:
        return key_id(self.tenant_id, self.purpose, self.version)


# Rewraps one stored key: (tenant_id, purpose, version, wrapped) -> wrapped under the new master key.
Rewrapper = Callable[[str, str, int, bytes], bytes]


@dataclass(frozen=True)
class KeyInfo:
    """Key metadata: everything but the material."""

    tenant_id: str
    purpose: str
    version: int
    algorithm: str
    state: int
    created_at: float

    @property
    def key_id(self) -> str:
        return key_id(self.tenant_id, self.purpose, self.version)


@dataclass(frozen=True)
class TenantInfo:
    record: TenantRecord
    keys: tuple[KeyInfo, ...]
    created_at: float
    updated_at: float
    # The names of the quotas it is served with: its plan's and its own (``tenantgate.plans``), in that order.
    quotas: tuple[str, ...] = ()


@dataclass(frozen=True)
class RegistryState:
    """Everything at one revision, read in one transaction."""

    revision: int
    tenants: Mapping[str, TenantRecord]
    keys: Mapping[str, tuple[KeyRecord, ...]]
    # Created at random with the registry and kept by its copies and backups: which registry this is.
    registry_id: str
    plans: Mapping[str, PlanRecord] = field(default_factory=dict)


@dataclass(frozen=True)
class ChangeSet:
    """What changed after a revision, read in one transaction: the current record of each changed
    tenant (None when it is gone), its current keys, the current record of each plan a changed tenant
    names (None when no Plan document defines it) or that changed itself, and the id of every stored plan (what
    a copy of the registry needs to drop deleted plans). A plan change lists every tenant on it as changed."""

    revision: int
    tenants: Mapping[str, TenantRecord | None]
    keys: Mapping[str, tuple[KeyRecord, ...]]
    registry_id: str
    plans: Mapping[str, PlanRecord | None] = field(default_factory=dict)
    plan_ids: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ChangeEntry:
    """One line of the change feed."""

    revision: int
    tenant_id: str
    action: str
    digest: str
    actor: str
    committed_at: float


@dataclass(frozen=True)
class TenantChange:
    tenant_id: str
    action: str  # create | update | delete
    before_state: str = ""
    after_state: str = ""
    differences: tuple[str, ...] = ()
    new_keys: tuple[str, ...] = ()

    def describe(self) -> str:
        sign = {"create": "+", "update": "~", "delete": "-"}[self.action]
        lines = [f"{sign} {self.action} tenant {self.tenant_id}"]
        lines.extend(f"    {difference}" for difference in self.differences)
        lines.extend(f"    + key {purpose} v1 (generated, wrapped under the master key)" for purpose in self.new_keys)
        return "\n".join(lines)


@dataclass(frozen=True)
class PlanChange:
    plan_id: str
    action: str  # create | update | delete
    differences: tuple[str, ...] = ()
    # The tenants on the plan that are not Deleted, in id order: each changes at the apply's revision. Only the
    # first NAMED_TENANTS of them are named; ``tenant_count`` counts them all.
    tenants: tuple[str, ...] = ()
    tenant_count: int = 0

    def describe(self) -> str:
        sign = {"create": "+", "update": "~", "delete": "-"}[self.action]
        lines = [f"{sign} {self.action} plan {self.plan_id}"]
        lines.extend(f"    {difference}" for difference in self.differences)
        count = self.tenant_count or len(self.tenants)
        if count:
            lines.append(f"    tenants on it ({count}): {named(self.tenants, count)}")
        return "\n".join(lines)


def named(tenant_ids: Sequence[str], count: int) -> str:
    """``tenant_ids`` (the first ``count`` tenants, or the first NAMED_TENANTS of them) as a list a reader can
    tell is cut."""
    shown = ", ".join(tenant_ids)
    return f"{shown} and {count - len(tenant_ids)} more" if count > len(tenant_ids) else shown


@dataclass(frozen=True)
class ApplyResult:
    revision: int
    changes: tuple[TenantChange, ...]
    dry_run: bool
    plans: tuple[PlanChange, ...] = ()
    # Tenants whose effective quotas (their own laid over their plan's) the apply changes, in id order: the
    # first NAMED_TENANTS of them; ``quota_change_count`` counts them all.
    quota_changes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    quota_change_count: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.changes or self.plans)


@dataclass(frozen=True)
class TransitionResult:
    revision: int
    tenant_id: str
    before: str
    after: str


@dataclass(frozen=True)
class RotationResult:
    revision: int
    key: KeyInfo


@dataclass(frozen=True)
class RegistrySettings:
    max_tenants: int | None = None  # tenants not Deleted; None: no limit


class RegistryReader(Protocol):
    def current_revision(self) -> int: ...

    def load(self) -> RegistryState: ...

    def changes_since(self, revision: int) -> ChangeSet: ...

    def changes(self, after_revision: int, limit: int = 1000) -> Sequence[ChangeEntry]:
        """The change feed itself, in revision order (what WatchChanges streams)."""
        ...

    def wait_for_change(self, timeout: float) -> None:
        """Block until the registry may have changed, or ``timeout`` seconds pass."""
        ...

    def close(self) -> None: ...


class RegistryAdmin(Protocol):
    """Every write commits atomically with its audit entries and bumps the revision by one; a write
    that changes nothing commits nothing."""

    def apply(self, manifests: Sequence[Manifest], *, prune: bool = False, dry_run: bool = False,
              actor: str = "cli", key_factory: KeyFactory | None = None) -> ApplyResult:
        """Make the registry hold ``manifests`` (parsed and validated: ``registry/manifest.py``): tenants and
        plans; with ``prune``, those they do not define are deleted."""
        ...

    def transition(self, tenant_id: str, state: str, *, actor: str = "cli", force: bool = False,
                   reason: str = "") -> TransitionResult: ...

    def rotate_key(self, tenant_id: str, purpose: str, *, actor: str = "cli",
                   key_factory: KeyFactory | None = None) -> RotationResult: ...

    def get_tenant(self, tenant_id: str) -> TenantInfo: ...

    def list_tenants(self, *, state: str = "", labels: Mapping[str, str] | None = None, after: str = "",
                     limit: int = 100) -> list[TenantInfo]: ...

    def audit_entries(self, *, tenant_id: str = "", after_seq: int = 0, limit: int = 100) -> list[AuditEntry]: ...

    def verify_audit(self) -> AuditVerification: ...

    def settings(self) -> RegistrySettings: ...

    def update_key(self, tenant_id: str, purpose: str, *, version: int = 0, state: int = 0,
                   min_decryption_version: int | None = None, actor: str = "cli") -> int:
        """Change a key version's state (1 enabled, 2 disabled, 3 destroyed: the wrapped bytes are erased,
        for good) and/or the purpose's min_decryption_version; returns the revision."""
        ...

    def update_settings(self, settings: RegistrySettings, *, actor: str = "cli") -> RegistrySettings: ...

    def close(self) -> None: ...


class RegistryStore(RegistryReader, RegistryAdmin, Protocol):
    """A registry backend proper: followed by syncers and changed by admins."""

    def rotate_due_keys(self, key_factory: KeyFactory, *, actor: str = "rotation") -> list[RotationResult]:
        """Rotate every key whose newest version is older than its tenant's keys.rotate_every."""
        ...

    def rewrap_keys(self, rewrap: Rewrapper, *, actor: str = "cli") -> int:
        """Rewrap every stored key (a master key rotation) in one transaction; returns how many."""
        ...
