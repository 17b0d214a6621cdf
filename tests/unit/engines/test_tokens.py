from __future__ import annotations

import time

import jwt

from tenantgate.clock import FakeClock
from tenantgate.engines.tokens import TokenProblem, TokenVerifier
from tests.conftest import Issuer, snapshot_of, tenant_doc


def _snapshot(*issuers: Issuer, **extra_tenants: list[Issuer]):  # type: ignore[no-untyped-def]
    docs = [tenant_doc("acme", tokens={"issuers": [i.issuer_spec() for i in issuers]})]
    docs += [tenant_doc(t, tokens={"issuers": [i.issuer_spec() for i in trusted]}) for t, trusted in
             extra_tenants.items()]
    return snapshot_of(*docs)


def test_valid_token_yields_tenant_subject_and_scopes(issuer: Issuer) -> None:
    result = TokenVerifier().verify(_snapshot(issuer), issuer.token("acme", "alice", scope="read write"))
    assert result.token is not None
    assert (result.token.tenant_id, result.token.subject, result.token.scopes) == ("acme", "user:alice",
                                                                                 ("read", "write"))


def test_shared_issuer_routes_by_tenant_claim(issuer: Issuer) -> None:
    snapshot = _snapshot(issuer, globex=[issuer])
    verifier = TokenVerifier()
    token = verifier.verify(snapshot, issuer.token("globex", "bob")).token
    assert token is not None and token.tenant_id == "globex"
    # Asked for acme, a globex token is not acme's.
    assert verifier.verify(snapshot, issuer.token("globex", "bob"), "acme").problem is TokenProblem.INVALID


def test_rejections(issuer: Issuer) -> None:
    snapshot = _snapshot(issuer)
    verifier = TokenVerifier()
    cases = {
        "wrong audience": issuer.token("acme", "a", aud="someone-else"),
        "unknown tenant claim": issuer.token("initech", "a"),
        "unknown issuer": Issuer(url="https://evil.example").token("acme", "a"),
        "bad signature": Issuer().token("acme", "a"),
        "not yet valid": issuer.token("acme", "a", nbf=int(time.time()) + 600),
        "malformed": "abc.def.ghi",
        "none algorithm": jwt.encode({"iss": issuer.url, "tid": "acme", "sub": "a", "aud": "tenantgate",
                                      "exp": int(time.time()) + 60}, None, algorithm="none"),
        "symmetric algorithm": jwt.encode({"iss": issuer.url, "tid": "acme", "sub": "a", "aud": "tenantgate",
                                           "exp": int(time.time()) + 60}, "secret" * 8, algorithm="HS256",
                                          headers={"kid": issuer.kid}),
    }
    for name, token in cases.items():
        result = verifier.verify(snapshot, token)
        assert (result.token, result.problem) == (None, TokenProblem.INVALID), name
    expired = verifier.verify(snapshot, issuer.token("acme", "a", expires_in=-5))
    assert expired.problem is TokenProblem.EXPIRED


def test_cached_token_expires_and_cache_follows_issuer_changes(issuer: Issuer) -> None:
    clock = FakeClock(time.time())
    verifier = TokenVerifier(clock=clock)
    snapshot = _snapshot(issuer)
    token = issuer.token("acme", "alice", expires_in=60)
    assert verifier.verify(snapshot, token).token is not None
    # The issuer's key is rotated away: the cached verification must not survive it.
    rotated = _snapshot(Issuer(kid="test-2"))
    assert verifier.verify(rotated, token).problem is TokenProblem.INVALID
    assert verifier.verify(snapshot, token).token is not None
    clock.advance(61)
    assert verifier.verify(snapshot, token).problem is TokenProblem.EXPIRED
