"""OpenTelemetry (the ``otel`` extra): an SDK client given ``tenantgate.client.otel``'s interceptors and a server
run with ``otel`` make one trace, the server's span a child of the client's, the server's carrying the tenant and
the decision; without the setting a server makes no span and imports no OpenTelemetry. Spans are read back from
the SDK's in-memory exporter, on the process's global tracer provider, as a deployment's would be."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

pytest.importorskip("opentelemetry.sdk.trace", reason="the otel extra (and opentelemetry-sdk) is not installed")
pytest.importorskip("opentelemetry.instrumentation.grpc", reason="the otel extra is not installed")

from opentelemetry import trace
from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorServer
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tenantgate.client import AsyncClient, Client, ClientConfig, InvalidArgument
from tenantgate.client.otel import aio_client_interceptors, client_interceptors
from tenantgate.config import ServeConfig
from tenantgate.errors import ConfigurationError
from tenantgate.keywrap import MasterKey, tenant_key_factory
from tenantgate.registry.sqlite import SQLiteStore
from tenantgate.server.app import TenantgateServer
from tenantgate.v1 import registry_pb2
from tests.conftest import REPO, RunningServer, manifests, tenant_doc

CHECK_ACCESS = "/tenantgate.v1.DecisionService/CheckAccess"
CONSUME_QUOTA = "/tenantgate.v1.DecisionService/ConsumeQuota"
ACCESS = {"roles": {"reader": {"allow": ["read:docs/*"]}},
          "bindings": [{"subject": "user:bob", "roles": ["reader"]}]}


class Spans(InMemorySpanExporter):
    """The in-memory exporter, with a wait: a server span may end just after its caller has the answer (a
    failed call's status is sent when the handler aborts, before the handler has unwound)."""

    def __init__(self) -> None:
        super().__init__()
        self._exported = threading.Condition()

    def export(self, spans: Sequence[ReadableSpan]) -> Any:
        result = super().export(spans)
        with self._exported:
            self._exported.notify_all()
        return result

    def wait_for(self, count: int, timeout: float = 5.0) -> tuple[ReadableSpan, ...]:
        """The finished spans, once there are ``count``."""
        with self._exported:
            self._exported.wait_for(lambda: len(self.get_finished_spans()) >= count, timeout)
        return tuple(self.get_finished_spans())


@pytest.fixture(scope="module")
def exporter() -> Spans:
    """Every span the process finishes, from now on. The global provider can be set once per process: a test
    run that set an SDK provider before gets the exporter added to it."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    finished = Spans()
    provider.add_span_processor(SimpleSpanProcessor(finished))
    return finished


@pytest.fixture
def spans(exporter: Spans) -> Iterator[Spans]:
    exporter.clear()
    yield exporter
    exporter.clear()


@pytest.fixture
def registry(registry_path: Path, master_key: MasterKey) -> str:
    """A registry holding acme, where user:bob may read docs and a quota admits one call a minute."""
    store = SQLiteStore(registry_path)
    store.apply(manifests({"acme": tenant_doc("acme", access=ACCESS, quotas={"api": {"rate": "1/minute"}})}),
                key_factory=tenant_key_factory(master_key))
    store.close()
    return f"sqlite://{registry_path}"


@pytest.fixture
def start(registry: str, master_key: MasterKey,
          start_server: Callable[..., RunningServer]) -> Callable[..., RunningServer]:
    """``start(**settings)``: a server on ``registry``."""

    def start(**settings: Any) -> RunningServer:
        server = start_server(master_key, registry_url=registry, **settings)
        server.wait_synced(1)
        return server

    return start


def named(finished: Sequence[ReadableSpan], name: str, kind: SpanKind) -> list[ReadableSpan]:
    return sorted((span for span in finished if span.name == name and span.kind is kind),
                  key=lambda span: span.start_time or 0)


def check_one_trace(spans: Spans, parent: trace.Span, decision_ids: list[str]) -> None:
    """The spans of: an allowed and a denied check, an admitted and a refused consume, a malformed check, all
    made inside ``parent`` (6 spans with it): each call a client span under ``parent``, a server span under that."""
    finished = spans.wait_for(11)
    clients = {span.context.span_id: span for span in finished if span.kind is SpanKind.CLIENT}
    servers = [span for span in finished if span.kind is SpanKind.SERVER]
    assert len(clients) == len(servers) == 5, [(span.name, span.kind) for span in finished]
    trace_id = parent.get_span_context().trace_id
    for server in servers:
        assert server.parent is not None and server.parent.is_remote
        client = clients[server.parent.span_id]  # the trace context went with the call
        assert client.name == server.name and client.context.trace_id == server.context.trace_id == trace_id
        assert client.parent is not None and client.parent.span_id == parent.get_span_context().span_id
        assert server.attributes is not None and server.attributes["tenantgate.tenant_id"] == "acme"

    checks = named(finished, CHECK_ACCESS, SpanKind.SERVER)
    assert [(span.attributes or {}).get("tenantgate.decision.reason") for span in checks] == \
        ["ALLOWED", "NO_MATCHING_GRANT", None]
    assert [(span.attributes or {}).get("tenantgate.decision.id") for span in checks[:2]] == decision_ids
    assert [(span.attributes or {}).get("tenantgate.decision.allowed") for span in checks[:2]] == [True, False]
    # The malformed check failed: both ends say so (INVALID_ARGUMENT is the caller's error, not the server's, in
    # OpenTelemetry's conventions), and the server's span still names the tenant.
    failed = named(finished, CHECK_ACCESS, SpanKind.CLIENT)[2]
    assert failed.status.status_code is StatusCode.ERROR
    assert (failed.attributes or {})["rpc.grpc.status_code"] == (checks[2].attributes or {})["rpc.grpc.status_code"] \
        == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    consumes = named(finished, CONSUME_QUOTA, SpanKind.SERVER)
    assert [(span.attributes or {}).get("tenantgate.decision.reason") for span in consumes] == \
        ["ALLOWED", "QUOTA_EXCEEDED"]
    # Health checks (every client watches health) and reflection make no spans.
    assert not [span for span in finished if "grpc.health" in span.name]


def test_a_blocking_client_and_the_server_make_one_trace(start: Callable[..., RunningServer],
                                                         spans: Spans) -> None:
    server = start(otel=True)
    with Client(ClientConfig(server.target), interceptors=client_interceptors()) as client, \
            trace.get_tracer("test").start_as_current_span("handle a request") as parent:
        allowed = client.check_access("acme", "read", "docs/1", subject="user:bob")
        denied = client.check_access("acme", "write", "docs/1", subject="user:bob")
        assert client.consume_quota("acme", {"api": 1}) and not client.consume_quota("acme", {"api": 1})
        with pytest.raises(InvalidArgument):
            client.check_access("acme", "", "docs/1", subject="user:bob")
    assert allowed.allowed and not denied.allowed
    check_one_trace(spans, parent, [allowed.decision_id, denied.decision_id])


async def test_an_asyncio_client_and_the_server_make_one_trace(start: Callable[..., RunningServer],
                                                               spans: Spans) -> None:
    server = start(otel=True)
    async with AsyncClient(ClientConfig(server.target), interceptors=aio_client_interceptors()) as client:
        with trace.get_tracer("test").start_as_current_span("handle a request") as parent:
            allowed = await client.check_access("acme", "read", "docs/1", subject="user:bob")
            denied = await client.check_access("acme", "write", "docs/1", subject="user:bob")
            assert await client.consume_quota("acme", {"api": 1})
            assert not await client.consume_quota("acme", {"api": 1})
            with pytest.raises(InvalidArgument):
                await client.check_access("acme", "", "docs/1", subject="user:bob")
    check_one_trace(spans, parent, [allowed.decision_id, denied.decision_id])


def test_a_server_without_the_setting_makes_no_spans(start: Callable[..., RunningServer],
                                                     spans: Spans) -> None:
    server = start()
    with Client(ClientConfig(server.target), interceptors=client_interceptors()) as client:
        assert client.check_access("acme", "read", "docs/1", subject="user:bob")
    assert [span.kind for span in spans.get_finished_spans()] == [SpanKind.CLIENT]


@pytest.fixture
def instrumented_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """``instrument(excluded_services)``: what opentelemetry-instrument does at a process's start, its grpc
    instrumentation told to leave out ``excluded_services``: every grpc.aio server made afterwards gets the
    instrumentation's own interceptor. Undone at the end."""
    instrumentor = GrpcAioInstrumentorServer()

    def instrument(excluded_services: str) -> None:
        monkeypatch.setenv("OTEL_PYTHON_GRPC_EXCLUDED_SERVICES", excluded_services)
        GrpcAioInstrumentorServer().instrument()  # the instrumentor reads the variable when it is made

    yield instrument
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


def test_one_server_span_per_call_when_the_process_instruments_grpc_aio_itself(
        start: Callable[..., RunningServer], spans: Spans, instrumented_process: Callable[[str], None]) -> None:
    instrumented_process("grpc.health.v1.Health")
    server = start(otel=True)
    with Client(ClientConfig(server.target)) as client:  # health checked: it still answers
        assert client.check_access("acme", "read", "docs/1", subject="user:bob")
    [span] = named(spans.wait_for(1), CHECK_ACCESS, SpanKind.SERVER)
    assert (span.attributes or {})["tenantgate.decision.reason"] == "ALLOWED"
    # The Admin API's stream (an async generator) is traced and still streams.
    changes = server.admin.WatchChanges(registry_pb2.WatchChangesRequest(from_revision=0), timeout=10)
    assert next(changes).tenant_id == "acme"
    changes.cancel()


def test_a_process_instrumentation_that_would_break_health_is_refused(
        registry_path: Path, instrumented_process: Callable[[str], None]) -> None:
    instrumented_process("")
    with pytest.raises(ConfigurationError, match="OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=grpc_aio_server"):
        TenantgateServer(ServeConfig(registry=f"sqlite://{registry_path}", snapshot_file="", otel=True), None)


SERVE_WITH_BATCHED_SPANS = """
import sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
provider = TracerProvider()
# Exported on no schedule within a test: only a flush sends the span.
provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(
    formatter=lambda span: f"{span.name} {dict(span.attributes or {})}\\n"), schedule_delay_millis=600_000))
trace.set_tracer_provider(provider)
from tenantgate.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_spans_still_buffered_when_the_server_stops_are_exported(registry: str) -> None:
    """``serve`` ends with os._exit, which runs no exit hook: the spans a batch processor holds are flushed
    first, or every restart would lose its last seconds of them."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{probe.getsockname()[1]}"
    server = subprocess.Popen([sys.executable, "-c", SERVE_WITH_BATCHED_SPANS, "serve", "--otel", "--registry",
                               registry, "--listen", target, "--admin-listen", "",
                               "--snapshot-file", "", "--drain-delay", "0", "--log-level", "WARNING"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with Client(ClientConfig(target, wait_for_ready=True, timeout=30)) as client:
            assert client.check_access("acme", "read", "docs/1", subject="user:bob")
    finally:
        server.send_signal(signal.SIGTERM)
        out, errors = server.communicate(timeout=30)
    assert server.returncode == 0, errors
    assert f"{CHECK_ACCESS} " in out and "'tenantgate.decision.reason': 'ALLOWED'" in out, out


def test_a_server_without_the_setting_imports_no_opentelemetry(registry: str) -> None:
    """Off, OpenTelemetry costs nothing: not an import, so not a test per call either (the decision port's
    handlers are the same objects as before the setting existed)."""
    script = f"""
import sys
from tests.conftest import RunningServer
from tenantgate.config import ServeConfig
from tenantgate.client import Client
config = ServeConfig(registry="{registry}", listen="127.0.0.1:0", admin_listen="127.0.0.1:0",
                     snapshot_file="", sync_interval=0.05)
server = RunningServer(config, None)
server.wait_synced(1)
with Client(server.target) as client:
    assert client.check_access("acme", "read", "docs/1", subject="user:bob")
server.stop()
print(sorted(name for name in sys.modules if name.startswith("opentelemetry")))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
