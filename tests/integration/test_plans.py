"""Plans as templates, as users run them: Plan and Tenant manifests applied with the installed `tenantgate` command
(to the store, and through a server's Admin API), and answered by a real server on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from tenantgate.registry.backends import open_store
from tenantgate.registry.ledger import Write
from tenantgate.registry.records import NAMED_TENANTS
from tenantgate.v1 import decision_pb2 as dpb
from tenantgate.v1 import registry_pb2 as pb
from tests.conftest import ADMIN, EXAMPLES, REPO, TENANTGATE, RunningServer, tenant_doc


def tenantgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TENANTGATE, *args], capture_output=True, text=True, timeout=60)


def plan_doc(plan_id: str, rate: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "tenantgate/v1", "kind": "Plan", "metadata": {"id": plan_id},
            "spec": {"features": ["sso"], "quotas": {"api": {"rate": rate}, "users": {"allocation": 5}},
                     "access": {"roles": {"viewer": {"allow": ["read:*"]}}}, **spec}}


VIEWER = {"bindings": [{"subject": "user:alice", "roles": ["viewer"]}]}
TENANTS = [
    tenant_doc("acme", plan="pro", features=["beta"], access=VIEWER),
    tenant_doc("globex", plan="pro", quotas={"users": {"allocation": 50}}),
    tenant_doc("initech", plan="starter"),
]


def write(directory: Path, pro_rate: str = "10/minute", *, with_pro: bool = True) -> Path:
    plans = ([plan_doc("pro", pro_rate)] if with_pro else []) + [plan_doc("starter", "1/minute")]
    (directory / "plans.yaml").write_text(yaml.safe_dump_all(plans))
    (directory / "tenants.yaml").write_text(yaml.safe_dump_all(TENANTS))
    return directory


def consume(server: RunningServer, tenant_id: str, quota: str, amount: int = 0) -> dpb.ConsumeQuotaResponse:
    return server.stub.ConsumeQuota(dpb.ConsumeQuotaRequest(
        tenant_id=tenant_id, items=[dpb.QuotaItem(quota=quota, amount=amount)]), timeout=5)


def synced_to(server: RunningServer, revision: int) -> None:
    """Read-your-writes: a decision made with min_revision waits for the snapshot of the apply."""
    answer = server.stub.CheckAccess(dpb.CheckAccessRequest(tenant_id="acme", subject="user:alice", action="read",
                                                            resource="docs/1", min_revision=revision), timeout=5)
    assert answer.allowed and answer.revision >= revision  # alice's role comes from the plan


def test_plans_end_to_end_through_the_command_and_a_server(
        tmp_path: Path, registry_url: str, start_server: Callable[..., RunningServer]) -> None:
    manifests = write(tmp_path)
    registry = ["--registry", registry_url]
    created = tenantgate("apply", "-f", str(manifests), *registry)
    assert created.returncode == 0, created.stderr
    assert "+ create plan pro\n    tenants on it (2): acme, globex" in created.stdout
    assert "revision 1" in created.stdout
    server = start_server()
    server.wait_synced(1)
    synced_to(server, 1)

    # ResolveTenant and ConsumeQuota answer from the effective spec: the plan's fields under the tenant's own.
    resolved = server.stub.ResolveTenant(dpb.ResolveTenantRequest(tenant_id="acme"), timeout=5)
    assert (resolved.plan, list(resolved.features)) == ("pro", ["sso", "beta"])
    assert consume(server, "acme", "api").results[0].limit == 10
    assert consume(server, "globex", "users").results[0].limit == 50  # its own quota replaces the plan's
    assert consume(server, "acme", "users").results[0].limit == 5
    assert consume(server, "initech", "api").results[0].limit == 1

    # A dry run through the Admin API names every tenant whose effective quotas change, and changes nothing.
    write(manifests, "600/minute")
    admin = ["--registry", f"grpc://{server.admin_target}", "--actor", ADMIN]
    dry = tenantgate("apply", "-f", str(manifests), "--dry-run", *admin)
    assert dry.returncode == 0, dry.stderr
    assert "~ update plan pro\n    ~ spec.quotas.api.rate: 10/minute -> 600/minute\n" in dry.stdout
    assert "effective quotas change for 2 tenant(s): acme, globex" in dry.stdout
    assert "dry run: 0 tenant(s) and 1 plan(s) would change; nothing was applied" in dry.stdout

    # The change: one revision, every tenant on the plan at it, one audit entry that lists them.
    audited = len(_audit(registry_url))
    applied = tenantgate("apply", "-f", str(manifests), *admin)
    assert applied.returncode == 0 and "the registry is at revision 2" in applied.stdout, applied.stderr
    synced_to(server, 2)
    for tenant_id in ("acme", "globex"):
        answer = consume(server, tenant_id, "api", 1)
        assert (answer.allowed, answer.revision, answer.results[0].limit) == (True, 2, 600)
    assert consume(server, "initech", "api").revision == 1  # not on the plan: untouched
    (entry,) = _audit(registry_url)[audited:]
    assert (entry.action, entry.actor) == ("plan.update", ADMIN)
    assert entry.detail == "plan pro; tenants on it (2): acme, globex"

    # A plan still named is not deleted: a clear error, and nothing changes.
    write(manifests, "600/minute", with_pro=False)
    refused = tenantgate("apply", "-f", str(manifests), "--prune", *registry)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "plan 'pro' cannot be deleted: tenants acme, globex still name it in spec.plan" in refused.stderr
    assert [entry.action for entry in _audit(registry_url)[audited:]] == ["plan.update"]  # nothing more


def test_the_admin_api_reports_plans_and_refuses_bad_ones_clearly(
        registry_url: str, start_server: Callable[..., RunningServer]) -> None:
    server = start_server()
    server.wait_synced(0)
    files = [pb.ManifestFile(name="all.yaml", content=yaml.safe_dump_all([plan_doc("pro", "5/second"), *TENANTS]))]
    dry = server.admin.ApplyManifests(pb.ApplyManifestsRequest(files=files, dry_run=True), timeout=10)
    assert [(p.plan_id, p.action, list(p.tenants)) for p in dry.plan_changes] == [("pro", "create", ["acme", "globex"])]
    assert list(dry.warnings) == ["tenant initech names plan 'starter', which no Plan document defines: it keeps "
                                  "its own fields only"]
    applied = server.admin.ApplyManifests(pb.ApplyManifestsRequest(files=files), timeout=10)
    server.wait_synced(applied.revision)
    assert consume(server, "acme", "api").results[0].limit == 5

    bad = plan_doc("pro", "5/fortnight")
    with pytest.raises(grpc.RpcError) as caught:
        server.admin.ApplyManifests(pb.ApplyManifestsRequest(files=[pb.ManifestFile(
            name="bad.yaml", content=yaml.safe_dump(bad))]), timeout=10)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "bad.yaml: document 1: spec.quotas.api.rate: bad rate" in (caught.value.details() or "")
    unbound = plan_doc("pro", "5/second", access={"roles": {}})
    with pytest.raises(grpc.RpcError) as caught:
        server.admin.ApplyManifests(pb.ApplyManifestsRequest(files=[pb.ManifestFile(
            name="roles.yaml", content=yaml.safe_dump(unbound))]), timeout=10)
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "tenant 'acme' binds role 'viewer'" in (caught.value.details() or "")
    assert server.admin.ApplyManifests(pb.ApplyManifestsRequest(files=files, dry_run=True)).revision == applied.revision


def _audit(registry_url: str) -> list[Any]:
    store = open_store(registry_url)
    try:
        return store.audit_entries(limit=1000)
    finally:
        store.close()


def test_the_example_plans_apply_over_the_demo_tenants(registry_path: Path, master_key_file: Path) -> None:
    result = tenantgate("apply", "-f", str(EXAMPLES), "-f", str(REPO / "examples" / "plans"), "--registry",
                        f"sqlite://{registry_path}", "--master-key-file", str(master_key_file))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    for plan, tenants in (("free", "initech"), ("professional", "acme"), ("starter", "globex")):
        assert f"+ create plan {plan}\n    tenants on it (1): {tenants}\n" in result.stdout


def test_a_plan_on_many_tenants_is_applied_through_the_admin_api_in_answers_of_bounded_size(
        tmp_path: Path, registry_url: str, start_server: Callable[..., RunningServer]) -> None:
    """The answer to an apply names the first NAMED_TENANTS tenants of each list and counts them all: it listed
    every tenant on the plan twice, and past 4 MiB a committed apply was reported as failed (RESOURCE_EXHAUSTED)."""
    many = NAMED_TENANTS + 50
    (tmp_path / "tenants.yaml").write_text(yaml.safe_dump_all(
        [plan_doc("pro", "10/minute"), *(tenant_doc(f"t{i:04d}", plan="pro") for i in range(many))]))
    assert tenantgate("apply", "-f", str(tmp_path / "tenants.yaml"), "--registry", registry_url).returncode == 0
    server = start_server()
    server.wait_synced(1)
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan_doc("pro", "20/minute")))
    admin = ["--registry", f"grpc://{server.admin_target}", "--actor", ADMIN]
    first = ", ".join(f"t{i:04d}" for i in range(NAMED_TENANTS))
    for extra in (["--dry-run"], []):
        answer = tenantgate("apply", "-f", str(tmp_path / "plan.yaml"), *extra, *admin)
        assert answer.returncode == 0, answer.stderr
        assert f"    tenants on it ({many}): {first} and 50 more\n" in answer.stdout
        assert f"effective quotas change for {many} tenant(s): {first} and 50 more\n" in answer.stdout
    assert "the change feed (WatchChanges) at revision 2 names every tenant it changed" in answer.stdout
    assert len(answer.stdout) < 3 * NAMED_TENANTS * 8
    (entry,) = [e for e in _audit(registry_url) if e.action == "plan.update"]
    assert entry.detail.endswith(" and 50 more (the change feed at revision 2 names every one)")
    server.wait_synced(2)
    assert consume(server, f"t{many - 1:04d}", "api").results[0].limit == 20


def _older_entries(registry_url: str, *sizes: int) -> None:
    """Ledger entries as an older tenantgate wrote them for a plan on many tenants: one that listed them all."""
    store = open_store(registry_url)
    try:
        for size in sizes:
            with store._backend.transaction(write=True) as tx:  # type: ignore[attr-defined]
                write = Write(tx, "older", time.time())
                write.audit("plan.update", detail="plan pro; tenants on it: " + "t, " * (size // 3))
                write.commit(store._backend)  # type: ignore[attr-defined]
    finally:
        store.close()


def test_the_ledger_is_read_through_the_admin_api_in_pages_that_fit_a_message(
        tmp_path: Path, registry_url: str, start_server: Callable[..., RunningServer]) -> None:
    """Pages of the ledger stop filling at 1 MiB: four 1.5 MB entries of an older version made every page past
    4 MiB, and `audit log` failed while `events export` retried the same page forever. An entry that alone cannot
    travel ends the export with what to do instead."""
    _older_entries(registry_url, *[1_500_000] * 4)
    server = start_server()
    server.wait_synced(4)
    admin = ["--registry", f"grpc://{server.admin_target}", "--actor", ADMIN]
    log = tenantgate("audit", "log", *admin)
    assert log.returncode == 0, log.stderr
    assert [line.split()[0] for line in log.stdout.splitlines()] == ["1", "2", "3", "4"]
    export = tenantgate("events", "export", *admin, "--sink", f"file:{tmp_path / 'events'}", "--once")
    assert export.returncode == 0 and "published 4 audit event(s)" in export.stdout, export.stderr

    _older_entries(registry_url, 5_000_000)
    stuck = tenantgate("events", "export", *admin, "--sink", f"file:{tmp_path / 'events'}", "--once")
    assert stuck.returncode == 2 and "Traceback" not in stuck.stderr
    assert "audit entry 5 is larger than one Admin API message" in stuck.stderr
    assert "export from the registry's store instead" in stuck.stderr
    store_export = tenantgate("events", "export", "--registry", registry_url, "--sink",
                              f"file:{tmp_path / 'events'}", "--once")
    assert store_export.returncode == 0 and "published 1 audit event(s)" in store_export.stdout, store_export.stderr


def test_usage_through_the_admin_api_reports_the_quotas_of_the_tenants_plan(
        tmp_path: Path, registry_url: str, redis_url: str, redis_prefix: str,
        start_server: Callable[..., RunningServer]) -> None:
    assert tenantgate("apply", "-f", str(write(tmp_path)), "--registry", registry_url).returncode == 0
    server = start_server()
    server.wait_synced(1)
    export = tenantgate("events", "export", "--registry", f"grpc://{server.admin_target}", "--actor", ADMIN,
                        "--sink", f"file:{tmp_path / 'events'}", "--counters", redis_url, "--counters-prefix",
                        redis_prefix, "--once")
    assert export.returncode == 0, export.stderr
    usage = {event["subject"]: event["data"]["quotas"] for event in (
        json.loads(line) for line in (tmp_path / "events" / "usage.jsonl").read_text().splitlines())}
    assert {tenant: sorted(quotas) for tenant, quotas in usage.items()} == {
        "acme": ["api", "users"], "globex": ["api", "users"], "initech": ["api", "users"]}
