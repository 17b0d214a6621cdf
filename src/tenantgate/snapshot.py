"""The immutable, indexed view of the registry at one revision that every decision reads.

A snapshot is never changed: the syncer builds the next one beside it (reusing the views of unchanged
tenants) and swaps one reference in the holder. A request reads ``holder.current`` once and decides
against that snapshot only, so it never sees half a change.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import jwt

from tenantgate.errors import FailedPrecondition, TenantgateError
from tenantgate.membership import (
    EMPTY_INDEX,
    NO_REACH,
    GrantIndex,
    HeldRole,
    Reach,
    build_grant_index,
    members_of,
    reach_of,
    with_grant_changes,
)
from tenantgate.model import IssuerSpec, KeyState, TenantSpec, TenantState, key_id
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
        return key_id(self.tenant_id, self.purpose, self.version)


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


@functools.lru_cache(maxsize=4096)
def _compiled_issuers(specs: tuple[IssuerSpec, ...]) -> tuple[CompiledIssuer, ...]:
    """Compiled once per distinct list of issuers: tenants that trust the same ones share them."""
    return tuple(compile_issuer(issuer) for issuer in specs)


@dataclass(frozen=True, slots=True)
class CompiledTenant:
    """Everything a decision reads about one tenant, built from its document on first use."""

    spec: TenantSpec
    policy: CompiledPolicy
    issuers: tuple[CompiledIssuer, ...]
    keys: Mapping[str, tuple[KeyVersion, ...]]  # purpose -> versions, oldest first
    # subject -> the roles it holds here, directly or through groups (ListSubjectTenants, CheckTenantAccess)
    members: Mapping[str, tuple[HeldRole, ...]]


def compile_tenant(spec: TenantSpec, keys: Iterable[KeyVersion] = ()) -> CompiledTenant:
    by_purpose: dict[str, list[KeyVersion]] = {}
    for key in sorted(keys, key=lambda k: (k.purpose, k.version)):
        by_purpose.setdefault(key.purpose, []).append(key)
    return CompiledTenant(
        spec=spec,
        policy=compile_policy(spec.access, spec.environments),
        issuers=_compiled_issuers(spec.issuers),
        keys={purpose: tuple(versions) for purpose, versions in by_purpose.items()},
        members=members_of(spec.access),
    )


class TenantView:
    """One tenant in a snapshot. Its id, revision, state and issuers are read eagerly; the rest is compiled
    from the stored document once, then kept, so a snapshot of many tenants loads fast and holds little for
    tenants nobody asks about. The result depends only on the document, so the view is as immutable as if
    it were built up front.

    Compiling parses, validates and unwraps keys: milliseconds. The server never does it on its event loop,
    and the engines never do it at all: the syncer compiles the tenants a change touched before it swaps the
    snapshot in, and the servicers hand any other tenant a call needs to ``SnapshotHolder.compile`` first.
    ``built`` is the test they make: None until compiled. A tenant whose document cannot be compiled stays
    None and says why in ``problem``.
    """

    __slots__ = ("_load", "built", "id", "issuer_urls", "problem", "reach", "revision", "state")

    def __init__(self, tenant_id: str, revision: int, state: TenantState, issuer_urls: tuple[str, ...],
                 load: Callable[[], CompiledTenant], reach: Reach = NO_REACH) -> None:
        self.id = tenant_id
        self.revision = revision  # the revision that last changed this tenant
        self.state = state
        self.issuer_urls = issuer_urls
        self.reach = reach  # what it grants other tenants' subjects, indexed by the snapshot (membership.py)
        # Compiles the tenant; raises a TenantgateError (logged by the loader) when it cannot.
        self._load: Callable[[], CompiledTenant] | None = load
        self.built: CompiledTenant | None = None
        self.problem = ""

    def compile(self) -> CompiledTenant | None:
        """The compiled tenant, compiling it now if no one has (from any thread: one compiles, the others
        wait); None when it cannot be compiled, with the reason in ``problem``."""
        built = self.built
        if built is not None or self.problem:
            return built
        with _COMPILING[hash(self.id) % len(_COMPILING)]:
            if self._load is not None:
                try:
                    self.built = self._load()
                except TenantgateError as error:
                    self.problem = error.message
                self._load = None  # drop the document text it closed over
        return self.built

    @property
    def pending(self) -> bool:
        """Not compiled yet, nor known not to compile: what compiling it off the event loop would settle."""
        return self.built is None and not self.problem

    @property
    def unavailable(self) -> str:
        """Why the compiled tenant cannot be read: it does not compile, or no one compiled it first."""
        return self.problem or f"tenant {self.id!r} at revision {self.revision} is not compiled yet; try again"

    @property
    def compiled(self) -> CompiledTenant:
        """The compiled tenant (compiled beforehand, never here); FailedPrecondition when it is not."""
        built = self.built
        if built is None:
            raise FailedPrecondition(self.unavailable)
        return built

    # The parts below are read on every call: one property call each, not two, once compiled.
    @property
    def spec(self) -> TenantSpec:
        return (self.built or self.compiled).spec

    @property
    def policy(self) -> CompiledPolicy:
        return (self.built or self.compiled).policy

    @property
    def issuers(self) -> tuple[CompiledIssuer, ...]:
        return (self.built or self.compiled).issuers

    @property
    def keys(self) -> Mapping[str, tuple[KeyVersion, ...]]:
        return (self.built or self.compiled).keys


# Held while a tenant compiles, so that it is compiled once whichever threads ask for it; striped by tenant
# id, so that a thread compiling many tenants (the syncer) seldom makes another wait for an unrelated one.
_COMPILING = tuple(threading.Lock() for _ in range(64))


def compile_all(views: Iterable[TenantView]) -> None:
    """Compile each of ``views`` that is not yet (blocking: run it in a worker thread)."""
    for view in views:
        view.compile()


def build_tenant(spec: TenantSpec, revision: int, keys: Sequence[KeyVersion] = (), *,
                 compiled: bool = True) -> TenantView:
    """A view of a tenant already parsed (tests, tools): compiled now, or left to ``compile`` when not
    ``compiled`` (what a snapshot of many tenants does, as the syncer's full build does)."""
    view = TenantView(spec.id, revision, spec.state, tuple(i.issuer for i in spec.issuers),
                      lambda: compile_tenant(spec, keys),
                      reach_of(spec.id, ((g.tenant, g.subject) for g in spec.access.grants), spec.environments))
    if compiled:
        view.compile()
    return view


@dataclass(frozen=True, slots=True)
class Snapshot:
    revision: int
    # By id: the one index (a token's home tenant is found from the token's claims, see engines/tokens.py).
    tenants: Mapping[str, TenantView]
    built_at: float
    # True while served from the last-known-good file because the registry cannot be read.
    stale: bool = False
    # (home tenant, subject) -> the tenants whose grants name it (membership.py)
    grants: GrantIndex = EMPTY_INDEX


def _reach(view: TenantView | None) -> Reach:
    """What a tenant's grants give in this snapshot: nothing once it is Deleted."""
    return NO_REACH if view is None or view.state is TenantState.DELETED else view.reach


def build_snapshot(revision: int, tenants: Iterable[TenantView], built_at: float) -> Snapshot:
    by_id = {tenant.id: tenant for tenant in tenants}
    # Most tenants grant nothing: only those that do are looked at twice.
    return Snapshot(revision, by_id, built_at, grants=build_grant_index(
        (tenant_id, _reach(view)) for tenant_id, view in by_id.items() if view.reach.grants))


def with_changes(base: Snapshot, revision: int, changed: Mapping[str, TenantView | None],
                 built_at: float) -> Snapshot:
    """The next snapshot: ``base`` with the changed tenants replaced (None removes one)."""
    tenants = dict(base.tenants)
    for tenant_id, view in changed.items():
        if view is None:
            tenants.pop(tenant_id, None)
        else:
            tenants[tenant_id] = view
    grants = with_grant_changes(base.grants, ((tenant_id, _reach(base.tenants.get(tenant_id)), _reach(view))
                                              for tenant_id, view in changed.items()))
    return Snapshot(revision, tenants, built_at, grants=grants)


class SnapshotHolder:
    """The one mutable reference: readers take ``current``; the syncer calls ``swap``; servicers await
    ``compile`` for tenants of it that a call needs and that are not compiled yet."""

    def __init__(self) -> None:
        self.current: Snapshot | None = None
        # Wall-clock time the registry was last read successfully (or the last-known-good file was saved).
        self.confirmed_at = 0.0
        self._swapped = asyncio.Event()
        # Views being compiled in a worker thread, and the compilation that each waits for.
        self._compiling: dict[TenantView, asyncio.Future[None]] = {}

    async def compile(self, views: Iterable[TenantView]) -> None:
        """Compile ``views`` in one worker thread, never on the event loop; a view that calls compile
        already is waited for, not compiled again. Returns when each is compiled or known not to compile."""
        waiting: set[asyncio.Future[None]] = set()
        start: dict[TenantView, None] = {}
        for view in views:
            if not view.pending:
                continue
            running = self._compiling.get(view)
            if running is not None:
                waiting.add(running)
            else:
                start[view] = None
        if start:
            started = asyncio.get_running_loop().run_in_executor(None, compile_all, list(start))
            for view in start:
                self._compiling[view] = started

            def finished(_: asyncio.Future[None]) -> None:
                for view in start:
                    del self._compiling[view]

            started.add_done_callback(finished)
            waiting.add(started)
        for future in waiting:
            # Shielded: a caller that gives up leaves the compilation running for the others.
            await asyncio.shield(future)

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
