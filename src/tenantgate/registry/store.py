"""The registry store interface and the records it holds, one table of backends by URL scheme."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from tenantgate.errors import ConfigurationError

# (tenant_id, purpose, version) -> (wrapped key, algorithm); the store never sees plaintext keys.
KeyFactory = Callable[[str, str, int], tuple[bytes, str]]


@dataclass(frozen=True)
class TenantRecord:
    id: str
    document: Mapping[str, Any]
    digest: str
    revision: int


@dataclass(frozen=True)
class KeyRecord:
    tenant_id: str
    purpose: str
    version: int
    wrapped: bytes = field(repr=False)
    algorithm: str
    state: int
    created_at: float


@dataclass(frozen=True)
class RegistryState:
    """Everything at one revision, read in one transaction."""

    revision: int
    tenants: Mapping[str, TenantRecord]
    keys: Mapping[str, tuple[KeyRecord, ...]]


@dataclass(frozen=True)
class ChangeSet:
    """What changed after a revision, read in one transaction: the current record of each changed
    tenant (None when it is gone) and its current keys."""

    revision: int
    tenants: Mapping[str, TenantRecord | None]
    keys: Mapping[str, tuple[KeyRecord, ...]]


@dataclass(frozen=True)
class TenantChange:
    tenant_id: str
    action: str  # create | update | delete
    differences: tuple[str, ...] = ()
    new_keys: tuple[str, ...] = ()

    def describe(self) -> str:
        sign = {"create": "+", "update": "~", "delete": "-"}[self.action]
        lines = [f"{sign} {self.action} tenant {self.tenant_id}"]
        lines.extend(f"    {difference}" for difference in self.differences)
        lines.extend(f"    + key {purpose} v1 (generated, wrapped under the master key)" for purpose in self.new_keys)
        return "\n".join(lines)


@dataclass(frozen=True)
class ApplyResult:
    revision: int
    changes: tuple[TenantChange, ...]
    dry_run: bool

    @property
    def changed(self) -> bool:
        return bool(self.changes)


class RegistryStore(Protocol):
    """A registry backend. Every write commits atomically and bumps the revision by one; a write that
    changes nothing commits nothing."""

    def current_revision(self) -> int: ...

    def load(self) -> RegistryState: ...

    def changes_since(self, revision: int) -> ChangeSet: ...

    def apply(
        self,
        documents: Mapping[str, Mapping[str, Any]],
        *,
        prune: bool = False,
        dry_run: bool = False,
        actor: str = "cli",
        key_factory: KeyFactory | None = None,
    ) -> ApplyResult: ...

    def close(self) -> None: ...


def open_store(url: str) -> RegistryStore:
    """The one place a registry URL becomes a backend."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ConfigurationError(f"registry URL {url!r} has no scheme; expected sqlite:///path/registry.db")
    if scheme == "sqlite":
        from tenantgate.registry.sqlite import SQLiteStore

        return SQLiteStore.from_url(url)
    raise ConfigurationError(f"unsupported registry URL scheme {scheme!r} in {url!r}; supported: sqlite://")
