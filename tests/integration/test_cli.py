"""The tenantgate command as a user runs it: apply, dry run, bad manifests, and asking a server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tenantgate.registry.sqlite import SQLiteStore
from tests.conftest import EXAMPLES, RunningServer


def tenantgate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tenantgate", *args], capture_output=True, text=True, timeout=60,
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
    resolved = tenantgate("resolve", *target, "--tenant", "acme")
    assert resolved.returncode == 0 and '"plan": "professional"' in resolved.stdout
