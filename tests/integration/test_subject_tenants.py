"""ListSubjectTenants and CheckTenantAccess against a real server (and the installed command): bindings, groups,
cross-tenant grants, environments, lifecycle states, tokens, paging, the registry changing underneath, and
hostile requests."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantgate.client import AsyncClient, Client, ClientConfig, HeldRole, Reason, TenantState, Unauthenticated
from tenantgate.registry.records import RegistryStore
from tenantgate.server import tenancy as tenancy_calls
from tenantgate.v1 import decision_pb2 as pb
from tests.conftest import TENANTGATE, Issuer, RunningServer, manifests, tenant_doc
from tests.integration.test_decision_service import violation_field

ROLES = {"admin": {"allow": ["*"]}, "viewer": {"allow": ["read:*"]}}
ALLOWED, CROSS = pb.DECISION_REASON_ALLOWED, pb.DECISION_REASON_CROSS_TENANT_DENIED


def grant(home: str, subject: str) -> dict[str, Any]:
    return {"tenant": home, "subject": subject, "allow": ["read:*"]}


def documents(issuer: Issuer) -> dict[str, dict[str, Any]]:
    return {
        "acme": tenant_doc("acme", environments=["dev", "prod"], tokens={"issuers": [issuer.issuer_spec()]},
                           access={"roles": ROLES, "groups": {"support": ["user:carol"]},
                                   "bindings": [{"subject": "user:alice", "roles": ["admin"]},
                                                {"subject": "user:bob", "roles": ["viewer"], "environments": ["dev"]},
                                                {"subject": "group:support", "roles": ["viewer"]}]}),
        "globex": tenant_doc("globex", environments=["prod"], access={"grants": [grant("acme", "user:alice")]}),
        "hooli": tenant_doc("hooli", state="Suspended", access={"grants": [grant("acme", "user:alice")]}),
        "initech": tenant_doc("initech", state="Draft", access={"grants": [grant("acme", "user:alice")]}),
        "umbrella": tenant_doc("umbrella", state="Archived", access={"grants": [grant("acme", "user:alice")]}),
        "wayne": tenant_doc("wayne", environments=["dev"], access={"grants": [grant("acme", "user:bob"),
                                                                              grant("acme", "user:alice")]}),
    }


def reapplied(issuer: Issuer) -> dict[str, dict[str, Any]]:
    """The documents to apply again: umbrella is Deleted now, and its id can never be used again."""
    found = documents(issuer)
    del found["umbrella"]
    return found


@pytest.fixture
def server(store: RegistryStore, issuer: Issuer, start_server: Callable[..., RunningServer]) -> RunningServer:
    store.apply(manifests(documents(issuer)))
    revision = store.transition("umbrella", "Deleted", force=True).revision
    running = start_server()
    running.wait_synced(revision)
    return running


def listing(server: RunningServer, **fields: Any) -> pb.ListSubjectTenantsResponse:
    return server.stub.ListSubjectTenants(pb.ListSubjectTenantsRequest(**fields), timeout=5)


def rows(response: pb.ListSubjectTenantsResponse) -> list[tuple[str, str, bool, str]]:
    return [(t.tenant_id, pb.TenantState.Name(t.state), t.allowed, pb.DecisionReason.Name(t.reason))
            for t in response.tenants]


def test_a_subject_uses_its_home_by_binding_and_other_tenants_by_their_grants(server: RunningServer) -> None:
    alice = listing(server, subject="user:alice", subject_tenant_id="acme")
    assert alice.reason == ALLOWED and (alice.subject, alice.subject_tenant_id) == ("user:alice", "acme")
    assert rows(alice) == [
        ("acme", "TENANT_STATE_ACTIVE", True, "DECISION_REASON_ALLOWED"),
        ("globex", "TENANT_STATE_ACTIVE", True, "DECISION_REASON_ALLOWED"),
        ("hooli", "TENANT_STATE_SUSPENDED", False, "DECISION_REASON_TENANT_NOT_ACTIVE"),
        ("wayne", "TENANT_STATE_ACTIVE", True, "DECISION_REASON_ALLOWED")]
    assert [(r.role, r.group, list(r.environments)) for r in alice.tenants[0].roles] == [("admin", "", [])]
    assert list(alice.tenants[3].grants) == ["wayne/grants/1"] and alice.next_page_token == ""
    assert alice.revision == server.server.holder.current.revision
    carol = listing(server, subject="user:carol", subject_tenant_id="acme")
    assert [(t.tenant_id, [(r.role, r.group) for r in t.roles]) for t in carol.tenants] == [
        ("acme", [("viewer", "group:support")])]
    # A group is never a subject; isolation: alice of globex is not alice of acme.
    assert listing(server, subject="group:support", subject_tenant_id="acme").tenants == []
    assert listing(server, subject="user:alice", subject_tenant_id="globex").tenants == []


def test_an_environment_counts_the_bindings_that_apply_there(server: RunningServer) -> None:
    bob_anywhere = listing(server, subject="user:bob", subject_tenant_id="acme")
    assert [(t.tenant_id, [list(r.environments) for r in t.roles]) for t in bob_anywhere.tenants] == [
        ("acme", [["dev"]]), ("wayne", [])]
    assert [t.tenant_id for t in listing(server, subject="user:bob", subject_tenant_id="acme",
                                         environment="dev").tenants] == ["acme", "wayne"]
    assert listing(server, subject="user:bob", subject_tenant_id="acme", environment="prod").tenants == []
    assert [t.tenant_id for t in listing(server, subject="user:alice", subject_tenant_id="acme",
                                         environment="prod").tenants] == ["acme", "globex"]


def test_inactive_tenants_on_request_and_deleted_ones_never(server: RunningServer) -> None:
    everything = listing(server, subject="user:alice", subject_tenant_id="acme", include_inactive=True)
    assert [(t.tenant_id, pb.TenantState.Name(t.state)) for t in everything.tenants] == [
        ("acme", "TENANT_STATE_ACTIVE"), ("globex", "TENANT_STATE_ACTIVE"), ("hooli", "TENANT_STATE_SUSPENDED"),
        ("initech", "TENANT_STATE_DRAFT"), ("wayne", "TENANT_STATE_ACTIVE")]
    deleted = server.stub.CheckTenantAccess(pb.CheckTenantAccessRequest(
        tenant_id="umbrella", subject="user:alice", subject_tenant_id="acme"))
    assert (deleted.allowed, deleted.reason, deleted.state) == (
        False, pb.DECISION_REASON_TENANT_NOT_ACTIVE, pb.TENANT_STATE_DELETED)


def test_check_tenant_access_answers_as_the_listing_does(server: RunningServer) -> None:
    def check(tenant: str, subject: str, home: str = "", environment: str = "") -> pb.CheckTenantAccessResponse:
        return server.stub.CheckTenantAccess(pb.CheckTenantAccessRequest(
            tenant_id=tenant, subject=subject, subject_tenant_id=home, environment=environment), timeout=5)

    for subject in ("user:alice", "user:bob", "user:carol", "user:nobody"):
        for environment in ("", "dev", "prod"):
            listed = {t.tenant_id: t for t in listing(server, subject=subject, subject_tenant_id="acme",
                                                      environment=environment).tenants}
            for tenant in ("acme", "globex", "hooli", "initech", "wayne", "umbrella", "nowhere"):
                answer = check(tenant, subject, "acme", environment)
                if tenant in listed:
                    entry = listed[tenant]
                    assert (answer.allowed, answer.reason, answer.state, list(answer.grants), list(answer.roles)) \
                        == (entry.allowed, entry.reason, entry.state, list(entry.grants), list(entry.roles))
                else:
                    assert not answer.allowed, (subject, environment, tenant)
    home = check("acme", "user:alice")  # the home tenant defaults to the tenant
    assert (home.allowed, home.subject_tenant_id, [r.role for r in home.roles]) == (True, "acme", ["admin"])
    assert check("acme", "user:bob", environment="prod").reason == pb.DECISION_REASON_NO_MATCHING_GRANT
    assert check("globex", "user:alice", "acme", "dev").reason == pb.DECISION_REASON_UNKNOWN_ENVIRONMENT
    assert check("globex", "user:bob", "acme").reason == CROSS
    assert check("nowhere", "user:alice", "acme").reason == pb.DECISION_REASON_TENANT_NOT_FOUND


def test_a_token_names_the_subject_and_its_home(server: RunningServer, issuer: Issuer) -> None:
    by_token = listing(server, token=issuer.token("acme", "alice"))
    assert (by_token.subject, by_token.subject_tenant_id) == ("user:alice", "acme")
    assert rows(by_token) == rows(listing(server, subject="user:alice", subject_tenant_id="acme"))
    expired = listing(server, token=issuer.token("acme", "alice", expires_in=-60))
    assert expired.reason == pb.DECISION_REASON_TOKEN_EXPIRED and not expired.tenants
    forged = listing(server, token=Issuer().token("acme", "alice"))
    assert forged.reason == pb.DECISION_REASON_TOKEN_INVALID and forged.detail and not forged.tenants
    checked = server.stub.CheckTenantAccess(pb.CheckTenantAccessRequest(
        tenant_id="globex", token=issuer.token("acme", "alice")))
    assert (checked.allowed, checked.subject, checked.subject_tenant_id) == (True, "user:alice", "acme")
    # A token of acme used as a subject of globex: the token's home is the only one it may name.
    other = listing(server, token=issuer.token("acme", "alice"), subject_tenant_id="globex")
    assert other.reason == pb.DECISION_REASON_TOKEN_INVALID


def test_pages_join_to_the_whole_listing(store: RegistryStore, start_server: Callable[..., RunningServer]) -> None:
    """Small pages (answered on the event loop) join to the listing in one large page (in a worker thread)."""
    grantors = {f"t{i:03d}": tenant_doc(f"t{i:03d}", access={"grants": [grant("home", "user:pat")]})
                for i in range(150)}
    home = tenant_doc("home", access={"roles": ROLES, "bindings": [{"subject": "user:pat", "roles": ["viewer"]}]})
    revision = store.apply(manifests([home, *grantors.values()])).revision
    server = start_server()
    server.wait_synced(revision)
    seen, token, sizes = [], "", []
    while True:
        page = listing(server, subject="user:pat", subject_tenant_id="home", page_size=40, page_token=token)
        seen += [t.tenant_id for t in page.tenants]
        sizes.append(len(page.tenants))
        token = page.next_page_token
        if not token:
            break
    assert seen == ["home", *sorted(grantors)] and sizes == [40, 40, 40, 31]
    whole = listing(server, subject="user:pat", subject_tenant_id="home", page_size=1000)
    assert [t.tenant_id for t in whole.tenants] == seen and whole.next_page_token == ""
    assert [t.tenant_id for t in listing(server, subject="user:pat", subject_tenant_id="home").tenants] == seen[:100]
    first = listing(server, subject="user:pat", subject_tenant_id="home", page_size=10)
    with pytest.raises(grpc.RpcError) as other_question:
        listing(server, subject="user:pat", subject_tenant_id="home", environment="dev",
                page_token=first.next_page_token)
    assert other_question.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violation_field(other_question.value) == "page_token"


def test_a_page_that_may_examine_many_candidates_is_built_off_the_event_loop(
        store: RegistryStore, start_server: Callable[..., RunningServer], monkeypatch: pytest.MonkeyPatch) -> None:
    """What a page may examine decides where it is built, not its page_size: 150 grantors that do not declare prod
    are all examined (and left out) by a page of 10 in prod."""
    grantors = [tenant_doc(f"t{i:03d}", environments=["dev"], access={"grants": [grant("home", "user:pat")]})
                for i in range(150)]
    home = tenant_doc("home", environments=["prod"], access={
        "roles": ROLES, "bindings": [{"subject": "user:pat", "roles": ["viewer"]}]})
    few = tenant_doc("few", environments=["prod"], access={"grants": [grant("home", "user:sam")]})
    revision = store.apply(manifests([home, few, *grantors])).revision
    server = start_server()
    server.wait_synced(revision)
    built_on: list[threading.Thread] = []
    real = tenancy_calls.list_tenants

    def recorded(*args: Any, **options: Any) -> Any:
        built_on.append(threading.current_thread())
        return real(*args, **options)

    monkeypatch.setattr(tenancy_calls, "list_tenants", recorded)
    filtered = listing(server, subject="user:pat", subject_tenant_id="home", environment="prod", page_size=10)
    assert [t.tenant_id for t in filtered.tenants] == ["home"] and filtered.next_page_token == ""
    assert built_on.pop() is not server.thread
    # Few candidates left (after the page token), or few at all: answered on the loop, no thread hop.
    first = listing(server, subject="user:pat", subject_tenant_id="home", page_size=145)
    assert built_on.pop() is not server.thread
    last = listing(server, subject="user:pat", subject_tenant_id="home", page_size=10, page_token=first.next_page_token)
    assert [t.tenant_id for t in last.tenants] == [f"t{i:03d}" for i in range(144, 150)]
    assert built_on.pop() is server.thread
    assert [t.tenant_id for t in listing(server, subject="user:sam", subject_tenant_id="home").tenants] == ["few"]
    assert built_on.pop() is server.thread


@pytest.mark.parametrize(("fields", "field"), [
    ({"subject": "user:alice", "subject_tenant_id": "acme", "page_size": 1001}, "page_size"),
    ({"subject": "user:alice", "subject_tenant_id": "acme", "page_size": 2**32 - 1}, "page_size"),
    ({"subject": "user:alice", "subject_tenant_id": "acme", "page_token": "garbage"}, "page_token"),
    ({"subject": "user:alice", "subject_tenant_id": "acme", "page_token": "A" * 100_000}, "page_token"),
    ({"subject": "user:alice", "subject_tenant_id": "acme", "page_token": "AWFjbWU"}, "page_token"),
    ({"subject": "user:alice", "subject_tenant_id": "acme", "page_token": "é"}, "page_token"),
    ({"subject": "user:alice"}, "subject_tenant_id"),
    ({"subject": "user:alice", "subject_tenant_id": "Not A Tenant"}, "subject_tenant_id"),
    ({"subject": "user:alice", "subject_tenant_id": "acme", "token": "x.y.z"}, "token"),
    ({"subject_tenant_id": "acme"}, "subject"),
    ({"subject": "u" * 257, "subject_tenant_id": "acme"}, "subject"),
    ({"subject": "user:alice", "subject_tenant_id": "acme", "environment": "e" * 64}, "environment"),
    ({"token": "t" * (16 * 1024 + 1)}, "token"),
])
def test_hostile_listings_are_invalid_argument_naming_the_field(server: RunningServer, fields: dict[str, Any],
                                                                field: str) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        listing(server, **fields)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violation_field(refused.value) == field


@pytest.mark.parametrize(("fields", "field"), [
    ({"subject": "user:alice"}, "tenant_id"),
    ({"tenant_id": "../etc", "subject": "user:alice"}, "tenant_id"),
    ({"tenant_id": "acme", "subject": "user:alice", "subject_tenant_id": "x" * 64}, "subject_tenant_id"),
    ({"tenant_id": "acme"}, "subject"),
    ({"tenant_id": "acme", "subject": "user:alice", "token": "x.y.z"}, "token"),
    ({"tenant_id": "acme", "subject": "user:alice", "environment": "e" * 64}, "environment"),
])
def test_hostile_checks_are_invalid_argument_naming_the_field(server: RunningServer, fields: dict[str, Any],
                                                              field: str) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        server.stub.CheckTenantAccess(pb.CheckTenantAccessRequest(**fields), timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violation_field(refused.value) == field


def test_an_unknown_home_tenant_is_not_found(server: RunningServer) -> None:
    with pytest.raises(grpc.RpcError) as unknown:
        listing(server, subject="user:alice", subject_tenant_id="nowhere")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_answers_follow_the_registry_and_wait_for_min_revision(server: RunningServer, store: RegistryStore,
                                                               issuer: Issuer) -> None:
    changed = reapplied(issuer)
    changed["globex"]["spec"]["access"]["grants"] = []
    changed["wayne"]["spec"]["state"] = "Suspended"
    revision = store.apply(manifests(changed)).revision
    fresh = listing(server, subject="user:alice", subject_tenant_id="acme", min_revision=revision)
    assert fresh.revision >= revision
    assert [(t.tenant_id, t.allowed) for t in fresh.tenants] == [("acme", True), ("hooli", False), ("wayne", False)]
    checked = server.stub.CheckTenantAccess(pb.CheckTenantAccessRequest(
        tenant_id="globex", subject="user:alice", subject_tenant_id="acme", min_revision=revision), timeout=5)
    assert checked.reason == CROSS and checked.revision >= revision
    with pytest.raises(grpc.RpcError) as too_new:
        listing(server, subject="user:alice", subject_tenant_id="acme", min_revision=revision + 100)
    assert too_new.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_every_answer_is_exact_for_its_revision_while_the_registry_changes(
        server: RunningServer, store: RegistryStore, issuer: Issuer) -> None:
    """A grant added and removed again and again while listings run: each answer lists globex exactly when the
    revision it names holds the grant, never half a change."""
    with_grant, without = reapplied(issuer), reapplied(issuer)
    without["globex"]["spec"]["access"]["grants"] = []
    granted_at: dict[int, bool] = {server.server.holder.current.revision: True}
    answers: list[tuple[int, bool]] = []
    stop = threading.Event()

    def ask() -> None:
        while not stop.is_set():
            page = listing(server, subject="user:alice", subject_tenant_id="acme")
            answers.append((page.revision, "globex" in [t.tenant_id for t in page.tenants]))

    askers = [threading.Thread(target=ask) for _ in range(4)]
    for asker in askers:
        asker.start()
    try:
        for turn in range(10):
            granted = turn % 2 == 1
            result = store.apply(manifests(with_grant if granted else without))
            granted_at[result.revision] = granted
            server.wait_synced(result.revision)
    finally:
        stop.set()
        for asker in askers:
            asker.join(10)
    assert len({revision for revision, _ in answers}) > 2, "the listings saw too few revisions to tell"
    assert all(granted_at[revision] == listed for revision, listed in answers)


def tenantgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TENANTGATE, *args], capture_output=True, text=True, timeout=60)


def test_the_sdk_lists_checks_and_walks_every_page(server: RunningServer, issuer: Issuer) -> None:
    with Client(ClientConfig(server.target, timeout=5)) as client:
        page = client.list_subject_tenants("user:alice", "acme", page_size=2)
        assert page.reason is Reason.ALLOWED and [t.tenant_id for t in page.tenants] == ["acme", "globex"]
        assert page.tenants[0].roles == (HeldRole("admin"),) and page.tenants[1].grants == ("globex/grants/0",)
        walked = list(client.every_subject_tenant("user:alice", "acme", page_size=1))
        assert [(t.tenant_id, t.state, bool(t), t.reason) for t in walked] == [
            ("acme", TenantState.ACTIVE, True, Reason.ALLOWED), ("globex", TenantState.ACTIVE, True, Reason.ALLOWED),
            ("hooli", TenantState.SUSPENDED, False, Reason.TENANT_NOT_ACTIVE),
            ("wayne", TenantState.ACTIVE, True, Reason.ALLOWED)]
        access = client.check_tenant_access("globex", token=issuer.token("acme", "alice"))
        assert access and (access.subject, access.subject_tenant_id, access.grants) == (
            "user:alice", "acme", ("globex/grants/0",))
        denied = client.check_tenant_access("globex", subject="user:bob", subject_tenant_id="acme")
        assert not denied and denied.reason is Reason.CROSS_TENANT_DENIED
        expired = issuer.token("acme", "alice", expires_in=-60)
        assert client.list_subject_tenants(token=expired).reason is Reason.TOKEN_EXPIRED  # one page: an answer
        with pytest.raises(Unauthenticated):
            list(client.every_subject_tenant(token=expired))  # walking pages: an error


async def test_the_async_sdk_walks_every_page(server: RunningServer) -> None:
    async with AsyncClient(ClientConfig(server.target, timeout=5)) as client:
        walked = [t.tenant_id async for t in client.every_subject_tenant("user:alice", "acme", page_size=3)]
        assert walked == ["acme", "globex", "hooli", "wayne"]
        assert (await client.check_tenant_access("acme", subject="user:carol")).roles == (
            HeldRole("viewer", "group:support"),)


def test_the_command_lists_and_checks(server: RunningServer) -> None:
    target = ["--target", server.target]
    listed = tenantgate("subject-tenants", *target, "--subject", "user:alice", "--subject-tenant", "acme")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].startswith("acme/user:alice at revision ")
    assert lines[1].split() == ["acme", "ACTIVE", "ALLOWED", "admin"]
    assert lines[3].split()[:4] == ["hooli", "SUSPENDED", "DENIED", "(TENANT_NOT_ACTIVE)"]
    assert lines[4].split() == ["wayne", "ACTIVE", "ALLOWED", "wayne/grants/1"]
    paged = tenantgate("subject-tenants", *target, "--subject", "user:alice", "--subject-tenant", "acme",
                       "--page-size", "1", "--all", "--json")
    assert paged.returncode == 0, paged.stderr
    assert [t["tenantId"] for t in json.loads(paged.stdout)["tenants"]] == ["acme", "globex", "hooli", "wayne"]
    one = tenantgate("subject-tenants", *target, "--subject", "user:alice", "--subject-tenant", "acme",
                     "--page-size", "2")
    assert one.stdout.splitlines()[-1].startswith("more: --page-token ")
    allowed = tenantgate("check-tenant", *target, "--tenant", "globex", "--subject", "user:alice",
                         "--subject-tenant", "acme")
    assert allowed.returncode == 0 and allowed.stdout.startswith("ALLOWED (ALLOWED) revision=")
    assert allowed.stdout.rstrip().endswith("globex/grants/0")
    denied = tenantgate("check-tenant", *target, "--tenant", "globex", "--subject", "user:bob",
                        "--subject-tenant", "acme")
    assert denied.returncode == 1 and denied.stdout.startswith("DENIED (CROSS_TENANT_DENIED)")
    refused = tenantgate("subject-tenants", *target, "--subject", "user:alice", "--subject-tenant", "acme",
                         "--page-size", "5000")
    assert refused.returncode == 2 and "INVALID_ARGUMENT: page_size is 5000; the maximum is 1000" in refused.stderr


@pytest.mark.parametrize(("command", "flags", "refused"), [
    ("subject-tenants", ["--page-size", "-1"], "argument --page-size: -1 is not a page size"),
    ("subject-tenants", ["--page-size", str(2**32)], f"argument --page-size: {2**32} is not a page size"),
    ("subject-tenants", ["--page-size", "ten"], "argument --page-size: 'ten' is not a whole number"),
    ("subject-tenants", ["--timeout", "0"], "argument --timeout: 0 is not a deadline"),
    ("check-tenant", ["--timeout", "nan"], "argument --timeout: nan is not a deadline"),
    ("check-tenant", ["--timeout", "1e10"], "argument --timeout: 1e10 is not a deadline"),
    ("subject-tenants", ["--env", "prod\udcff"], "argument --env: 'prod\\udcff' is not valid UTF-8"),
    ("subject-tenants", ["--page-token", "\udcff"], "argument --page-token: '\\udcff' is not valid UTF-8"),
    ("check-tenant", ["--subject-tenant", "\udce9"], "argument --subject-tenant: '\\udce9' is not valid UTF-8"),
])
def test_the_command_refuses_flags_a_request_cannot_carry(server: RunningServer, command: str, flags: list[str],
                                                          refused: str) -> None:
    """Bytes that are not UTF-8 reach a command as surrogates; protobuf refuses them, as it refuses a negative
    uint32: refused before anything is sent, with the flag named, never a traceback."""
    named = ["--tenant", "acme"] if command == "check-tenant" else ["--subject-tenant", "acme"]
    answer = tenantgate(command, "--target", server.target, *named, "--subject", "user:alice", *flags)
    assert answer.returncode == 2 and refused in answer.stderr and "Traceback" not in answer.stderr, answer.stderr


ANSWERS = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.FAILED_PRECONDITION}
text = st.one_of(st.text(max_size=30), st.sampled_from(["", "acme", "globex", "user:alice", "group:support", "dev",
                                                        "a" * 64, "x" * 5000, "\x00", "é" * 30, "../../etc"]))


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(subject=text, home=text, token=text, environment=text, tenant=text, page_token=text,
       page_size=st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 1000, 1001])),
       include_inactive=st.booleans(), min_revision=st.sampled_from([0, 1]))
def test_whatever_arrives_is_answered_with_a_status_never_internal(
        server: RunningServer, subject: str, home: str, token: str, environment: str, tenant: str, page_token: str,
        page_size: int, include_inactive: bool, min_revision: int) -> None:
    calls = [lambda: listing(server, subject=subject, subject_tenant_id=home, token=token, environment=environment,
                             page_size=page_size, page_token=page_token, include_inactive=include_inactive,
                             min_revision=min_revision),
             lambda: server.stub.CheckTenantAccess(pb.CheckTenantAccessRequest(
                 tenant_id=tenant, subject=subject, subject_tenant_id=home, token=token, environment=environment,
                 min_revision=min_revision), timeout=0.5)]
    for call in calls:
        try:
            call()
        except grpc.RpcError as error:
            assert error.code() in ANSWERS, (error.code(), error.details())
