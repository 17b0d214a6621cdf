"""Envoy's ext_authz Check and rate limit ShouldRateLimit, called as Envoy calls them (its generated stubs) on
the decision port of a real server: every row of the mapping, hostile input, and the error statuses that
Envoy's failure modes act on. tests/integration/test_envoy_gateway.py sends real HTTP through a real Envoy."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import wrappers_pb2
from google.rpc import code_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tenantgate.keywrap import MasterKey, tenant_key_factory
from tenantgate.registry.records import RegistryStore
from tests.conftest import Issuer, RunningServer, manifests, tenant_doc

RLS = rls_pb2.RateLimitResponse
ROLES = {"reader": {"allow": ["read:docs/*"]}, "writer": {"allow": ["write:docs/*", "read:*"],
                                                          "deny": ["read:secrets/*"]}}


@pytest.fixture
def server(store: RegistryStore, master_key: MasterKey, issuer: Issuer,
           start_server: Callable[..., RunningServer]) -> RunningServer:
    access = {"roles": ROLES, "bindings": [{"subject": "user:alice", "roles": ["writer"]},
                                           {"subject": "service:billing", "roles": ["reader"]}],
              "grants": [{"tenant": "globex", "subject": "user:gina", "allow": ["read:shared/*"]}]}
    documents = {
        "acme": tenant_doc("acme", environments=["prod"], access=access, tokens={"issuers": [issuer.issuer_spec()]},
                           quotas={"api-requests": {"limit": 3, "period": "day"},
                                   "ai-requests": {"limit": 1, "period": "month"},
                                   "bursty": {"rate": "60/minute", "burst": 5},
                                   "watched": {"limit": 0, "period": "day", "shadow": True}}),
        "globex": tenant_doc("globex", tokens={"issuers": [issuer.issuer_spec()]},
                             access={"bindings": [{"subject": "user:gina", "roles": ["any"]}],
                                     "roles": {"any": {"allow": ["*"]}}}),
        "frozen": tenant_doc("frozen", state="Suspended", quotas={"api-requests": {"limit": 3, "period": "day"}}),
    }
    store.apply(manifests(documents), key_factory=tenant_key_factory(master_key))
    running = start_server(master_key)
    running.wait_synced(1)
    return running


@pytest.fixture
def authz(server: RunningServer) -> Iterator[Any]:
    yield external_auth_pb2_grpc.AuthorizationStub(server.channel)


@pytest.fixture
def ratelimit(server: RunningServer) -> Iterator[Any]:
    yield rls_pb2_grpc.RateLimitServiceStub(server.channel)


def check(authz: Any, path: str = "/docs/a", method: str = "GET", *, token: str = "", principal: str = "",
          headers: dict[str, str] | None = None, **extensions: str) -> external_auth_pb2.CheckResponse:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path = method, path
    http.headers.update(headers or {})
    if token:
        http.headers["authorization"] = f"Bearer {token}"
    request.attributes.source.principal = principal
    request.attributes.context_extensions.update(extensions)
    response: external_auth_pb2.CheckResponse = authz.Check(request, timeout=10)
    return response


def upstream_headers(response: external_auth_pb2.CheckResponse) -> dict[str, str]:
    assert response.status.code == code_pb2.OK, response
    return {option.header.key: option.header.value for option in response.ok_response.headers}


def refusal(response: external_auth_pb2.CheckResponse) -> tuple[int, dict[str, Any], dict[str, str]]:
    assert response.status.code != code_pb2.OK, response
    denied = response.denied_response
    return (denied.status.code, json.loads(denied.body),
            {option.header.key: option.header.value for option in denied.headers})


def test_both_envoy_services_are_listed_by_reflection_on_the_decision_port(server: RunningServer) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    answer = next(iter(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))))
    names = {service.name for service in answer.list_services_response.service}
    assert {"envoy.service.auth.v3.Authorization", "envoy.service.ratelimit.v3.RateLimitService",
            "tenantgate.v1.DecisionService"} <= names


def test_an_allowed_request_names_the_tenant_and_subject_to_the_upstream(authz: Any, issuer: Issuer) -> None:
    response = check(authz, "/docs/a?page=2", token=issuer.token("acme", "alice"),
                     headers={"x-tenant-id": "acme", "x-tenant-subject": "user:root"})
    headers = upstream_headers(response)
    assert headers["x-tenant-id"] == "acme" and headers["x-tenant-subject"] == "user:alice"
    assert headers["x-tenant-subject-tenant"] == "acme" and headers["x-tenantgate-decision-id"]
    # Each replaces what the client sent; the shadow header, not set, is removed.
    assert all(option.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
               for option in response.ok_response.headers)
    assert list(response.ok_response.headers_to_remove) == ["x-tenantgate-shadow-decision"]
    metadata = dict(response.dynamic_metadata)
    assert metadata["decision_id"] == headers["x-tenantgate-decision-id"] and metadata["allowed"] is True
    assert metadata["rule"] == "acme/roles/writer/allow/1" and metadata["revision"] == 1
    assert metadata["reason"] == "ALLOWED" and metadata["mode"] == "enforce"


def test_the_token_names_the_tenant_when_nothing_else_does(authz: Any, issuer: Issuer) -> None:
    headers = upstream_headers(check(authz, "/docs/a", "POST", token=issuer.token("acme", "alice")))
    assert headers["x-tenant-id"] == "acme"
    # The route's tenant wins over the header, which wins over the token.
    code, body, _ = refusal(check(authz, token=issuer.token("acme", "alice"), tenant_id="globex",
                                  headers={"x-tenant-id": "acme"}))
    assert (code, body["reason"]) == (403, "CROSS_TENANT_DENIED")


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("GET", "/docs/a", True), ("HEAD", "/docs/a", True), ("OPTIONS", "/docs/a", True),
    ("POST", "/docs/a", False), ("PUT", "/docs/a", False), ("PATCH", "/docs/a", False),
    ("DELETE", "/docs/a", False), ("GET", "/reports/1", False), ("GET", "//docs/a#top", True)])
def test_the_method_gives_the_action_and_the_path_the_resource(authz: Any, method: str, path: str,
                                                               allowed: bool) -> None:
    response = check(authz, path, method, principal="spiffe://mesh.example/service/billing", tenant_id="acme")
    assert (response.status.code == code_pb2.OK) is allowed, response


def test_route_settings_name_the_action_strip_a_prefix_and_the_environment(authz: Any, issuer: Issuer) -> None:
    token = issuer.token("acme", "alice")
    assert upstream_headers(check(authz, "/api/v1/docs/x", "GET", token=token, strip_prefix="/api/v1"))
    code, body, _ = refusal(check(authz, "/docs/x", "GET", token=token, action="delete"))
    assert (code, body["reason"]) == (403, "NO_MATCHING_GRANT")
    assert upstream_headers(check(authz, "/docs/x", token=token, headers={"x-tenant-environment": "prod"}))
    code, body, _ = refusal(check(authz, "/docs/x", token=token, environment="qa"))
    assert (code, body["reason"]) == (403, "UNKNOWN_ENVIRONMENT")


def test_denials_are_403_with_the_reason_and_decision_id(authz: Any, issuer: Issuer) -> None:
    code, body, headers = refusal(check(authz, "/secrets/k", token=issuer.token("acme", "alice")))
    assert code == 403 and body["reason"] == "EXPLICIT_DENY" and body["allowed"] is False
    assert headers["x-tenantgate-decision-id"] == body["decision_id"]
    assert headers["content-type"] == "application/json"
    code, body, _ = refusal(check(authz, headers={"x-tenant-id": "nobody"}, principal="spiffe://x/service/a"))
    assert (code, body["reason"]) == (403, "TENANT_NOT_FOUND")
    code, body, _ = refusal(check(authz, headers={"x-tenant-id": "frozen"}, principal="spiffe://x/service/a"))
    assert (code, body["reason"]) == (403, "TENANT_NOT_ACTIVE")


def test_missing_invalid_and_expired_tokens_are_401_with_a_bearer_challenge(authz: Any, issuer: Issuer) -> None:
    code, body, headers = refusal(check(authz, headers={"x-tenant-id": "acme"}))
    assert (code, body["reason"], headers["www-authenticate"]) == (401, "UNAUTHENTICATED", "Bearer")
    code, body, headers = refusal(check(authz, headers={"authorization": "Basic YWxhZGRpbjpvcGVu"}))
    assert (code, body["reason"]) == (401, "UNAUTHENTICATED")
    for token in ("not-a-jwt", Issuer().token("acme", "alice"), issuer.token("acme", "alice")[:-4] + "AAAA"):
        # With the tenant named, and without (the token is read first, to find its home): the same answer.
        for named in ({"x-tenant-id": "acme"}, {}):
            code, body, headers = refusal(check(authz, token=token, headers=named))
            assert (code, body["reason"]) == (401, "TOKEN_INVALID")
            assert headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    expired = issuer.token("acme", "alice", expires_in=-60)
    code, body, headers = refusal(check(authz, token=expired))
    assert (code, body["reason"]) == (401, "TOKEN_EXPIRED") and "expired" in headers["www-authenticate"]


def test_cross_tenant_requests_need_a_grant(authz: Any, issuer: Issuer) -> None:
    gina = issuer.token("globex", "gina")
    headers = upstream_headers(check(authz, "/shared/plan", token=gina, headers={"x-tenant-id": "acme"}))
    assert (headers["x-tenant-id"], headers["x-tenant-subject"], headers["x-tenant-subject-tenant"]) == (
        "acme", "user:gina", "globex")
    code, body, _ = refusal(check(authz, "/docs/a", token=gina, headers={"x-tenant-id": "acme"}))
    assert (code, body["reason"]) == (403, "CROSS_TENANT_DENIED")


def test_a_shadow_route_lets_everything_through_and_says_what_it_would_have_done(authz: Any, issuer: Issuer) -> None:
    headers = upstream_headers(check(authz, "/secrets/k", token=issuer.token("acme", "alice"), mode="shadow"))
    assert headers["x-tenantgate-shadow-decision"] == "EXPLICIT_DENY" and headers["x-tenant-subject"] == "user:alice"
    response = check(authz, "/docs/a", mode="shadow", headers={"x-tenant-id": "acme", "x-tenant-subject": "user:x"})
    headers = upstream_headers(response)
    # Nobody was authenticated: not even the tenant the client named goes on.
    assert headers == {"x-tenantgate-shadow-decision": "UNAUTHENTICATED"}
    assert {"x-tenant-subject", "x-tenant-id"} <= set(response.ok_response.headers_to_remove)
    assert dict(response.dynamic_metadata)["mode"] == "shadow"


@pytest.mark.parametrize(("settings", "field"), [
    ({"headers": {"x-tenant-id": "ACME; DROP"}}, "x-tenant-id"),
    ({"headers": {"x-tenant-id": "a" * 5000}}, "x-tenant-id"),
    ({"path": "/" + "a" * 4096}, "path"),
    ({"headers": {"x-tenant-id": "acme", "x-tenant-environment": "e" * 100}}, "x-tenant-environment"),
    ({"action": "x" * 100}, "action"),
])
def test_malformed_requests_are_400_never_an_error_status(authz: Any, issuer: Issuer, settings: dict[str, Any],
                                                          field: str) -> None:
    settings = dict(settings)  # the parameter is shared by the test's SQLite and PostgreSQL runs
    path = settings.pop("path", "/docs/a")
    response = check(authz, path, token=issuer.token("acme", "alice"), **settings)
    code, body, _ = refusal(response)
    assert (code, body["reason"]) == (400, "INVALID_REQUEST") and field in body["detail"]
    assert response.status.code == code_pb2.INVALID_ARGUMENT


def test_a_subject_that_cannot_be_a_header_value_is_percent_encoded(authz: Any, issuer: Issuer) -> None:
    # Manifests only bind well-formed subjects, but a token's subject claim can hold anything: on a shadow route
    # it reaches the upstream even when it matches no binding.
    headers = upstream_headers(check(authz, token=issuer.token("acme", "al\r\nx-admin: 1 ü%"), mode="shadow"))
    assert headers["x-tenant-subject"] == "user:al%0D%0Ax-admin: 1 %C3%BC%25"


def test_a_server_without_a_snapshot_answers_unavailable_for_envoys_failure_mode(
        tmp_path: Path, start_server: Callable[..., RunningServer], issuer: Issuer) -> None:
    running = start_server(registry_url=f"sqlite://{tmp_path / 'never-created.db'}")
    stub = external_auth_pb2_grpc.AuthorizationStub(running.channel)
    with pytest.raises(grpc.RpcError) as raised:
        check(stub, token=issuer.token("acme", "alice"))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as raised:
        rls_pb2_grpc.RateLimitServiceStub(running.channel).ShouldRateLimit(limit_request(("acme", "api-requests")))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    # A shadow route never blocks, even then.
    assert check(stub, token=issuer.token("acme", "alice"), mode="shadow").status.code == code_pb2.OK


def limit_request(*descriptors: tuple[str, str] | tuple[str, str, int], hits: int = 0,
                  extra: tuple[tuple[str, str], ...] = ()) -> rls_pb2.RateLimitRequest:
    request = rls_pb2.RateLimitRequest(domain="tenantgate", hits_addend=hits)
    for described in descriptors:
        descriptor = request.descriptors.add()
        for key, value in (("tenant_id", described[0]), ("quota", described[1]), *extra):
            descriptor.entries.add(key=key, value=value)
        if len(described) == 3:
            descriptor.hits_addend.CopyFrom(wrappers_pb2.UInt64Value(value=described[2]))
    return request


def test_a_window_quota_admits_exactly_its_limit_then_says_when_to_retry(ratelimit: Any) -> None:
    answers = [ratelimit.ShouldRateLimit(limit_request(("acme", "api-requests"))) for _ in range(4)]
    assert [answer.overall_code for answer in answers] == [RLS.OK] * 3 + [RLS.OVER_LIMIT]
    first = answers[0].statuses[0]
    assert (first.code, first.limit_remaining) == (RLS.OK, 2)
    assert (first.current_limit.name, first.current_limit.requests_per_unit) == ("api-requests", 3)
    assert first.current_limit.unit == RLS.RateLimit.DAY and 0 < first.duration_until_reset.seconds <= 86400
    headers = {header.key: header.value for header in answers[3].response_headers_to_add}
    assert headers["ratelimit-policy"] == '"api-requests";q=3;w=86400'
    assert headers["ratelimit"].startswith('"api-requests";r=0;t=')
    assert 0 < int(headers["retry-after"]) <= 86400
    assert json.loads(answers[3].raw_body)["quotas"] == ["api-requests"]


def test_all_descriptors_of_a_request_are_one_all_or_nothing_consume(ratelimit: Any) -> None:
    both = limit_request(("acme", "api-requests"), ("acme", "ai-requests"))
    assert ratelimit.ShouldRateLimit(both).overall_code == RLS.OK
    refused = ratelimit.ShouldRateLimit(both)  # ai-requests is spent: nothing is taken from api-requests
    assert refused.overall_code == RLS.OVER_LIMIT
    assert [status.code for status in refused.statuses] == [RLS.OK, RLS.OVER_LIMIT]
    alone = ratelimit.ShouldRateLimit(limit_request(("acme", "api-requests", 2)))
    assert (alone.overall_code, alone.statuses[0].limit_remaining) == (RLS.OK, 0)


def test_a_quota_named_twice_counts_the_sum(ratelimit: Any) -> None:
    twice = ratelimit.ShouldRateLimit(limit_request(("acme", "api-requests", 2), ("acme", "api-requests", 2)))
    assert twice.overall_code == RLS.OVER_LIMIT  # 4 of a limit of 3: refused whole, nothing spent
    once = ratelimit.ShouldRateLimit(limit_request(("acme", "api-requests", 3)))
    assert (once.overall_code, once.statuses[0].limit_remaining) == (RLS.OK, 0)


def test_amounts_come_from_the_descriptor_then_the_request(ratelimit: Any) -> None:
    assert ratelimit.ShouldRateLimit(limit_request(("acme", "bursty"), hits=4)).statuses[0].limit_remaining == 1
    over = ratelimit.ShouldRateLimit(limit_request(("acme", "bursty", 2), hits=1))
    assert over.overall_code == RLS.OVER_LIMIT
    assert ratelimit.ShouldRateLimit(limit_request(("acme", "bursty", 0))).overall_code == RLS.OK  # a look only
    rate = ratelimit.ShouldRateLimit(limit_request(("acme", "bursty", 1))).statuses[0].current_limit
    assert (rate.requests_per_unit, rate.unit) == (60, RLS.RateLimit.MINUTE)


@pytest.mark.parametrize(("descriptors", "reason"), [
    ((("nobody", "api-requests"),), "TENANT_NOT_FOUND"),
    ((("Not A Tenant", "api-requests"),), "INVALID_REQUEST"),
    ((("frozen", "api-requests"),), "TENANT_NOT_ACTIVE"),
    ((("acme", "api-requests"), ("globex", "api-requests")), "INVALID_REQUEST"),
    ((("acme", "api-requests", 1 << 63),), "INVALID_REQUEST"),
])
def test_a_request_that_cannot_be_counted_is_over_limit_never_ok(ratelimit: Any, descriptors: Any,
                                                                 reason: str) -> None:
    answer = ratelimit.ShouldRateLimit(limit_request(*descriptors))
    assert answer.overall_code == RLS.OVER_LIMIT
    assert all(status.code == RLS.OVER_LIMIT for status in answer.statuses)
    assert json.loads(answer.raw_body)["reason"] == reason


def test_what_tenantgate_does_not_limit_is_ok_without_a_limit(ratelimit: Any) -> None:
    answer = ratelimit.ShouldRateLimit(limit_request(("acme", "undeclared")))
    assert answer.overall_code == RLS.OK and not answer.statuses[0].HasField("current_limit")
    foreign = rls_pb2.RateLimitRequest(descriptors=[ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key="remote_address", value="10.0.0.1")])])
    assert ratelimit.ShouldRateLimit(foreign).overall_code == RLS.OK
    # Mixed with a declared quota, only the declared one counts.
    mixed = ratelimit.ShouldRateLimit(limit_request(("acme", "undeclared"), ("acme", "api-requests"),
                                                    extra=(("path", "/x"),)))
    assert [status.code for status in mixed.statuses] == [RLS.OK, RLS.OK]
    assert mixed.statuses[1].limit_remaining == 2


def test_a_shadow_quota_counts_but_never_limits(ratelimit: Any) -> None:
    answer = ratelimit.ShouldRateLimit(limit_request(("acme", "watched")))
    assert answer.overall_code == RLS.OK and answer.statuses[0].code == RLS.OK


def test_gateway_decisions_share_the_decision_log_and_metrics_of_check_access(
        tmp_path: Path, store: RegistryStore, master_key: MasterKey, issuer: Issuer,
        start_server: Callable[..., RunningServer]) -> None:
    from prometheus_client import REGISTRY

    store.apply(manifests({"solo": tenant_doc("solo", tokens={"issuers": [issuer.issuer_spec()]})}),
                key_factory=tenant_key_factory(master_key))
    path = tmp_path / "decisions.log"
    running = start_server(master_key, decision_log=str(path))
    running.wait_synced(1)
    before = REGISTRY.get_sample_value("tenantgate_decisions_total", {"tenant": "solo", "reason": "NO_MATCHING_GRANT"})
    code, body, _ = refusal(check(external_auth_pb2_grpc.AuthorizationStub(running.channel), "/docs/a", "DELETE",
                                  token=issuer.token("solo", "sam")))
    assert (code, body["reason"]) == (403, "NO_MATCHING_GRANT")
    assert REGISTRY.get_sample_value("tenantgate_decisions_total", {"tenant": "solo", "reason": "NO_MATCHING_GRANT"}
                                     ) == (before or 0) + 1
    assert REGISTRY.get_sample_value("tenantgate_rpcs_handled_total", {"method": "Check", "code": "OK"})
    deadline = time.monotonic() + 5
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, "the decision was not logged"
        time.sleep(0.02)
    (entry,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert (entry["decision_id"], entry["tenant_id"], entry["subject"], entry["action"], entry["resource"],
            entry["reason"]) == (body["decision_id"], "solo", "user:sam", "delete", "docs/a", "NO_MATCHING_GRANT")


def test_a_tenant_this_server_cannot_read_is_refused_with_503_not_left_to_envoys_failure_mode(
        tmp_path: Path, master_key: MasterKey, issuer: Issuer, start_server: Callable[..., RunningServer]) -> None:
    from tests.integration.test_event_loop import break_stored_document, registry_with

    tokens = {"issuers": [issuer.issuer_spec()]}
    path = tmp_path / "registry.db"
    url = registry_with(path, master_key, {"acme": tenant_doc("acme", tokens=tokens),
                                           "globex": tenant_doc("globex", tokens=tokens,
                                                                quotas={"api": {"rate": "10/second"}})})
    break_stored_document(path, "globex")
    running = start_server(master_key, registry_url=url)
    running.wait_synced(1)
    stub = external_auth_pb2_grpc.AuthorizationStub(running.channel)
    # Named by the route, or only by a token (even a forged one, never verified): a refusal, never a gRPC error
    # that failure_mode_allow would let through.
    forged = issuer.token("globex", "mallory")[:-8] + "AAAAAAAA"
    for response in (check(stub, token=issuer.token("acme", "alice"), tenant_id="globex"), check(stub, token=forged)):
        code, body, _ = refusal(response)
        assert (code, body["reason"]) == (503, "TENANT_UNAVAILABLE") and "cannot be loaded" in body["detail"]
        assert response.status.code == code_pb2.UNAVAILABLE
    answer = rls_pb2_grpc.RateLimitServiceStub(running.channel).ShouldRateLimit(limit_request(("globex", "api")))
    assert answer.overall_code == RLS.OVER_LIMIT and json.loads(answer.raw_body)["reason"] == "TENANT_UNAVAILABLE"


def test_a_token_refused_before_any_tenant_is_named_is_still_logged_and_counted(
        tmp_path: Path, store: RegistryStore, master_key: MasterKey,
        start_server: Callable[..., RunningServer]) -> None:
    from prometheus_client import REGISTRY

    store.apply(manifests({"solo": tenant_doc("solo")}), key_factory=tenant_key_factory(master_key))
    path = tmp_path / "decisions.log"
    running = start_server(master_key, decision_log=str(path))
    running.wait_synced(1)
    labels = {"tenant": "_unknown", "reason": "TOKEN_INVALID"}
    before = REGISTRY.get_sample_value("tenantgate_decisions_total", labels) or 0
    code, body, headers = refusal(check(external_auth_pb2_grpc.AuthorizationStub(running.channel),
                                        token=Issuer().token("solo", "sam")))
    assert (code, body["reason"]) == (401, "TOKEN_INVALID")
    assert headers["x-tenantgate-decision-id"] == body["decision_id"]
    assert REGISTRY.get_sample_value("tenantgate_decisions_total", labels) == before + 1
    deadline = time.monotonic() + 5
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, "the refusal was not logged"
        time.sleep(0.02)
    (entry,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert (entry["decision_id"], entry["reason"], entry["resource"]) == (body["decision_id"], "TOKEN_INVALID",
                                                                          "docs/a")


def test_headers_sent_as_a_list_are_read_like_the_map(authz: Any, issuer: Issuer) -> None:
    # Envoy's encode_raw_headers sends header_map instead of headers; a header repeated 50,000 times is read once.
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path = "GET", "/docs/a"
    entries = http.header_map.headers
    entries.add(key="Authorization", raw_value=f"Bearer {issuer.token('acme', 'alice')}".encode())
    entries.add(key="x-tenant-id", value="acme")
    for _ in range(50_000):
        entries.add(key="x-padding", value="x")
    assert upstream_headers(authz.Check(request, timeout=10))["x-tenant-subject"] == "user:alice"
    entries.add(key="x-tenant-id", value="globex")  # two values: joined, as Envoy's map joins them
    code, body, _ = refusal(authz.Check(request, timeout=10))
    assert (code, body["reason"]) == (400, "INVALID_REQUEST") and "x-tenant-id" in body["detail"]


def test_a_query_string_is_not_bounded_as_the_resource_is(authz: Any, issuer: Issuer) -> None:
    assert upstream_headers(check(authz, "/docs/a?q=" + "x" * 5000, token=issuer.token("acme", "alice")))


def test_a_counter_store_outage_is_not_reported_as_an_exhausted_quota(
        store: RegistryStore, master_key: MasterKey, start_server: Callable[..., RunningServer]) -> None:
    quotas = {"strict": {"limit": 5, "period": "day"}, "lenient": {"limit": 5, "period": "day",
                                                                  "on_backend_error": "allow"}}
    store.apply(manifests({"acme": tenant_doc("acme", quotas=quotas)}), key_factory=tenant_key_factory(master_key))
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    running = start_server(master_key, quota_backend=f"redis://127.0.0.1:{closed}/0")
    running.wait_synced(1)
    stub = rls_pb2_grpc.RateLimitServiceStub(running.channel)
    refused = stub.ShouldRateLimit(limit_request(("acme", "strict")))
    assert refused.overall_code == RLS.OVER_LIMIT
    assert json.loads(refused.raw_body)["reason"] == "QUOTA_BACKEND_UNAVAILABLE"
    headers = {header.key for header in refused.response_headers_to_add}
    assert "retry-after" in headers and not headers & {"ratelimit", "ratelimit-policy"}
    allowed = stub.ShouldRateLimit(limit_request(("acme", "lenient")))
    assert allowed.overall_code == RLS.OK and not allowed.response_headers_to_add


def test_too_many_descriptors_are_refused(ratelimit: Any) -> None:
    answer = ratelimit.ShouldRateLimit(limit_request(*[("acme", "api-requests")] * 65))
    assert answer.overall_code == RLS.OVER_LIMIT and len(answer.statuses) == 65
    assert json.loads(answer.raw_body)["reason"] == "INVALID_REQUEST"
