"""Rulings: what a decision settles before the action and resource, shared by the checks of one caller, and
kept per snapshot for subjects (never for tokens, never when undecided, never past MAX_RULINGS)."""

from __future__ import annotations

import time

import pytest

from tenantgate.clock import FakeClock
from tenantgate.engines import access
from tenantgate.engines.access import AccessEngine, AccessRequest, Reason, Undecided
from tenantgate.engines.tokens import TokenVerifier
from tenantgate.registry.manifest import parse_document
from tenantgate.snapshot import TenantView, build_snapshot, build_tenant, compile_tenant
from tests.conftest import Issuer, snapshot_of, tenant_doc

ACCESS = {"roles": {"reader": {"allow": ["read:*"], "deny": ["read:secrets/*"]}},
          "bindings": [{"subject": "user:alice", "roles": ["reader"]}], "deny": ["delete:*"]}
ALICE = ("acme", "user:alice", "", "", "")


def test_a_subject_s_ruling_is_kept_for_its_snapshot_and_a_new_snapshot_starts_afresh() -> None:
    engine = AccessEngine(TokenVerifier())
    first = snapshot_of(tenant_doc("acme", access=ACCESS), revision=1)
    ruling = engine.ruling(first, ALICE)
    assert engine.ruling(first, ALICE) is ruling
    assert ruling.decide("read", "docs/1").allowed
    # The next revision takes alice's role away: her kept ruling is not read for it.
    second = snapshot_of(tenant_doc("acme", access={**ACCESS, "bindings": []}), revision=2)
    assert engine.ruling(second, ALICE) is not ruling
    assert engine.check(second, AccessRequest("acme", "read", "docs/1", "user:alice")).reason is \
        Reason.NO_MATCHING_GRANT
    # A call still answering from the older snapshot decides from it, and leaves the newer one's kept.
    assert engine.check(first, AccessRequest("acme", "read", "docs/1", "user:alice")).allowed
    assert engine.ruling(second, ALICE) is engine.ruling(second, ALICE)


def test_each_action_reads_its_rules_in_order_and_unknown_actions_keep_nothing() -> None:
    engine = AccessEngine(TokenVerifier())
    snapshot = snapshot_of(tenant_doc("acme", access=ACCESS))
    ruling = engine.ruling(snapshot, ALICE)
    assert (ruling.decide("read", "secrets/k").reason, ruling.decide("read", "secrets/k").rule) == (
        Reason.EXPLICIT_DENY, "acme/roles/reader/deny/0")
    assert ruling.decide("read", "docs/1").rule == "acme/roles/reader/allow/0"
    assert ruling.decide("delete", "docs/1").rule == "acme/deny/0"
    for number in range(1000):  # actions no rule names share one chain
        assert ruling.decide(f"action-{number}", "docs/1").reason is Reason.NO_MATCHING_GRANT
    assert len(ruling._chains) == 2  # "read", "delete"


def test_a_token_s_ruling_is_not_kept_so_an_expired_token_is_refused(issuer: Issuer) -> None:
    clock = FakeClock(time.time())
    engine = AccessEngine(TokenVerifier(clock=clock))
    snapshot = snapshot_of(tenant_doc("acme", access=ACCESS, tokens={"issuers": [issuer.issuer_spec()]}))
    principal = ("acme", "", "", issuer.token("acme", "alice", expires_in=60), "")
    assert engine.ruling(snapshot, principal).decide("read", "docs/1").allowed  # user:alice, by her role
    assert engine.ruling(snapshot, principal) is not engine.ruling(snapshot, principal)
    clock.advance(120)
    assert engine.ruling(snapshot, principal).decide("read", "docs/1").reason is Reason.TOKEN_EXPIRED


def test_an_undecided_ruling_is_not_kept_the_tenant_may_be_compiled_for_the_next_check() -> None:
    spec = parse_document(tenant_doc("acme", access=ACCESS)).tenant
    pending = TenantView(spec.id, 1, spec.state, (), lambda: compile_tenant(spec))
    snapshot = build_snapshot(1, [pending], time.time())
    engine = AccessEngine(TokenVerifier())
    assert isinstance(engine.ruling(snapshot, ALICE).decide("read", "docs/1"), Undecided)
    pending.compile()
    assert engine.ruling(snapshot, ALICE).decide("read", "docs/1").allowed


def test_at_most_max_rulings_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(access, "MAX_RULINGS", 10)
    engine = AccessEngine(TokenVerifier())
    snapshot = build_snapshot(1, [build_tenant(parse_document(tenant_doc("acme", access=ACCESS)).tenant, 1)],
                              time.time())
    for number in range(25):  # callers naming ever new subjects
        engine.ruling(snapshot, ("acme", f"user:{number}", "", "", ""))
        assert len(engine._rulings) <= 10
