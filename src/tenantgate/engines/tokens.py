"""Bearer-token verification against the home tenant's inline JWKS (PyJWT).

Verified tokens are cached by a BLAKE2b-256 digest of the token until they expire: a digest keeps the
cache's memory bounded whatever the tokens' size, and BLAKE2b costs a third less than SHA-256 per call. A
cached entry remembers the issuer configuration it was verified against and is ignored once the tenant's
issuers change.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import cachetools
import jwt

from tenantgate.bounds import MAX_TOKEN_BYTES
from tenantgate.clock import Clock, SystemClock
from tenantgate.snapshot import CompiledIssuer, Snapshot, TenantView


class TokenProblem(IntEnum):
    NONE = 0
    INVALID = 1
    EXPIRED = 2
    # The tenant the token may belong to cannot be compiled by this server: no answer, not a rejection.
    TENANT_UNAVAILABLE = 3


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    tenant_id: str
    subject: str
    scopes: tuple[str, ...]
    expires_at: float


# Not frozen: one is built for every token checked, cached or not (see engines/access.py).
@dataclass(slots=True)
class TokenResult:
    token: VerifiedToken | None
    problem: TokenProblem = TokenProblem.NONE
    detail: str = ""


@dataclass(frozen=True, slots=True)
class _CacheEntry:
    token: VerifiedToken
    issuers: tuple[CompiledIssuer, ...]


class TokenVerifier:
    def __init__(self, *, cache_size: int = 100_000, leeway: float = 0.0, clock: Clock | None = None) -> None:
        # maxsize 0 turns the cache off (every token verified), which benchmarks use to measure cold tokens.
        self._cache: cachetools.LRUCache[bytes, _CacheEntry] = cachetools.LRUCache(maxsize=max(0, cache_size))
        self._leeway = leeway
        self._clock = clock or SystemClock()
        self._jwt = _ClockedJWT(self._clock)

    def verify(self, snapshot: Snapshot, token: str, home_tenant_id: str = "") -> TokenResult:
        """Verify ``token``; ``home_tenant_id``, when given, is the only tenant it may belong to."""
        if len(token) > MAX_TOKEN_BYTES:
            return _invalid(f"token longer than {MAX_TOKEN_BYTES} bytes")
        digest = _digest(token)
        entry = self._cache.get(digest)
        if entry is not None and _answers(entry, snapshot, home_tenant_id):
            if self._clock.now() < entry.token.expires_at + self._leeway:
                return TokenResult(entry.token)
            self._cache.pop(digest, None)
            return TokenResult(None, TokenProblem.EXPIRED, "token expired")
        result, issuers = self._verify_uncached(snapshot, token, home_tenant_id)
        if result.token is not None and issuers is not None and self._cache.maxsize > 0:
            self._cache[digest] = _CacheEntry(result.token, issuers)
        return result

    def tenants_to_compile(self, snapshot: Snapshot, token: str, home_tenant_id: str = "") -> list[TenantView]:
        """The tenants whose issuers ``verify`` would read and that are not compiled yet (none for a token it
        answers from the cache), so that the server compiles them off its event loop first."""
        if len(token) > MAX_TOKEN_BYTES:
            return []
        entry = self._cache.get(_digest(token))
        if entry is not None and _answers(entry, snapshot, home_tenant_id):
            return []
        try:
            claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return []
        issuer_url = claims.get("iss")
        if not isinstance(issuer_url, str):
            return []
        views = (snapshot.tenants[t] for t in _candidates(snapshot, issuer_url, claims, home_tenant_id))
        return [view for view in views if view.pending]

    def _verify_uncached(self, snapshot: Snapshot, token: str,
                         home_tenant_id: str) -> tuple[TokenResult, tuple[CompiledIssuer, ...] | None]:
        try:
            header = jwt.get_unverified_header(token)
            unverified: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            return _invalid(f"malformed token: {exc}"), None
        issuer_url = unverified.get("iss")
        if not isinstance(issuer_url, str):
            return _invalid("token has no iss claim"), None
        for tenant_id in _candidates(snapshot, issuer_url, unverified, home_tenant_id):
            tenant = snapshot.tenants[tenant_id]
            compiled = tenant.built  # compiled before the check (tenants_to_compile): never here
            if compiled is None:
                return TokenResult(None, TokenProblem.TENANT_UNAVAILABLE, tenant.unavailable), None
            for issuer in compiled.issuers:
                if issuer.spec.issuer != issuer_url:
                    continue
                if str(unverified.get(issuer.spec.tenant_claim, "")) != tenant_id:
                    continue
                return self._verify_with(token, header, issuer, tenant_id), compiled.issuers
        return _invalid(f"no tenant{' ' + home_tenant_id if home_tenant_id else ''} trusts issuer "
                        f"{issuer_url!r} for this token's tenant claim"), None

    def _verify_with(self, token: str, header: dict[str, Any], issuer: CompiledIssuer,
                     tenant_id: str) -> TokenResult:
        key_id = header.get("kid")
        key = issuer.keys_by_id.get(key_id) if isinstance(key_id, str) else issuer.sole_key
        if key is None:
            return _invalid(f"no key {key_id!r} in the JWKS of issuer {issuer.spec.issuer!r}")
        algorithm = key.algorithm_name
        if header.get("alg") != algorithm:
            return _invalid(f"token algorithm {header.get('alg')!r} does not match its key ({algorithm})")
        try:
            claims = self._jwt.decode(
                token,
                key=key.key,
                algorithms=[algorithm],
                audience=issuer.spec.audience,
                issuer=issuer.spec.issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud", issuer.spec.subject_claim]},
            )
        except jwt.ExpiredSignatureError:
            return TokenResult(None, TokenProblem.EXPIRED, "token expired")
        except jwt.PyJWTError as exc:
            return _invalid(str(exc))
        if str(claims.get(issuer.spec.tenant_claim)) != tenant_id:
            return _invalid(f"claim {issuer.spec.tenant_claim!r} does not name tenant {tenant_id!r}")
        subject = claims[issuer.spec.subject_claim]
        if not isinstance(subject, str) or not subject:
            return _invalid(f"claim {issuer.spec.subject_claim!r} is not a non-empty string")
        return TokenResult(VerifiedToken(tenant_id, f"user:{subject}", _scopes(claims), float(claims["exp"])))


class _ClockedJWT(jwt.PyJWT):
    """PyJWT with its time claims (iat, nbf, exp: RFC 7519 4.1.4-6) judged on the verifier's clock, not the
    system's, so that fresh and cached verifications agree on a server given a clock; every other check, and the
    order of the checks (so which reason a token that fails several gets), is PyJWT's own."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self._clock = clock

    def _validate_iat(self, payload: dict[str, Any], now: float, leeway: float) -> None:
        super()._validate_iat(payload, self._clock.now(), leeway)

    def _validate_nbf(self, payload: dict[str, Any], now: float, leeway: float) -> None:
        super()._validate_nbf(payload, self._clock.now(), leeway)

    def _validate_exp(self, payload: dict[str, Any], now: float, leeway: float) -> None:
        super()._validate_exp(payload, self._clock.now(), leeway)


def _digest(token: str) -> bytes:
    return hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=32).digest()


def _answers(entry: _CacheEntry, snapshot: Snapshot, home_tenant_id: str) -> bool:
    """Whether a cached verification answers for ``snapshot``: its tenant's issuers are the very ones it was
    verified against (a tenant not compiled in this snapshot has changed since), and it is the home asked for."""
    tenant = snapshot.tenants.get(entry.token.tenant_id)
    compiled = tenant.built if tenant is not None else None
    return (compiled is not None and compiled.issuers is entry.issuers
            and (not home_tenant_id or home_tenant_id == entry.token.tenant_id))


def _candidates(snapshot: Snapshot, issuer_url: str, claims: dict[str, Any], home_tenant_id: str) -> list[str]:
    """The tenants that may be the token's home, in id order: each trusts ``issuer_url`` and its id is the value
    of one of the token's claims (each issuer names the claim that holds the tenant). Found from the token's
    claims, not by reading every tenant that trusts a shared identity provider."""
    claimed = {str(value) for value in claims.values()}
    if home_tenant_id:
        claimed &= {home_tenant_id}
    found = []
    for tenant_id in claimed:
        tenant = snapshot.tenants.get(tenant_id)
        if tenant is not None and issuer_url in tenant.issuer_urls:
            found.append(tenant_id)
    return sorted(found)


def _invalid(detail: str) -> TokenResult:
    return TokenResult(None, TokenProblem.INVALID, detail)


def _scopes(claims: dict[str, Any]) -> tuple[str, ...]:
    scope = claims.get("scope", claims.get("scp", ()))
    if isinstance(scope, str):
        return tuple(scope.split())
    if isinstance(scope, list):
        return tuple(str(item) for item in scope)
    return ()
