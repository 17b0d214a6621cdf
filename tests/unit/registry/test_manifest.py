from __future__ import annotations

import json
from pathlib import Path

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from tenantgate.model import CalendarPeriod, QuotaKind, TenantState
from tenantgate.registry.manifest import ManifestError, load_manifests, parse_document, parse_manifest_texts
from tests.conftest import EXAMPLES, tenant_doc


def test_example_manifests_parse_with_every_field() -> None:
    documents = {doc.tenant.id: doc for doc in load_manifests([EXAMPLES])}
    assert set(documents) == {"acme", "globex", "initech"}
    acme = documents["acme"].tenant
    assert acme.state is TenantState.ACTIVE
    assert acme.labels == {"region": "eu-west", "tier": "gold"}
    quotas = acme.quotas
    assert (quotas["api-requests"].kind, quotas["api-requests"].limit, quotas["api-requests"].per_seconds,
            quotas["api-requests"].burst) == (QuotaKind.RATE, 1000, 60, 100)
    assert quotas["ai-requests"].period is CalendarPeriod.MONTH
    assert quotas["concurrent-requests"].lease_ttl == 30
    assert quotas["users"].kind is QuotaKind.ALLOCATION
    assert (quotas["storage-bytes"].kind, quotas["storage-bytes"].limit) == (QuotaKind.VOLUME, 100 * 2**30)
    assert acme.keys.readers == {"service:storage", "service:backup"}
    assert acme.keys.rotate_every == 90 * 86400
    assert documents["initech"].source.endswith("globex.yaml: document 2")


def _problems(document: dict) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        parse_document(document, "t.yaml: document 1")
    return caught.value.problems


@pytest.mark.parametrize(
    ("spec", "path", "message"),
    [
        ({"quotas": {"api": {"rate": "10/fortnight"}}}, "spec.quotas.api.rate", "bad rate"),
        ({"quotas": {"api": {"limit": 5, "period": "year"}}}, "spec.quotas.api.period", "not one of"),
        ({"quotas": {"disk": {"allocation": "5Gb"}}}, "spec.quotas.disk.allocation", "bad amount"),
        ({"quotas": {"c": {"concurrency": 2, "lease_ttl": "soon"}}}, "spec.quotas.c.lease_ttl", "bad duration"),
        ({"access": {"roles": {"a": {"allow": ["*"]}}, "bindings": [{"subject": "user:x", "roles": ["b"]}]}},
         "spec.access.bindings[0].roles[0]", "unknown role 'b'"),
        ({"access": {"roles": {"a": {"allow": ["read"]}}}}, "spec.access.roles.a.allow[0]", "not a rule"),
        # What one rule may cost a check is bounded: a ? run between stars is searched at every position.
        ({"access": {"roles": {"a": {"allow": ["read:*" + "a?" * 8 + "b*"]}}}}, "spec.access.roles.a.allow[0]",
         "such a run may be at most 16 characters"),
        ({"access": {"deny": ["read:" + "x" * 257]}}, "spec.access.deny[0]", "at most 256"),
        ({"access": {"roles": {"a": {}}}, "bindings": []}, "spec.bindings", "unknown field"),
        ({"environments": ["prod"], "access": {"roles": {"a": {"allow": ["*"]}},
                                               "bindings": [{"subject": "user:x", "roles": ["a"],
                                                             "environments": ["qa"]}]}},
         "spec.access.bindings[0].environments", "unknown environment 'qa'"),
        ({"state": "Paused"}, "spec.state", "not one of"),
        ({"keys": {"readers": ["storage"]}}, "spec.keys.readers[0]", "not a valid caller identity"),
        ({"keys": {"readers": ["service:a", "group:ops"]}}, "spec.keys.readers[1]", "is a group"),
        ({"keys": {"metadata_readers": ["group:ops"]}}, "spec.keys.metadata_readers[0]", "is a group"),
        ({"keys": {"readers": ["service:storage\n"]}}, "spec.keys.readers[0]", "not a valid caller identity"),
        ({"tokens": {"issuers": [{"issuer": "https://i", "audience": "a",
                                  "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}]}},
         "spec.tokens.issuers[0].jwks.keys[0].kty", "is not a public signing key type"),
    ],
)
def test_bad_fields_are_reported_with_file_document_and_path(spec: dict, path: str, message: str) -> None:
    problems = _problems(tenant_doc("acme", **spec))
    assert any(p.startswith(f"t.yaml: document 1: {path}: ") and message in p for p in problems), problems


def test_bad_tenant_id_and_unknown_top_level_field() -> None:
    document = tenant_doc("Acme_Corp")
    document["extra"] = 1
    problems = _problems(document)
    assert any("metadata.id: 'Acme_Corp' is not a valid tenant id" in p for p in problems)
    assert any(": extra: unknown field" in p for p in problems)


@pytest.mark.parametrize("tenant_id", ["acme\n", "acme\r\n", "ac\nme"])
def test_a_newline_never_passes_as_part_of_a_tenant_id(tenant_id: str) -> None:
    assert any("is not a valid tenant id" in p for p in _problems(tenant_doc(tenant_id)))


def test_every_problem_of_a_run_is_reported_together(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("apiVersion: tenantgate/v1\nkind: Tenant\nmetadata: {id: ok-one}\n"
                                     "spec: {state: Active}\n---\napiVersion: tenantgate/v1\nkind: Tenant\n"
                                     "metadata: {id: BAD}\nspec: {}\n")
    (tmp_path / "b.yaml").write_text("apiVersion: tenantgate/v1\nkind: Tenant\nmetadata: {id: ok-one}\n")
    (tmp_path / "c.yaml").write_text("key: [unclosed\n")
    with pytest.raises(ManifestError) as caught:
        load_manifests([tmp_path])
    text = "\n".join(caught.value.problems)
    assert "a.yaml: document 2: metadata.id" in text
    assert "b.yaml: document 1: metadata.id: tenant 'ok-one' is also defined in" in text
    assert "c.yaml: cannot read YAML" in text


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such file"):
        load_manifests([tmp_path / "nope.yaml"])


def _ec_jwk(**members: object) -> dict:
    return {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key())),
            **members}


def _issuer_with(*keys: object) -> dict:
    return tenant_doc("acme", tokens={"issuers": [{"issuer": "https://i", "audience": "a",
                                                   "jwks": {"keys": list(keys)}}]})


@pytest.mark.parametrize(
    ("key", "member", "message"),
    [
        (_ec_jwk(alg="none"), ".alg", "'none' is not an asymmetric signing algorithm for EC keys"),
        (_ec_jwk(alg="HS256"), ".alg", "'HS256' is not an asymmetric signing algorithm"),
        (_ec_jwk(alg="XX999"), ".alg", "'XX999' is not an asymmetric signing algorithm"),
        (_ec_jwk(alg="RS256"), ".alg", "for EC keys (one of ES256, ES256K, ES384, ES512)"),
        (_ec_jwk(alg=["ES256"]), ".alg", "expected a string, got list"),
        (_ec_jwk(alg=None), ".alg", "expected a string, got nothing"),
        (_ec_jwk(alg="ES384"), ".crv", "'P-256' does not match alg ES384 (which signs with P-384)"),
        (_ec_jwk(crv="P-999"), ".crv", "'P-999' is not a signing curve"),
        (_ec_jwk(kty="FOO"), ".kty", "'FOO' is not a public signing key type (RSA, EC or OKP)"),
        (_ec_jwk(kty=["EC"]), ".kty", "expected a string, got list"),
        ({"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}, ".kty", "'oct' is not a public signing key type"),
        (_ec_jwk(d="c2VjcmV0"), "", "holds private key material"),
        (_ec_jwk(use="enc"), ".use", "must be signing keys (use: sig)"),
        (_ec_jwk(kid=7), ".kid", "expected a string, got int"),
        (_ec_jwk(kid=""), ".kid", "must be 1 to 256 characters"),
        (_ec_jwk(x=5), ".x", "expected a string, got int"),
        (_ec_jwk(x="A" * 5000), ".x", "is 5000 characters long; at most 2731"),
        ({"kty": "RSA", "n": "A" * 100_000, "e": "AQAB"}, ".n", "is 100000 characters long"),
        ({"kty": "RSA", "n": "AQAB"}, "", "not a usable key"),
        ({"kty": "OKP", "crv": "X25519", "x": "AAAA"}, ".crv", "'X25519' is not a signing curve"),
        ({"kty": "EC", "crv": "P-256"}, "", "not a usable key"),
        ("a key", "", "expected a public signing key"),
    ],
)
def test_a_jwks_key_that_cannot_verify_signatures_is_refused_naming_its_member(
        key: object, member: str, message: str) -> None:
    problems = _problems(_issuer_with(key))
    where = f"t.yaml: document 1: spec.tokens.issuers[0].jwks.keys[0]{member}: "
    assert any(p.startswith(where) and message in p for p in problems), problems
    assert all(len(p) < 300 for p in problems), "a problem must not echo a huge value"


def test_a_jwks_too_large_or_with_a_kid_twice_is_refused() -> None:
    twice = _problems(_issuer_with(_ec_jwk(kid="a"), _ec_jwk(kid="a")))
    assert twice == ["t.yaml: document 1: spec.tokens.issuers[0].jwks.keys[1].kid: 'a' is also the kid of keys[0]"]
    many = _problems(_issuer_with(*[_ec_jwk(kid=f"k{i}") for i in range(101)]))
    assert many == ["t.yaml: document 1: spec.tokens.issuers[0].jwks.keys: holds 101 keys; a JWKS may hold at most 100"]
    huge = _problems(_issuer_with(_ec_jwk(kid="a", comment="x" * 300_000)))
    assert len(huge) == 1 and "jwks: is too large; a JWKS may be at most 262144 bytes" in huge[0]


def test_values_json_cannot_hold_are_problems_not_crashes(tmp_path: Path) -> None:
    (tmp_path / "date.yaml").write_text(yaml.safe_dump(_issuer_with(_ec_jwk(kid="KID"))).replace("KID", "2024-01-01"))
    (tmp_path / "labels.yaml").write_text("apiVersion: tenantgate/v1\nkind: Tenant\n"
                                          "metadata: {id: globex, labels: {1: a, b: c}}\n")
    with pytest.raises(ManifestError) as caught:
        load_manifests([tmp_path])
    date, labels = caught.value.problems
    assert date.startswith(f"{tmp_path / 'date.yaml'}: document 1: spec.tokens.issuers[0].jwks: holds a value JSON "
                           "cannot represent")
    assert labels.startswith(f"{tmp_path / 'labels.yaml'}: document 1: holds a value JSON cannot represent")


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                                     st.text(max_size=20), st.sampled_from(["EC", "RSA", "OKP", "oct", "none", "ES256",
                                                                            "P-256", "Ed25519", "sig", "AQAB"])),
                           lambda children: st.one_of(st.lists(children, max_size=3),
                                                      st.dictionaries(st.text(max_size=5), children, max_size=3)),
                           max_leaves=8)
members = st.sampled_from(["kty", "alg", "use", "kid", "crv", "n", "e", "x", "y", "d", "key_ops"])


@settings(max_examples=300, deadline=None)
@given(changes=st.dictionaries(members, json_values, max_size=4), base=st.sampled_from(["ec", "rsa", "empty"]))
def test_any_jwks_content_is_a_key_or_a_problem_never_an_exception(changes: dict, base: str) -> None:
    key = {"ec": _ec_jwk(), "rsa": {"kty": "RSA", "n": "sXchVAL5Ee0xWpLyTi2RfDzEeNOZC2Xa", "e": "AQAB"},
           "empty": {}}[base]
    try:
        parse_document(_issuer_with({**key, **changes}), "t.yaml: document 1")
    except ManifestError as exc:
        assert all(p.startswith("t.yaml: document 1: spec.tokens.issuers[0].jwks") for p in exc.problems), exc.problems


def _alias_bomb(where: str, levels: int = 7) -> str:
    """A few hundred bytes of YAML that name one list 9**levels times over through aliases."""
    lines = ["defs:", "  - &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"  - &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "\n".join([*lines, "apiVersion: tenantgate/v1", "kind: Tenant", "metadata: {id: bomb}",
                      f"spec: {{{where}}}", ""])


@pytest.mark.parametrize("where", ["retention: *a7", "quotas: {q: {rate: *a7}}", "state: *a7",
                                   "tokens: {issuers: [{issuer: i, audience: a, jwks: {keys: *a7}}]}"])
def test_a_yaml_alias_bomb_is_refused_before_anything_expands_it(where: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest_texts([("bomb.yaml", _alias_bomb(where))])
    assert caught.value.problems == ["bomb.yaml: document 1: larger than 4 MiB once its YAML aliases are expanded"]


def test_yaml_aliases_within_the_size_limit_still_work() -> None:
    text = ("apiVersion: tenantgate/v1\nkind: Tenant\nmetadata: {id: anchors}\nspec:\n"
            "  environments: &envs [dev, prod]\n"
            "  access:\n    roles: {viewer: {allow: ['read:*']}}\n"
            "    bindings: [{subject: 'user:a', roles: [viewer], environments: *envs}]\n")
    [document] = parse_manifest_texts([("anchors.yaml", text)])
    assert document.tenant.environments == ("dev", "prod")


def _rsa_jwk(bits: int, exponent: int = 65537) -> dict:
    from cryptography.hazmat.primitives.asymmetric import rsa

    def b64(number: int) -> str:
        import base64

        return base64.urlsafe_b64encode(number.to_bytes((number.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()

    modulus = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key().public_numbers().n
    return {"kty": "RSA", "alg": "RS256", "kid": "r", "n": b64(modulus), "e": b64(exponent)}


def test_rsa_keys_that_make_every_token_check_slow_are_refused() -> None:
    """A token naming a key is verified before it can be refused, so a key's verification cost is a cost any
    caller can make the server pay."""
    parse_document(_issuer_with(_rsa_jwk(2048)), "t.yaml: document 1")
    where = "t.yaml: document 1: spec.tokens.issuers[0].jwks.keys[0]"
    huge_exponent = _rsa_jwk(2048)
    huge_exponent["e"] = huge_exponent["n"][:-4] + "AAAB"
    assert any(p.startswith(f"{where}.e: ") for p in _problems(_issuer_with(huge_exponent)))
    assert any(p.startswith(f"{where}.n: ") and "1024-bit" in p for p in _problems(_issuer_with(_rsa_jwk(1024))))
