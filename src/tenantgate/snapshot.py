"""The immutable, indexed view of the registry at one revision that every decision reads.

A snapshot is never changed: the syncer builds the next one beside it (reusing the views of unchanged
tenants) and swaps one reference in the holder. A request reads ``holder.current`` once and decides
against that snapshot only, so it never sees half a change.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import jwt

from tenantgate.model import IssuerSpec, KeyState, TenantSpec, TenantState
from tenantgate.policy import CompiledPolicy, compile_policy


@dataclass(frozen=True, slots=True)
class KeyVersion:
    tenant_id: str
    purpose: str
    version: int
    algorithm: str
    state: KeyState
    created_at: float
    material: bytes = field(repr=False)
    # Why the material is missing (it did not unwrap); empty when it is usable.
    unavailable: str = ""
    # Of the purpose: versions below it are not served.
    min_decryption_version: int = 0

    @property
    def key_id(self) -> str:
        return f"{self.tenant_id}/{self.purpose}/v{self.version}"


@dataclass(frozen=True, slots=True)
class CompiledIssuer:
    spec: IssuerSpec
    keys_by_id: Mapping[str, jwt.PyJWK]
    # The key to use for tokens without a "kid" header: only when the JWKS holds exactly one.
    sole_key: jwt.PyJWK | None


@functools.lru_cache(maxsize=4096)
def _compiled_jwks(jwks_json: str) -> tuple[Mapping[str, jwt.PyJWK], jwt.PyJWK | None]:
    """Parsed once per distinct JWKS: tenants that trust one identity provider share its keys."""
    keys = [jwt.PyJWK.from_dict(key) for key in json.loads(jwks_json).get("keys", ())]
    return {key.key_id: key for key in keys if key.key_id}, keys[0] if len(keys) == 1 else None


def compile_issuer(spec: IssuerSpec) -> CompiledIssuer:
    by_id, sole = _compiled_jwks(spec.jwks_json)
    return CompiledIssuer(spec, by_id, sole)


@dataclass(frozen=True, slots=True)
class CompiledTenant:
    """Everything a decision reads about one tenant, built from its document on first use."""

    spec: TenantSpec
    policy: CompiledPolicy
    issuers: tuple[CompiledIssuer, ...]
    keys: Mapping[str, tuple[KeyVersion, ...]]  # purpose -> versions, oldest first


def compile_tenant(spec: TenantSpec, keys: Iterable[KeyVersion] = ()) -> CompiledTenant:
    by_purpose: dict[str, list[KeyVersion]] = {}
    for key in sorted(keys, key=lambda k: (k.purpose, k.version)):
        by_purpose.setdefault(key.purpose, []).append(key)
    return CompiledTenant(
        spec=spec,
        policy=compile_policy(spec.access, spec.environments),
        issuers=tuple(compile_issuer(issuer) for issuer in spec.issuers),
        keys={purpose: tuple(versions) for purpose, versions in by_purpose.items()},
    )


class TenantView:
    """One tenant in a snapshot. Its id, revision, state and issuers are read eagerly; the rest is built
    from the stored document when a request first needs it, then kept, so a snapshot of many tenants
    loads fast and holds little for tenants nobody asks about. The result depends only on the document,
    so the view is as immutable as if it were built up front."""

    __slots__ = ("_compiled", "_load", "id", "issuer_urls", "revision", "state")

    def __init__(self, tenant_id: str, revision: int, state: TenantState, issuer_urls: tuple[str, ...],
                 load: Callable[[], CompiledTenant]) -> None:
        self.id = tenant_id
        self.revision = revision  # the revision that last changed this tenant
        self.state = state
        self.issuer_urls = issuer_urls
        self._load: Callable[[], CompiledTenant] | None = load
        self._compiled: CompiledTenant | None = None

    @property
    def compiled(self) -> CompiledTenant:
        compiled = self._compiled
        if compiled is None:
            assert self._load is not None
            compiled = self._compiled = self._load()
            self._load = None  # drop the document text it closed over
        return compiled

    # The parts below are read on every call: one property call each, not two, once compiled.
    @property
    def spec(self) -> TenantSpec:
        return (self._compiled or self.compiled).spec

    @property
    def policy(self) -> CompiledPolicy:
        return (self._compiled or self.compiled).policy

    @property
    def issuers(self) -> tuple[CompiledIssuer, ...]:
        return (self._compiled or self.compiled).issuers

    @property
    def keys(self) -> Mapping[str, tuple[KeyVersion, ...]]:
        return (self._compiled or self.compiled).keys


def build_tenant(spec: TenantSpec, revision: int, keys: Sequence[KeyVersion] = ()) -> TenantView:
    """A view of a tenant already parsed (tests, tools); compiled on first use like any other."""
    return TenantView(spec.id, revision, spec.state, tuple(i.issuer for i in spec.issuers),
                      lambda: compile_tenant(spec, keys))


@dataclass(frozen=True, slots=True)
class Snapshot:
    revision: int
    tenants: Mapping[str, TenantView]
    # issuer URL -> ids of the tenants that trust it, for routing a token to its home tenant
    issuers: Mapping[str, tuple[str, ...]]
    built_at: float
    # True while served from the last-known-good file because the registry cannot be read.
    stale: bool = False


def build_snapshot(revision: int, tenants: Iterable[TenantView], built_at: float) -> Snapshot:
    by_id = {tenant.id: tenant for tenant in tenants}
    issuers: dict[str, list[str]] = {}
    for tenant in by_id.values():
        for url in tenant.issuer_urls:
            issuers.setdefault(url, []).append(tenant.id)
    return Snapshot(revision, by_id, {url: tuple(sorted(ids)) for url, ids in issuers.items()}, built_at)


def with_changes(base: Snapshot, revision: int, changed: Mapping[str, TenantView | None],
                 built_at: float) -> Snapshot:
    """The next snapshot: ``base`` with the changed tenants replaced (None removes one)."""
    tenants = dict(base.tenants)
    issuers = {url: list(ids) for url, ids in base.issuers.items()}
    for tenant_id, view in changed.items():
        old = tenants.pop(tenant_id, None)
        if old is not None:
            for url in old.issuer_urls:
                issuers[url].remove(tenant_id)
        if view is not None:
            tenants[tenant_id] = view
            for url in view.issuer_urls:
                issuers.setdefault(url, []).append(tenant_id)
    return Snapshot(revision, tenants, {url: tuple(sorted(ids)) for url, ids in issuers.items() if ids},
                    built_at)


class SnapshotHolder:
    """The one mutable reference: readers take ``current``; the syncer calls ``swap``."""

    def __init__(self) -> None:
        self.current: Snapshot | None = None
        # Wall-clock time the registry was last read successfully (or the last-known-good file was saved).
        self.confirmed_at = 0.0
        self._swapped = asyncio.Event()

    def swap(self, snapshot: Snapshot) -> None:
        self.current = snapshot
        swapped, self._swapped = self._swapped, asyncio.Event()
        swapped.set()

    async def wait_for_revision(self, revision: int, timeout: float | None) -> Snapshot | None:
        """The current snapshot once it is at ``revision`` or later; None if that takes over ``timeout``
        seconds (``None``: wait as long as it takes)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self.current is None or self.current.revision < revision:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._swapped.wait(), remaining)
            except TimeoutError:
                return None
        return self.current
