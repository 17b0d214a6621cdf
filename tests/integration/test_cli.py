"""The tenantgate command as a user runs it: apply, dry run, bad manifests, and asking a server."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import yaml

from tenantgate.keywrap import MasterKey
from tenantgate.registry.backends import open_store
from tenantgate.registry.records import RegistryStore
from tenantgate.registry.sqlite import SQLiteStore
from tests.conftest import EXAMPLES, REPO, TENANTGATE, Issuer, RunningServer, manifests, tenant_doc


def tenantgate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TENANTGATE, *args], capture_output=True, text=True, timeout=60,
                          env=env)


def test_apply_dry_run_then_apply_then_nothing_to_do(registry_path: Path, master_key_file: Path) -> None:
    registry = ["--registry", f"sqlite://{registry_path}", "--master-key-file", str(master_key_file)]
    dry = tenantgate("apply", "-f", str(EXAMPLES), "--dry-run", *registry)
    assert dry.returncode == 0, dry.stderr
    assert "+ create tenant acme" in dry.stdout and "nothing was applied" in dry.stdout
    assert SQLiteStore(registry_path).current_revision() == 0
    applied = tenantgate("apply", "-f", str(EXAMPLES), *registry)
    assert applied.returncode == 0 and "revision 1" in applied.stdout
    again = tenantgate("apply", "-f", str(EXAMPLES), *registry)
    assert again.returncode == 0 and "no changes" in again.stdout


def test_a_bad_manifest_is_refused_with_its_location_and_applies_nothing(tmp_path: Path, registry_path: Path) -> None:
    (tmp_path / "good.yaml").write_text("apiVersion: tenantgate/v1\nkind: Tenant\nmetadata: {id: good}\n")
    (tmp_path / "bad.yaml").write_text("apiVersion: tenantgate/v1\nkind: Tenant\nmetadata: {id: bad}\n"
                                       "spec:\n  quotas:\n    api: {rate: 5/fortnight}\n")
    result = tenantgate("apply", "-f", str(tmp_path), "--registry", f"sqlite://{registry_path}")
    assert result.returncode == 2
    assert f"{tmp_path / 'bad.yaml'}: document 1: spec.quotas.api.rate: bad rate" in result.stderr
    assert SQLiteStore(registry_path).current_revision() == 0


def test_a_jwks_key_of_algorithm_none_is_refused_with_its_location_not_a_traceback(
        tmp_path: Path, registry_path: Path, issuer: Issuer) -> None:
    key = issuer.jwks()["keys"][0]
    documents = [tenant_doc(tenant, tokens={"issuers": [{"issuer": issuer.url, "audience": "tenantgate",
                                                         "jwks": {"keys": [{**key, "alg": alg}]}}]})
                 for tenant, alg in (("acme", "none"), ("globex", ["ES256"]))]
    manifest = tmp_path / "tenants.yaml"
    manifest.write_text(yaml.safe_dump_all(documents))
    result = tenantgate("apply", "-f", str(manifest), "--registry", f"sqlite://{registry_path}")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert (f"{manifest}: document 1: spec.tokens.issuers[0].jwks.keys[0].alg: 'none' is not an asymmetric "
            "signing algorithm for EC keys") in result.stderr
    assert f"{manifest}: document 2: spec.tokens.issuers[0].jwks.keys[0].alg: expected a string" in result.stderr
    assert SQLiteStore(registry_path).current_revision() == 0


def test_keys_need_a_master_key(registry_path: Path) -> None:
    result = tenantgate("apply", "-f", str(EXAMPLES), "--registry", f"sqlite://{registry_path}",
                        env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2 and "no master key is configured" in result.stderr


def test_check_prints_the_decision_and_exits_by_it(registry_url: str, master_key_file: Path,
                                                   start_server: Callable[..., RunningServer]) -> None:
    assert tenantgate("apply", "-f", str(EXAMPLES), "--registry", registry_url,
                      "--master-key-file", str(master_key_file)).returncode == 0
    server = start_server()
    server.wait_synced(1)
    target = ["--target", server.target]
    allowed = tenantgate("check", *target, "--tenant", "acme", "--subject", "user:alice", "--action", "read",
                         "--resource", "docs/1")
    assert allowed.returncode == 0 and allowed.stdout.startswith("ALLOWED (ALLOWED) rule=acme/roles/admin/allow/0")
    denied = tenantgate("check", *target, "--tenant", "acme", "--subject", "user:mallory", "--action", "read",
                        "--resource", "docs/1")
    assert denied.returncode == 1 and denied.stdout.startswith("DENIED (NO_MATCHING_GRANT)")
    invalid = tenantgate("check", *target, "--tenant", "acme", "--subject", "user:a", "--action", "",
                         "--resource", "x")
    assert invalid.returncode == 2 and "INVALID_ARGUMENT: action is required" in invalid.stderr
    consumed = tenantgate("consume", *target, "--tenant", "acme", "--quota", "users=3")
    assert consumed.returncode == 0 and "users: ok limit=25 remaining=22" in consumed.stdout
    unknown = tenantgate("consume", *target, "--tenant", "acme", "--quota", "concurrent-requests", "--release",
                         "--lease-id", "nope")
    assert unknown.returncode == 2
    assert "NOT_FOUND: lease 'nope' of quota 'concurrent-requests' is not held" in unknown.stderr, unknown.stderr
    resolved = tenantgate("resolve", *target, "--tenant", "acme")
    assert resolved.returncode == 0 and '"plan": "professional"' in resolved.stdout


def test_the_registry_commands_through_the_admin_api(registry_url: str, master_key: MasterKey,
                                                     start_server: Callable[..., RunningServer]) -> None:
    store = open_store(registry_url)
    store.current_revision()  # a server serves a registry an admin made; it never makes one
    server = start_server(master_key)
    server.wait_synced(0)
    remote = ["--registry", f"grpc://{server.admin_target}", "--actor", "user:ops"]
    applied = tenantgate("apply", "-f", str(EXAMPLES), *remote)  # keys come from the server's master key
    assert applied.returncode == 0, applied.stderr
    assert "+ key data v1" in applied.stdout and "revision 1" in applied.stdout
    moved = tenantgate("tenant", "transition", "acme", "Suspended", *remote)
    assert moved.returncode == 0 and "acme: Active -> Suspended" in moved.stdout
    illegal = tenantgate("tenant", "transition", "acme", "Draft", *remote)
    assert illegal.returncode == 2
    assert "FAILED_PRECONDITION" in illegal.stderr and "Suspended to Draft" in illegal.stderr
    listed = tenantgate("tenant", "list", "--state", "Suspended", *remote)
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["acme", "initech"]
    rotated = tenantgate("keys", "rotate", "acme", "--purpose", "data", *remote)
    assert rotated.returncode == 0 and "acme/data/v2 is the new primary key" in rotated.stdout
    got = tenantgate("tenant", "get", "acme", *remote)
    assert "acme  Suspended" in got.stdout and "key acme/data/v2 AES-256-GCM enabled" in got.stdout
    log = tenantgate("audit", "log", "--tenant", "acme", *remote)
    actions = [line.split()[3] for line in log.stdout.splitlines()]
    assert actions == ["tenant.create", "key.create", "key.create", "tenant.transition", "key.rotate"]
    assert all(line.split()[2] == "user:ops" for line in log.stdout.splitlines())
    # Each change of the tenant's document shows its digests before and after (12 hex digits each).
    digests = {line.split()[3]: line.split()[5] for line in log.stdout.splitlines()}
    created = digests["tenant.create"].removeprefix("none->")
    assert len(created) == 12 and digests["key.create"] == "-"
    before, after = digests["tenant.transition"].split("->")
    assert before == created and after == store.get_tenant("acme").record.digest[:12] != created
    store.close()
    verified = tenantgate("audit", "verify", *remote)
    assert verified.returncode == 0 and "intact" in verified.stdout
    limited = tenantgate("settings", "--max-tenants", "3", *remote)
    assert limited.stdout.strip() == "max_tenants: 3"


def test_the_readme_tour_leaves_acme_active_for_the_mtls_example(registry_path: Path, master_key_file: Path) -> None:
    """The tour's lifecycle commands in the README's order; the mTLS example after them reads a key of acme,
    which only an Active tenant is served."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    tour = readme[readme.index("## A short tour"):readme.index("## Callers and keys")]
    transitions = [line.split("#")[0].split()[1:] for line in tour.splitlines()
                   if line.startswith("tenantgate tenant transition ")]
    assert transitions, "the tour no longer shows lifecycle transitions"
    registry = ["--registry", f"sqlite://{registry_path}", "--master-key-file", str(master_key_file)]
    assert tenantgate("apply", "-f", str(EXAMPLES), *registry).returncode == 0
    for transition in transitions:
        tenantgate(*transition, *registry)  # the tour shows an illegal one refused
    assert tenantgate("tenant", "get", "acme", *registry).stdout.startswith("acme  Active ")


def test_audit_verify_names_the_entry_edited_behind_the_registrys_back(registry_path: Path) -> None:
    registry = ["--registry", f"sqlite://{registry_path}"]
    for plan in ("free", "pro"):
        (registry_path.parent / "m.yaml").write_text(
            f"apiVersion: tenantgate/v1\nkind: Tenant\nmetadata: {{id: acme}}\nspec: {{state: Active, plan: {plan}}}\n")
        assert tenantgate("apply", "-f", str(registry_path.parent / "m.yaml"), *registry).returncode == 0
    assert tenantgate("audit", "verify", *registry).returncode == 0
    db = sqlite3.connect(registry_path)
    db.execute("UPDATE audit SET detail = 'create nothing' WHERE seq = 2")
    db.commit()
    db.close()
    broken = tenantgate("audit", "verify", *registry)
    assert broken.returncode == 1
    assert "BROKEN at entry 2: its content does not match its hash (1 entries before it verified)" in broken.stdout


def test_usage_reports_what_billing_reads(registry_url: str, store: RegistryStore,
                                          start_server: Callable[..., RunningServer]) -> None:
    store.apply(manifests({"acme": tenant_doc("acme", quotas={"jobs": {"limit": 10, "period": "day"},
                                                    "seats": {"allocation": 3}})}))
    server = start_server()
    server.wait_synced(1)
    assert tenantgate("consume", "--target", server.target, "--tenant", "acme", "--quota", "jobs=4").returncode == 0
    assert tenantgate("consume", "--target", server.target, "--tenant", "acme", "--quota", "jobs=7").returncode == 1
    usage = tenantgate("usage", "--tenant", "acme", "--admin", server.admin_target, "--actor", "user:ops")
    assert usage.returncode == 0, usage.stderr
    rows = {line.split()[0]: line.split()[1:] for line in usage.stdout.splitlines()[1:]}
    assert rows == {"jobs": ["4", "7"], "seats": ["0", "0"]}
    unknown = tenantgate("usage", "--tenant", "nobody", "--admin", server.admin_target, "--actor", "user:ops")
    assert unknown.returncode == 2 and "NOT_FOUND" in unknown.stderr


def test_master_key_rotation_and_dev_certificates(tmp_path: Path, registry_path: Path, master_key_file: Path) -> None:
    registry = ["--registry", f"sqlite://{registry_path}"]
    applied = tenantgate("apply", "-f", str(EXAMPLES), *registry, "--master-key-file", str(master_key_file))
    assert applied.returncode == 0
    old = MasterKey.from_file(master_key_file)
    store = SQLiteStore(registry_path)
    before = {(k.tenant_id, k.purpose): old.unwrap(k.wrapped, tenant_id=k.tenant_id, purpose=k.purpose,
                                                   version=k.version) for ks in store.load().keys.values() for k in ks}
    new_file = tmp_path / "new.key"
    assert tenantgate("master-key", str(new_file)).returncode == 0
    rewrapped = tenantgate("keys", "rewrap", "--new-master-key-file", str(new_file), *registry,
                           "--master-key-file", str(master_key_file))
    assert rewrapped.returncode == 0 and "rewrapped 3 keys" in rewrapped.stdout
    new = MasterKey.from_file(new_file)
    after = {(k.tenant_id, k.purpose): new.unwrap(k.wrapped, tenant_id=k.tenant_id, purpose=k.purpose,
                                                  version=k.version) for ks in store.load().keys.values() for k in ks}
    assert after == before
    store.close()
    certs = tenantgate("certs", "dev", "--out", str(tmp_path / "certs"), "--service", "storage")
    assert certs.returncode == 0
    assert {p.name for p in (tmp_path / "certs").iterdir()} == {
        "ca.pem", "server.pem", "server-key.pem", "client-storage.pem", "client-storage-key.pem"}
    assert oct((tmp_path / "certs" / "client-storage-key.pem").stat().st_mode & 0o777) == "0o600"
