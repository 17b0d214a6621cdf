"""What a token issuer's inline JWKS may hold: public signing keys of the asymmetric algorithms only.

A JWKS is admin input that ends up deciding who is authenticated, so every member that verification reads
is checked here, by type, value and size, before PyJWT sees it: a key PyJWT cannot use (``alg: none``, a
symmetric or unknown algorithm, a curve that does not match its algorithm) is a problem naming the member,
never an exception escaping from the parser.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from typing import Any

import jwt

from tenantgate.registry.bounds import fits
from tenantgate.registry.canonical import UNREPRESENTABLE, canonical_json

# Algorithms per key type: asymmetric signatures only. "none" and the HMAC algorithms are refused.
ALGORITHMS = {
    "RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    "EC": ("ES256", "ES256K", "ES384", "ES512"),
    "OKP": ("EdDSA",),
}
# The curve each EC algorithm signs with; OKP keys sign with Ed25519 or Ed448 (X25519 and X448 only agree
# keys).
EC_CURVES = {"ES256": "P-256", "ES256K": "secp256k1", "ES384": "P-384", "ES512": "P-521"}
OKP_CURVES = ("Ed25519", "Ed448")
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth")
MAX_KEYS = 100
MIN_RSA_BITS, MAX_RSA_BITS = 2048, 8192
MAX_RSA_EXPONENT = 2**32
MAX_KEY_ID = 256
# The longest member a public key needs: a 16,384-bit RSA modulus is 2,731 base64url characters.
MAX_MEMBER = 2731
MAX_JWKS_BYTES = 256 * 1024
_STRING_MEMBERS = ("kty", "alg", "use", "kid", "crv", "n", "e", "x", "y")


def jwks_problems(jwks: Any) -> tuple[tuple[tuple[str, str], ...], str]:
    """(member path below the JWKS, what is wrong) for each problem, empty when every key is usable; and the
    JWKS as the canonical JSON it is stored as (made once here, for the check and for storage), "" when it
    has problems."""
    if not isinstance(jwks, dict):
        return (("", "expected {keys: [...]} with at least one key"),), ""
    if not fits(jwks, MAX_JWKS_BYTES):
        return (("", f"is too large; a JWKS may be at most {MAX_JWKS_BYTES} bytes"),), ""
    try:
        text = canonical_json(jwks)
    except (TypeError, ValueError):
        return (("", UNREPRESENTABLE),), ""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_JWKS_BYTES:
        return (("", f"is {size} bytes long; a JWKS may be at most {MAX_JWKS_BYTES}"),), ""
    found = _problems_of(text)
    return found, "" if found else text


@functools.lru_cache(maxsize=256)  # at most 64 MiB of key sets held, however many are applied
def _problems_of(jwks_json: str) -> tuple[tuple[str, str], ...]:
    """Checked once per distinct key set: tenants that trust one identity provider share it."""
    keys = json.loads(jwks_json).get("keys")
    if not isinstance(keys, list) or not keys:
        return (("", "expected {keys: [...]} with at least one key"),)
    if len(keys) > MAX_KEYS:
        return ((".keys", f"holds {len(keys)} keys; a JWKS may hold at most {MAX_KEYS}"),)
    found: list[tuple[str, str]] = []
    key_ids: dict[str, int] = {}
    for index, key in enumerate(keys):
        path = f".keys[{index}]"
        problems = _key_problems(key)
        found.extend((path + member, message) for member, message in problems)
        kid = key.get("kid") if isinstance(key, dict) else None
        if isinstance(kid, str):
            if kid in key_ids:
                found.append((f"{path}.kid", f"{_shown(kid)} is also the kid of keys[{key_ids[kid]}]"))
            key_ids.setdefault(kid, index)
    return tuple(found)


def _key_problems(key: Any) -> list[tuple[str, str]]:
    if not isinstance(key, dict):
        return [("", f"expected a public signing key (a mapping with kty RSA, EC or OKP), got {_kind(key)}")]
    problems = [(f".{member}", f"expected a string, got {_kind(key[member])}")
                for member in _STRING_MEMBERS if member in key and not isinstance(key[member], str)]
    problems += [(f".{member}", f"is {len(key[member])} characters long; at most {MAX_MEMBER}")
                 for member in _STRING_MEMBERS if isinstance(key.get(member), str) and len(key[member]) > MAX_MEMBER]
    if problems:
        return problems
    kty, alg, crv = key.get("kty"), key.get("alg"), key.get("crv")
    if kty not in ALGORITHMS:
        return [(".kty", f"{_shown(kty)} is not a public signing key type (RSA, EC or OKP)")]
    if any(member in key for member in PRIVATE_MEMBERS):
        return [("", "holds private key material; publish only the public key")]
    if alg is not None and alg not in ALGORITHMS[kty]:
        return [(".alg", f"{_shown(alg)} is not an asymmetric signing algorithm for {kty} keys "
                         f"(one of {', '.join(ALGORITHMS[kty])})")]
    if "use" in key and key["use"] != "sig":
        return [(".use", f"{_shown(key['use'])}: an issuer's keys must be signing keys (use: sig)")]
    if "kid" in key and not 0 < len(key["kid"]) <= MAX_KEY_ID:
        return [(".kid", f"must be 1 to {MAX_KEY_ID} characters")]
    if kty == "EC" and crv not in EC_CURVES.values():
        return [(".crv", f"{_shown(crv)} is not a signing curve (one of {', '.join(EC_CURVES.values())})")]
    if kty == "EC" and alg is not None and EC_CURVES[alg] != crv:
        return [(".crv", f"{_shown(crv)} does not match alg {alg} (which signs with {EC_CURVES[alg]})")]
    if kty == "OKP" and crv not in OKP_CURVES:
        return [(".crv", f"{_shown(crv)} is not a signing curve (one of {', '.join(OKP_CURVES)})")]
    if kty == "RSA" and (problem := _rsa_cost_problem(key)):
        return [problem]
    try:
        jwt.PyJWK.from_dict(key)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
        # The members are of the right types and sizes; what is left is their content (not on the curve,
        # a bad encoding, a missing coordinate).
        return [("", f"not a usable key: {_shown(str(exc), 120, quoted=False)}")]
    return []


def _rsa_cost_problem(key: dict[str, Any]) -> tuple[str, str] | None:
    """Verifying a signature costs more the longer the modulus and the larger the public exponent, and a
    token naming a key is verified before it can be refused: keep both to what identity providers use (a
    3072-bit key with a huge exponent cost 30 times a normal one per token)."""
    try:
        modulus, exponent = (int.from_bytes(base64.urlsafe_b64decode(key[member] + "=" * (-len(key[member]) % 4)),
                                            "big") for member in ("n", "e"))
    except (KeyError, TypeError, ValueError, binascii.Error):
        return None  # not a usable key at all: PyJWK says why
    if not MIN_RSA_BITS <= modulus.bit_length() <= MAX_RSA_BITS:
        return (".n", f"is a {modulus.bit_length()}-bit modulus; RSA signing keys must be {MIN_RSA_BITS} to "
                      f"{MAX_RSA_BITS} bits")
    if not 3 <= exponent <= MAX_RSA_EXPONENT or exponent % 2 == 0:
        return (".e", "must be an odd public exponent from 3 to 2**32 (identity providers use 65537, AQAB)")
    return None


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _shown(value: Any, limit: int = 40, *, quoted: bool = True) -> str:
    """A value for a message, cut short: the input may be of any size."""
    text = repr(value) if quoted else str(value)
    return text if len(text) <= limit else text[:limit] + "…"

