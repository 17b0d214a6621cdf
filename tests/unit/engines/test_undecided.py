"""A tenant this server cannot compile gives no decision (Undecided), never a deny and never an exception; and
the engines say which tenants a check needs compiled, so that the server compiles them off its event loop."""

from __future__ import annotations

import time

import pytest

from tenantgate.engines.access import AccessEngine, AccessRequest, Decision, Reason, Undecided
from tenantgate.engines.tokens import TokenProblem, TokenVerifier
from tenantgate.errors import FailedPrecondition
from tenantgate.model import TenantState
from tenantgate.registry.manifest import parse_document
from tenantgate.snapshot import (
    CompiledTenant,
    Snapshot,
    TenantView,
    build_snapshot,
    build_tenant,
    compile_all,
    compile_tenant,
)
from tests.conftest import Issuer, tenant_doc

ACCESS = {"roles": {"reader": {"allow": ["read:*"]}}, "bindings": [{"subject": "user:alice", "roles": ["reader"]}]}
PROBLEM = "tenant 'globex' at revision 1 cannot be loaded by this server; see its log"


def uncompilable(tenant_id: str, issuer_urls: tuple[str, ...] = ()) -> TenantView:
    """A view of a stored document this version cannot read, compiled (as a server does before a check that
    needs it): compiling it failed, as the syncer's does."""

    def load() -> CompiledTenant:
        raise FailedPrecondition(PROBLEM)

    view = TenantView(tenant_id, 1, TenantState.ACTIVE, issuer_urls, load)
    assert view.compile() is None
    return view


def view(document: dict) -> TenantView:  # type: ignore[type-arg]
    return build_tenant(parse_document(document).tenant, 1)


def pending_view(document: dict) -> TenantView:  # type: ignore[type-arg]
    """A view not compiled yet, as a full snapshot build leaves every tenant until a call needs it."""
    spec = parse_document(document).tenant
    return TenantView(spec.id, 1, spec.state, tuple(i.issuer for i in spec.issuers), lambda: compile_tenant(spec))


def snapshot_with(*views: TenantView) -> Snapshot:
    return build_snapshot(1, views, time.time())


def test_a_tenant_that_cannot_be_compiled_is_undecided_not_denied_and_not_raised() -> None:
    engine = AccessEngine(TokenVerifier())
    snapshot = snapshot_with(uncompilable("globex"), view(tenant_doc("acme", access=ACCESS)))
    for _ in range(2):  # the failure is kept: the second check does not try again, and answers the same
        result = engine.check(snapshot, AccessRequest("globex", "read", "docs/1", subject="user:alice"))
        assert result == Undecided(PROBLEM)
    assert snapshot.tenants["globex"].built is None and snapshot.tenants["globex"].problem == PROBLEM
    with pytest.raises(FailedPrecondition, match="cannot be loaded"):
        _ = snapshot.tenants["globex"].spec  # what the quota and key engines read: their FAILED_PRECONDITION
    # The others are decided as usual, a subject of the broken tenant included (only its state is read).
    allowed = engine.check(snapshot, AccessRequest("acme", "read", "docs/1", subject="user:alice"))
    assert isinstance(allowed, Decision) and allowed.allowed
    crossing = engine.check(snapshot, AccessRequest("acme", "read", "docs/1", subject="user:alice",
                                                    subject_tenant_id="globex"))
    assert isinstance(crossing, Decision) and crossing.reason is Reason.CROSS_TENANT_DENIED


def test_the_engine_never_compiles_a_tenant_itself() -> None:
    """Compiling parses and unwraps keys (milliseconds): the server does it off its event loop before the check;
    a check that finds a tenant not compiled is undecided, and leaves it for the server to compile."""
    compiled_by_the_check: list[str] = []

    def load() -> CompiledTenant:
        compiled_by_the_check.append("globex")
        raise AssertionError("the engine compiled a tenant")

    pending = TenantView("globex", 1, TenantState.ACTIVE, (), load)
    result = AccessEngine(TokenVerifier()).check(snapshot_with(pending),
                                                 AccessRequest("globex", "read", "docs/1", subject="user:alice"))
    assert isinstance(result, Undecided) and "not compiled yet" in result.problem
    assert pending.pending and compiled_by_the_check == []


def test_a_token_whose_home_cannot_be_compiled_is_undecided(issuer: Issuer) -> None:
    tokens = {"issuers": [issuer.issuer_spec()]}
    snapshot = snapshot_with(uncompilable("globex", (issuer.url,)),
                             view(tenant_doc("acme", access=ACCESS, tokens=tokens)))
    verifier = TokenVerifier()
    token = issuer.token("globex", "alice")
    assert verifier.verify(snapshot, token) == verifier.verify(snapshot, token, "globex")
    result = verifier.verify(snapshot, token)
    assert (result.token, result.problem, result.detail) == (None, TokenProblem.TENANT_UNAVAILABLE, PROBLEM)
    engine = AccessEngine(verifier)
    assert engine.check(snapshot, AccessRequest("acme", "read", "docs/1", token=token)) == Undecided(PROBLEM)
    # acme's own tokens do not depend on globex.
    own = engine.check(snapshot, AccessRequest("acme", "read", "docs/1", token=issuer.token("acme", "alice")))
    assert isinstance(own, Decision) and own.allowed


def test_a_check_names_the_tenants_it_needs_compiled(issuer: Issuer) -> None:
    tokens = {"issuers": [issuer.issuer_spec()]}
    # One identity provider shared by many tenants, as a SaaS's own login is.
    names = [f"t{i:03d}" for i in range(50)]
    snapshot = snapshot_with(*(pending_view(tenant_doc(name, access=ACCESS, tokens=tokens)) for name in names))
    verifier = TokenVerifier()
    engine = AccessEngine(verifier)
    by_subject = AccessRequest("t001", "read", "docs/1", subject="user:alice", subject_tenant_id="t002")
    assert [v.id for v in engine.tenants_to_compile(snapshot, by_subject)] == ["t001"]  # t002: only its state
    token = issuer.token("t049", "alice")
    by_token = AccessRequest("t001", "read", "docs/1", token=token)
    # The token's home, found from its claims, and the resource's tenant; not every tenant trusting the issuer.
    assert sorted(v.id for v in engine.tenants_to_compile(snapshot, by_token)) == ["t001", "t049"]
    assert not engine.tenants_to_compile(snapshot, AccessRequest("nope", "read", "x", subject="user:alice"))

    compile_all(engine.tenants_to_compile(snapshot, by_token))  # what the server does, off its event loop
    decided = engine.check(snapshot, by_token)
    assert isinstance(decided, Decision) and decided.reason is Reason.CROSS_TENANT_DENIED
    compiled = [name for name in names if snapshot.tenants[name].built is not None]
    assert compiled == ["t001", "t049"]  # verifying the token read no other tenant of the shared issuer
    assert engine.tenants_to_compile(snapshot, by_token) == []  # compiled, and the token is cached
    # A verification answered from the cache still checks the home tenant asked for.
    assert verifier.verify(snapshot, token, "t001").problem is TokenProblem.INVALID
    assert verifier.tenants_to_compile(snapshot, token, "t001") == []
    assert verifier.verify(snapshot, token, "t049").token is not None
    assert engine.tenants_to_compile(snapshot, by_subject) == []
    # The cached verification is not reused for a snapshot where the home tenant has changed (not compiled).
    changed = build_snapshot(2, [*(snapshot.tenants[n] for n in names if n != "t049"),
                                 pending_view(tenant_doc("t049", access=ACCESS, tokens=tokens))], time.time())
    assert [v.id for v in verifier.tenants_to_compile(changed, token)] == ["t049"]
    compile_all(verifier.tenants_to_compile(changed, token))
    assert verifier.verify(changed, token).token is not None
