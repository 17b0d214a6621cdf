from __future__ import annotations

from pathlib import Path

import pytest

from tenantgate.model import CalendarPeriod, QuotaKind, TenantState
from tenantgate.registry.manifest import ManifestError, load_manifests, parse_document
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
        ({"access": {"roles": {"a": {}}}, "bindings": []}, "spec.bindings", "unknown field"),
        ({"environments": ["prod"], "access": {"roles": {"a": {"allow": ["*"]}},
                                               "bindings": [{"subject": "user:x", "roles": ["a"],
                                                             "environments": ["qa"]}]}},
         "spec.access.bindings[0].environments", "unknown environment 'qa'"),
        ({"state": "Paused"}, "spec.state", "not one of"),
        ({"keys": {"readers": ["storage"]}}, "spec.keys.readers[0]", "not a valid caller identity"),
        ({"tokens": {"issuers": [{"issuer": "https://i", "audience": "a",
                                  "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}]}},
         "spec.tokens.issuers[0].jwks.keys[0]", "public signing key"),
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
