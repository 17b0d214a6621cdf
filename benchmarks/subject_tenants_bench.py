"""ListSubjectTenants and CheckTenantAccess with a registry of many tenants (default 100,000).

Each figure beside its baseline from the same run:
- the grant index: a full snapshot build with it (each stored document's grants read, the index built) against
  the same build without it, in seconds and in heap bytes per tenant; one tenant's change applied to the index
  copy-on-write against rebuilding it from every tenant (what an index rebuilt per change would cost); one apply
  that changes a tenth of the tenants, each now granting the same subject, against the same rebuild;
- the roles by subject kept in each compiled tenant: heap per compiled tenant with them against without;
- the engines, in process: list_tenants and check_tenant calls per second against CheckAccess's access check;
- over gRPC, one server process, one blocking caller: ListSubjectTenants and CheckTenantAccess calls per second
  against CheckAccess calls per second, interleaved in rounds.

The tenants are registry_scale.py's (roles, a group, two people, a shared identity provider), with grants: every
10th tenant grants the owner of the next tenant, and every 100th grants the platform tenant's service:auditor
(who so reaches 1% of the registry: a listing of many pages).
Writes benchmarks/results/subject_tenants.json. Usage: python benchmarks/subject_tenants_bench.py [--tenants N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import statistics
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import grpc
from measure import rate
from registry_scale import tenant

from tenantgate import snapshot as snapshot_module
from tenantgate.config import ServeConfig
from tenantgate.engines.access import AccessEngine, AccessRequest
from tenantgate.engines.tenancy import TenantPage, check_tenant, list_tenants
from tenantgate.engines.tokens import TokenVerifier
from tenantgate.membership import EMPTY_INDEX, build_grant_index, members_of, reach_of, with_grant_changes
from tenantgate.registry.backends import open_store
from tenantgate.registry.canonical import canonical_json
from tenantgate.registry.manifest import manifests_from_documents
from tenantgate.registry.records import RegistryState, TenantRecord
from tenantgate.server.app import TenantgateServer
from tenantgate.sharing import EMPTY_MAPPING
from tenantgate.snapshot import Snapshot, SnapshotHolder, compile_all, with_changes
from tenantgate.sync import syncer as syncer_module
from tenantgate.sync.syncer import Syncer
from tenantgate.v1 import decision_pb2 as pb
from tenantgate.v1 import decision_pb2_grpc

RESULTS = Path(__file__).resolve().parent / "results"
AUDITOR = ("t000000", "service:auditor")
SUPPORT = ("t000000", "service:support")
ENVIRONMENTS = ("dev", "prod")  # registry_scale.py's tenants declare these
COMPILED_SAMPLE = 10_000


def document(index: int, tenants: int) -> dict[str, Any]:
    found = tenant(index)
    del found["spec"]["keys"]  # no key material: not what is measured, and applying is faster without
    grants = []
    if index % 10 == 0:
        partner = (index + 1) % tenants
        grants.append({"tenant": f"t{partner:06d}", "subject": f"user:owner{partner}", "allow": ["read:*"]})
    if index % 100 == 0 and index:
        grants.append({"tenant": AUDITOR[0], "subject": AUDITOR[1], "allow": ["read:reports/*"]})
    if grants:
        found["spec"]["access"]["grants"] = grants
    return found


def state_of(tenants: int) -> RegistryState:
    records = {}
    for index in range(tenants):
        text = canonical_json(document(index, tenants))
        records[f"t{index:06d}"] = TenantRecord(f"t{index:06d}", text, "", 1, "Active")
    return RegistryState(1, records, {}, "bench")


@contextmanager
def without_index() -> Iterator[None]:
    """The snapshot as it was before the index: no grants read from documents, no index built."""
    with mock.patch.object(syncer_module, "stored_grants", lambda _text: ([], [])), \
            mock.patch.object(snapshot_module, "build_grant_index", lambda _tenants: EMPTY_INDEX):
        yield


def build(syncer: Syncer, state: RegistryState) -> tuple[Snapshot, float, int]:
    """A full snapshot build: the snapshot, seconds, and the heap it holds."""
    gc.collect()
    tracemalloc.start()
    start = time.perf_counter()
    snapshot = syncer._build(state, stale=False)
    seconds = time.perf_counter() - start
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return snapshot, seconds, held


def timed_builds(syncer: Syncer, state: RegistryState) -> tuple[float, float]:
    """Seconds of a full build with the index and without, untraced (tracemalloc slows allocation): each the best
    of three, taken in turns so that both see the same machine."""
    best = [float("inf"), float("inf")]
    for _ in range(3):
        for turn in (0, 1):
            with without_index() if turn else contextlib.nullcontext():
                gc.collect()
                start = time.perf_counter()
                syncer._build(state, stale=False)
                best[turn] = min(best[turn], time.perf_counter() - start)
    return best[0], best[1]


def traced_heap(operation: Callable[[], object]) -> tuple[object, int]:
    """What ``operation`` returns, and the heap it still holds when it returns."""
    gc.collect()
    tracemalloc.start()
    result = operation()
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return result, held


def compiled_and_members_heap(syncer: Syncer, state: RegistryState) -> tuple[int, int]:
    """Heap held by compiling a sample of the tenants without their members (views of their own, not the ones
    measured later), and by their members (built the way compiling builds them) beside it."""
    views = list(syncer._build(state, stale=False).tenants.values())[:COMPILED_SAMPLE]
    with mock.patch.object(snapshot_module, "members_of", lambda _access: EMPTY_MAPPING):
        _, compiled = traced_heap(lambda: compile_all(views))
    kept, members = traced_heap(lambda: [members_of(view.spec.access) for view in views])
    del kept
    return compiled, members


def median_seconds(operation: Callable[[], object], times: int = 21) -> float:
    samples = []
    for _ in range(times):
        start = time.perf_counter()
        operation()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def in_process(tenants: int) -> dict[str, Any]:
    state = state_of(tenants)
    syncer = Syncer(mock.Mock(), SnapshotHolder(), None)
    with without_index():
        bare, _, bare_heap = build(syncer, state)
    del bare
    snapshot, _, heap = build(syncer, state)
    seconds, bare_seconds = timed_builds(syncer, state)
    compiled, members = compiled_and_members_heap(syncer, state)
    sample = min(COMPILED_SAMPLE, tenants)
    # The index alone, from views already made.
    reaches = [(tenant_id, view.reach) for tenant_id, view in snapshot.tenants.items()]
    index_seconds = min(median_seconds(lambda: build_grant_index(reaches), 3) for _ in range(1))

    # One tenant's change: it now grants the auditor too.
    changed_document = document(7, tenants)
    changed_document["spec"]["access"]["grants"] = [{"tenant": AUDITOR[0], "subject": AUDITOR[1],
                                                     "allow": ["read:*"]}]
    record = TenantRecord("t000007", canonical_json(changed_document), "", 2, "Active")
    view = syncer._view(record, (), {})
    incremental = median_seconds(lambda: with_changes(snapshot, 2, {"t000007": view}, 0.0))
    with mock.patch.object(snapshot_module, "with_grant_changes", lambda index, _changes: index):
        incremental_bare = median_seconds(lambda: with_changes(snapshot, 2, {"t000007": view}, 0.0))
    after = with_changes(snapshot, 2, {"t000007": view}, 0.0)
    assert after.grants.grants(*AUDITOR, "t000007") == (0,)

    # One apply that changes every 10th tenant (after the first): each now grants SUPPORT as well, so one grantee
    # gains a tenth of the registry at once (the index part of with_changes, given each tenant's reach).
    bulk = [(tenant_id, reach, reach_of(tenant_id, [*((h, s) for h, s, _ in reach.grants), SUPPORT], ENVIRONMENTS))
            for tenant_id, reach in reaches[1::10]]
    bulk_seconds = median_seconds(lambda: with_grant_changes(snapshot.grants, bulk), 5)
    bulk_index = with_grant_changes(snapshot.grants, bulk)
    applied = {tenant_id: after for tenant_id, _, after in bulk}
    assert len(bulk_index.granting(*SUPPORT)) == len(bulk)
    assert bulk_index.as_dict() == build_grant_index((t, applied.get(t, r)) for t, r in reaches).as_dict()

    access = AccessEngine(TokenVerifier())
    owner = ("t000121", "user:owner121")
    home = snapshot.tenants[owner[0]]
    home.compile()
    check = AccessRequest("t000121", "read", "docs/readme", owner[1])
    assert access.check(snapshot, check).allowed
    owner_page = list_tenants(snapshot, *owner)
    assert isinstance(owner_page, TenantPage) and [t.tenant_id for t in owner_page.tenants] == ["t000120", "t000121"]
    snapshot.tenants[AUDITOR[0]].compile()
    auditor_page = list_tenants(snapshot, *AUDITOR, limit=100)
    assert isinstance(auditor_page, TenantPage) and len(auditor_page.tenants) == min(100, (tenants - 1) // 100)
    baseline = rate(lambda: access.check(snapshot, check))
    rows = {
        "list_tenants, an owner (home + 1 grant)": rate(lambda: list_tenants(snapshot, *owner)),
        "check_tenant, an owner at home": rate(lambda: check_tenant(snapshot, "t000121", *owner)),
        "check_tenant, across tenants by grant": rate(lambda: check_tenant(snapshot, "t000120", *owner)),
        "list_tenants, the auditor, a page of 100": rate(lambda: list_tenants(snapshot, *AUDITOR, limit=100), 1.0,
                                                         20),
        "list_tenants, the auditor, a page of 1000": rate(lambda: list_tenants(snapshot, *AUDITOR, limit=1000), 1.0,
                                                          2),
    }
    return {
        "grant_index": {
            "grantees": len(snapshot.grants),
            "snapshot_build_seconds": {"with_index": seconds, "without": bare_seconds,
                                       "ratio": seconds / bare_seconds},
            "index_alone_seconds": index_seconds,
            "heap_bytes_per_tenant": {"with_index": heap / tenants, "without": bare_heap / tenants,
                                      "index_and_reach": (heap - bare_heap) / tenants},
            "one_change_seconds": {"with_index": incremental, "without": incremental_bare,
                                   "index_part": incremental - incremental_bare,
                                   "rebuilding_the_index_instead": index_seconds},
            "one_apply_of_many_changes_to_one_grantee": {
                "changed_tenants": len(bulk), "seconds": bulk_seconds,
                "rebuilding_the_index_instead": index_seconds, "ratio": bulk_seconds / index_seconds},
        },
        "members_in_compiled_tenants": {
            "sample": sample,
            "heap_bytes_per_compiled_tenant": {"without_members": compiled / sample,
                                               "members": members / sample,
                                               "ratio_with_to_without": (compiled + members) / compiled},
        },
        "engine_calls_per_second": {
            "baseline": "CheckAccess's access check (engines/access.py), same snapshot",
            "baseline_per_second": baseline,
            "rows": [{"scenario": name, "per_second": value, "ratio_to_baseline": value / baseline}
                     for name, value in rows.items()],
        },
    }


def over_grpc(tenants: int, rounds: int = 5, calls: int = 1000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        url = f"sqlite://{scratch}/registry.db"
        store = open_store(url)
        start = time.perf_counter()
        store.apply(manifests_from_documents(document(i, tenants) for i in range(tenants)))
        apply_seconds = time.perf_counter() - start
        store.close()
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        config = ServeConfig(registry=url, listen="127.0.0.1:0", admin_listen="", snapshot_file="",
                             log_level="WARNING")

        async def serve() -> TenantgateServer:
            server = TenantgateServer(config, None)
            await server.start()
            await server.holder.wait_for_revision(1, 600)
            return server

        server = asyncio.run_coroutine_threadsafe(serve(), loop).result(900)
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        owner = {"subject": "user:owner121", "subject_tenant_id": "t000121"}
        auditor = {"subject": AUDITOR[1], "subject_tenant_id": AUDITOR[0]}
        # name -> (call, calls per round)
        calls_by_name: dict[str, tuple[Callable[[], object], int]] = {
            "CheckAccess": (lambda: stub.CheckAccess(pb.CheckAccessRequest(
                tenant_id="t000121", subject="user:owner121", action="read", resource="docs/readme")), calls),
            "ListSubjectTenants, an owner (home + 1 grant)": (lambda: stub.ListSubjectTenants(
                pb.ListSubjectTenantsRequest(**owner)), calls),
            "CheckTenantAccess, across tenants by grant": (lambda: stub.CheckTenantAccess(
                pb.CheckTenantAccessRequest(tenant_id="t000120", **owner)), calls),
            # The auditor's pages may examine its 999 grantors: made in a worker thread, whatever their size.
            "ListSubjectTenants, the auditor, a page of 100": (lambda: stub.ListSubjectTenants(
                pb.ListSubjectTenantsRequest(**auditor)), calls // 4),
            "ListSubjectTenants, the auditor, a page of 1000": (lambda: stub.ListSubjectTenants(
                pb.ListSubjectTenantsRequest(**auditor, page_size=1000)), calls // 20),
            "ListSubjectTenants, the auditor in an environment no tenant declares (999 examined, none listed)": (
                lambda: stub.ListSubjectTenants(pb.ListSubjectTenantsRequest(**auditor, environment="qa")),
                calls // 4),
        }
        assert len(stub.ListSubjectTenants(pb.ListSubjectTenantsRequest(**owner)).tenants) == 2
        assert not stub.ListSubjectTenants(pb.ListSubjectTenantsRequest(**auditor, environment="qa")).tenants
        per_second: dict[str, list[float]] = {name: [] for name in calls_by_name}
        for call, _ in calls_by_name.values():  # warm: every tenant the calls need compiled
            for _ in range(20):
                call()
        for _ in range(rounds):
            for name, (call, count) in calls_by_name.items():
                start = time.perf_counter()
                for _ in range(count):
                    call()
                per_second[name].append(count / (time.perf_counter() - start))
        channel.close()
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    baseline = statistics.median(per_second["CheckAccess"])
    return {
        "apply_all_seconds": apply_seconds,
        "method": f"one blocking caller on the same machine, {rounds} rounds of {calls} calls each (a quarter of "
                  "that for the auditor's pages of 100, a twentieth for pages of 1000), interleaved, medians",
        "baseline": "CheckAccess", "baseline_per_second": baseline,
        "rows": [{"scenario": name, "per_second": statistics.median(values),
                  "ratio_to_baseline": statistics.median(values) / baseline}
                 for name, values in per_second.items() if name != "CheckAccess"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=100_000)
    parser.add_argument("--no-grpc", action="store_true", help="the in-process figures only")
    args = parser.parse_args()
    report: dict[str, Any] = {"cores": os.cpu_count(), "python": platform.python_version(), "tenants": args.tenants}
    report.update(in_process(args.tenants))
    gc.collect()
    if not args.no_grpc:
        report["grpc"] = over_grpc(args.tenants)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "subject_tenants.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
