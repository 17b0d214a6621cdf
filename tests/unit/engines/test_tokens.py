from __future__ import annotations

import time

import jwt

from tenantgate.clock import FakeClock
from tenantgate.engines.tokens import MAX_TOKEN_BYTES, TokenProblem, TokenVerifier
from tests.conftest import ISSUER, Issuer, snapshot_of, tenant_doc


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


def test_a_cached_token_is_still_refused_for_another_home_tenant(issuer: Issuer) -> None:
    snapshot = _snapshot(issuer, globex=[issuer])
    verifier = TokenVerifier()
    token = issuer.token("globex", "bob")  # one token string throughout: the second look-up hits the cache
    verified = verifier.verify(snapshot, token).token
    assert verified is not None and verified.tenant_id == "globex"
    refused = verifier.verify(snapshot, token, "acme")
    assert (refused.token, refused.problem) == (None, TokenProblem.INVALID)
    again = verifier.verify(snapshot, token, "globex").token
    assert again is not None and again.tenant_id == "globex"


def _signed(issuer: Issuer, claims: dict[str, object], **headers: str) -> str:
    """A token of ``issuer`` for acme's alice, with ``claims`` replacing (None: removing) the usual ones."""
    payload = {"iss": issuer.url, "aud": "tenantgate", "tid": "acme", "sub": "alice", "exp": int(time.time()) + 60,
               **claims}
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, issuer.private_key, algorithm="ES256",
                      headers={"kid": issuer.kid, **headers})


def test_a_refused_token_says_why(issuer: Issuer) -> None:
    """The detail is what ValidateToken answers a caller: each refusal names its own cause."""
    snapshot = _snapshot(issuer, globex=[issuer])
    hs256 = jwt.encode({"iss": issuer.url, "tid": "acme", "sub": "a", "aud": "tenantgate",
                        "exp": int(time.time()) + 60}, "secret" * 8, algorithm="HS256", headers={"kid": issuer.kid})
    cases: list[tuple[str, str, str]] = [
        ("x" * (MAX_TOKEN_BYTES + 1), "", f"token longer than {MAX_TOKEN_BYTES} bytes"),
        ("x" * MAX_TOKEN_BYTES, "", "malformed token: Not enough segments"),  # as long as allowed: read
        ("not-a-jwt", "", "malformed token: Not enough segments"),
        (_signed(issuer, {"iss": None}), "", "token has no iss claim"),
        (Issuer(url="https://evil.example").token("acme", "a"), "",
         "no tenant trusts issuer 'https://evil.example' for this token's tenant claim"),
        (issuer.token("globex", "a"), "acme", f"no tenant acme trusts issuer '{ISSUER}' for this token's tenant claim"),
        (_signed(issuer, {}, kid="nope"), "", f"no key 'nope' in the JWKS of issuer '{ISSUER}'"),
        (hs256, "", "token algorithm 'HS256' does not match its key (ES256)"),
        (Issuer().token("acme", "a"), "", "Signature verification failed"),
        (_signed(issuer, {"sub": None}), "", 'Token is missing the "sub" claim'),
        (_signed(issuer, {"exp": None}), "", 'Token is missing the "exp" claim'),
        (_signed(issuer, {"sub": ""}), "", "claim 'sub' is not a non-empty string"),
    ]
    verifier = TokenVerifier()
    for token, home, detail in cases:
        result = verifier.verify(snapshot, token, home)
        assert (result.token, result.problem, result.detail) == (None, TokenProblem.INVALID, detail), detail
    expired = verifier.verify(snapshot, issuer.token("acme", "a", expires_in=-5))
    assert (expired.problem, expired.detail) == (TokenProblem.EXPIRED, "token expired")


def test_scopes_come_from_scope_or_scp(issuer: Issuer) -> None:
    snapshot = _snapshot(issuer)
    verifier = TokenVerifier()
    for claims, scopes in [({"scope": "read write"}, ("read", "write")), ({"scp": ["read", 7]}, ("read", "7")),
                           ({"scope": ["a"], "scp": ["b"]}, ("a",)), ({"scp": "x y"}, ("x", "y")),
                           ({"scope": 5}, ()), ({}, ())]:
        verified = verifier.verify(snapshot, _signed(issuer, claims)).token
        assert verified is not None and verified.scopes == scopes, claims


def test_the_key_is_the_one_the_kid_names_or_the_only_one() -> None:
    first, second = Issuer(kid="k1"), Issuer(kid="k2")
    both = {"issuer": ISSUER, "audience": "tenantgate", "tenant_claim": "tid",
            "jwks": {"keys": first.jwks()["keys"] + second.jwks()["keys"]}}
    two_keys = snapshot_of(tenant_doc("acme", tokens={"issuers": [both]}))
    verifier = TokenVerifier()
    assert verifier.verify(two_keys, second.token("acme", "a")).token is not None
    assert verifier.verify(two_keys, first.token("acme", "a")).token is not None
    unnamed = jwt.encode({"iss": ISSUER, "aud": "tenantgate", "tid": "acme", "sub": "a", "exp": int(time.time()) + 60},
                         second.private_key, algorithm="ES256")  # no kid: ambiguous among two keys
    assert verifier.verify(two_keys, unnamed).detail == f"no key None in the JWKS of issuer '{ISSUER}'"
    assert verifier.verify(_snapshot(second), unnamed).token is not None  # one key: it is the one


def test_a_tenant_may_trust_several_identity_providers() -> None:
    providers = [Issuer(url="https://a.example"), Issuer(url="https://b.example")]
    snapshot = _snapshot(*providers)
    verifier = TokenVerifier()
    for provider in providers:
        verified = verifier.verify(snapshot, provider.token("acme", "alice")).token
        assert verified is not None and verified.tenant_id == "acme"


def test_leeway_keeps_a_token_valid_that_long_after_it_expires_and_no_longer(issuer: Issuer) -> None:
    snapshot = _snapshot(issuer)
    recent = issuer.token("acme", "a", expires_in=-10)
    assert TokenVerifier(leeway=30).verify(snapshot, recent).token is not None
    assert TokenVerifier(leeway=30).verify(snapshot, issuer.token("acme", "a", expires_in=-60)).problem is \
        TokenProblem.EXPIRED
    # A cached verification keeps to the same limit, on the verifier's clock.
    token = issuer.token("acme", "a", expires_in=60)
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    for leeway in (30, 0):
        clock = FakeClock(expires - 50)
        verifier = TokenVerifier(clock=clock) if leeway == 0 else TokenVerifier(leeway=leeway, clock=clock)
        assert verifier.verify(snapshot, token).token is not None
        clock.advance(50 + leeway - 1)
        assert verifier.verify(snapshot, token).token is not None, leeway
        clock.advance(1)
        expired = verifier.verify(snapshot, token)
        assert (expired.problem, expired.detail) == (TokenProblem.EXPIRED, "token expired"), leeway


def test_with_the_cache_off_every_token_is_verified_afresh(issuer: Issuer) -> None:
    clock = FakeClock(time.time())
    verifier = TokenVerifier(cache_size=0, clock=clock)
    snapshot = _snapshot(issuer)
    token = issuer.token("acme", "a", expires_in=300)
    for _ in range(2):
        assert verifier.verify(snapshot, token).token is not None
    clock.advance(300)
    assert verifier.verify(snapshot, token).problem is TokenProblem.EXPIRED


def test_a_fresh_verification_reads_the_verifiers_clock_not_the_systems(issuer: Issuer) -> None:
    """exp, nbf and iat are judged on the clock the verifier is given, as cached verifications are: a server on
    an injected clock never disagrees with itself about whether a token has expired."""
    snapshot = _snapshot(issuer)
    token = issuer.token("acme", "a", expires_in=300)
    assert TokenVerifier(clock=FakeClock(time.time() + 3600)).verify(snapshot, token).problem is TokenProblem.EXPIRED
    early = TokenVerifier(clock=FakeClock(time.time() - 3600)).verify(snapshot, token)
    assert (early.problem, early.detail) == (TokenProblem.INVALID, "The token is not yet valid (iat)")
    later = issuer.token("acme", "a", expires_in=3600, nbf=int(time.time()) + 600)
    assert TokenVerifier().verify(snapshot, later).detail == "The token is not yet valid (nbf)"
    assert TokenVerifier(clock=FakeClock(time.time() + 601)).verify(snapshot, later).token is not None


def test_a_cached_token_of_a_tenant_gone_from_the_registry_is_refused(issuer: Issuer) -> None:
    verifier = TokenVerifier()
    token = issuer.token("globex", "bob")
    assert verifier.verify(_snapshot(issuer, globex=[issuer]), token).token is not None
    gone = verifier.verify(_snapshot(issuer), token)  # globex deleted: only acme is left
    assert (gone.token, gone.problem) == (None, TokenProblem.INVALID)


def test_an_identity_provider_listed_twice_is_tried_with_each_tenant_claim(issuer: Issuer) -> None:
    # The same provider under another tenant claim first (as while a tenant moves from one claim to another).
    by_org = {**issuer.issuer_spec(), "tenant_claim": "org"}
    snapshot = snapshot_of(tenant_doc("acme", tokens={"issuers": [by_org, issuer.issuer_spec()]}))
    verified = TokenVerifier().verify(snapshot, issuer.token("acme", "alice"))  # names acme in "tid" only
    assert verified.token is not None and verified.token.tenant_id == "acme"
