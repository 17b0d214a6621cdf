"""Wiring: the registry store, syncer, engines and servicers of one serving process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import grpc
from envoy.service.auth.v3 import external_auth_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from tenantgate import metrics
from tenantgate.clock import Clock, SystemClock
from tenantgate.config import ServeConfig
from tenantgate.counters import open_counter_store
from tenantgate.engines.access import AccessEngine
from tenantgate.engines.keys import KeyEngine
from tenantgate.engines.quota import QuotaEngine
from tenantgate.engines.tokens import TokenVerifier
from tenantgate.errors import ConfigurationError, TenantgateError
from tenantgate.keywrap import MasterKey, tenant_key_factory
from tenantgate.logs import flush_logs
from tenantgate.registry.backends import open_store
from tenantgate.registry.records import KeyFactory, RegistryStore
from tenantgate.server.admin import RegistryServicer
from tenantgate.server.decider import Decider
from tenantgate.server.decision import DecisionServicer
from tenantgate.server.decisionlog import DecisionLog
from tenantgate.server.envoy.authz import AuthorizationServicer
from tenantgate.server.envoy.ratelimit import RateLimitServicer
from tenantgate.server.handlers import Admission, GenericOnly, service_handler
from tenantgate.server.identity import CallerIdentity
from tenantgate.snapshot import SnapshotHolder
from tenantgate.sync.syncer import Syncer
from tenantgate.v1 import decision_pb2, registry_pb2

log = logging.getLogger("tenantgate.server")
DECISION_SERVICE = decision_pb2.DESCRIPTOR.services_by_name["DecisionService"].full_name
REGISTRY_SERVICE = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
AUTHORIZATION = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"]
RATE_LIMIT = rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"]


QUOTA_BACKEND_HEALTH = "tenantgate.quota_backend"
# SERVING while the process runs, whatever the registry does: for liveness probes, which must not restart a
# server that is merely waiting for its registry.
LIVENESS_HEALTH = "liveness"
# After the last call being handled has finished, seconds the server keeps refusing before the process ends:
# an answer written just before a connection closes with unread calls on it can be lost to the reset that
# the close sends, so the last answers get time to be acknowledged (a retransmission takes 200 ms or more).
RESPONSE_LINGER = 0.5


def _grpc_server(config: ServeConfig, interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> grpc.aio.Server:
    # No interceptors: no argument at all, as before they existed (grpc.aio.server as OpenTelemetry's global
    # instrumentation wraps it fails on interceptors=None in older versions).
    extra = {"interceptors": list(interceptors)} if interceptors else {}
    return grpc.aio.server(
        **extra,
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        options=[
            # One process refuses to share its port silently with another instance; workers share it.
            ("grpc.so_reuseport", 1 if config.workers > 1 else 0),
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
        ],
    )


def _enable_reflection(server: grpc.aio.Server, service_names: tuple[str, ...]) -> None:
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflection.aio.ReflectionServicer(service_names),
                                                               GenericOnly(server))


def _credentials(config: ServeConfig) -> grpc.ServerCredentials | None:
    if not config.tls_cert:
        return None
    try:
        chain = Path(config.tls_cert).read_bytes()
        key = Path(config.tls_key).read_bytes()
        roots = Path(config.client_ca).read_bytes() if config.client_ca else None
    except OSError as exc:
        raise ConfigurationError(f"cannot read a TLS file: {exc}") from None
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=roots, require_client_auth=roots is not None)


def _bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    try:
        port: int = (server.add_secure_port(address, credentials) if credentials is not None
                     else server.add_insecure_port(address))
    except RuntimeError as exc:
        raise ConfigurationError(f"cannot listen on {address}: {exc}") from None
    if port == 0:
        raise ConfigurationError(f"cannot listen on {address} (address in use or not local)")
    return port


class TenantgateServer:
    """One process serving DecisionService (with health and reflection) and, on its own port, the Admin API.

    ``clock`` is the wall clock of everything the server builds that decides by the time: the registry store
    it opens (lifecycle times, retention, scheduled key rotation), the syncer (when the registry was last
    read), max staleness and its metric, quota windows, buckets and leases on the memory backend (Redis counts
    on its own clock), and tokens' iat, nbf and exp, fresh and cached.
    A ``store`` passed in keeps the clock it was opened with.
    Intervals and timeouts (sync polling, drain, probes) run on the event loop's monotonic clock."""

    def __init__(self, config: ServeConfig, master_key: MasterKey | None, store: RegistryStore | None = None,
                 clock: Clock | None = None) -> None:
        self.config = config
        # OpenTelemetry spans for the decision port and the Admin API (not the probes' listener), settled here,
        # first (it may refuse the process's own OpenTelemetry setup) and once: a server without --otel neither
        # imports OpenTelemetry (an optional extra) nor tests for it per call.
        decisions: type[DecisionServicer] = DecisionServicer
        self._interceptors: Sequence[grpc.aio.ServerInterceptor] = ()
        if config.otel:
            from tenantgate.server import tracing

            decisions, self._interceptors = tracing.TracedDecisionServicer, tracing.server_interceptors()
        self.clock = clock or SystemClock()
        self.holder = SnapshotHolder()
        # A server never creates a registry: a missing one is unreachable until `tenantgate apply` makes it.
        self._store = store or open_store(config.registry, create=False, clock=self.clock)
        self.syncer = Syncer(self._store, self.holder, master_key, interval=config.sync_interval, clock=self.clock,
                             snapshot_file=Path(config.snapshot_file) if config.snapshot_file else None,
                             replace_snapshot_file=config.replace_snapshot_file)
        self._counters = open_counter_store(config.quota_backend, prefix=config.quota_prefix,
                                            on_availability=self._quota_backend_changed,
                                            idempotency_cache_size=config.idempotency_cache_size)
        quota = QuotaEngine(self._counters, clock=self.clock, on_backend_error=config.quota_on_backend_error)
        tokens = TokenVerifier(cache_size=config.token_cache_size, clock=self.clock)
        identity = CallerIdentity(trust_metadata=config.trust_caller_metadata,
                                  client_certificates=bool(config.client_ca))
        self._decision_log = (DecisionLog(config.decision_log, sample=config.decision_log_sample)
                              if config.decision_log else None)
        decider = Decider(self.holder, tokens, AccessEngine(tokens), quota, max_staleness=config.max_staleness,
                          clock=self.clock, decision_log=self._decision_log)
        self._decisions = decisions(decider, KeyEngine(), identity)
        self._authorization = AuthorizationServicer(decider)
        self._rate_limits = RateLimitServicer(decider)
        self._key_factory = tenant_key_factory(master_key) if master_key is not None else None
        self._admin = RegistryServicer(self._store, self.holder, self._key_factory, quota, identity,
                                       frozenset(config.admins))
        self.health = health.aio.HealthServicer()
        self.admission = Admission()
        self._draining = False
        self._background: set[asyncio.Future[None]] = set()
        self._quota_available = True
        self._servers: list[grpc.aio.Server] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.port = 0
        self.admin_port = 0
        self.health_port = 0

    async def start(self) -> int:
        """Bind, start serving (NOT_SERVING until the first snapshot) and return the decision port."""
        decision = _grpc_server(self.config, self._interceptors)
        # Envoy's ext_authz and rate limit services share the decision port, its credentials and its drain.
        decision.add_generic_rpc_handlers((
            service_handler(self._decisions, decision_pb2.DESCRIPTOR.services_by_name["DecisionService"],
                            self.admission, serialized=DecisionServicer.SERIALIZED_ANSWERS),
            service_handler(self._authorization, AUTHORIZATION, self.admission),
            service_handler(self._rate_limits, RATE_LIMIT, self.admission)))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, GenericOnly(decision))
        _enable_reflection(decision, (DECISION_SERVICE, AUTHORIZATION.full_name, RATE_LIMIT.full_name,
                                      HEALTH_SERVICE, reflection.SERVICE_NAME))
        for service in ("", DECISION_SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(QUOTA_BACKEND_HEALTH, health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(LIVENESS_HEALTH, health_pb2.HealthCheckResponse.SERVING)
        holder, clock = self.holder, self.clock
        metrics.SNAPSHOT_STALENESS.set_function(
            lambda: max(0.0, clock.now() - holder.confirmed_at) if holder.confirmed_at else 0.0)
        metrics.QUOTA_BACKEND_UP.set(1)
        credentials = _credentials(self.config)
        self.port = _bind(decision, self.config.listen, credentials)
        servers = [decision]
        if self.config.admin_listen:
            admin = _grpc_server(self.config, self._interceptors)
            admin.add_generic_rpc_handlers((service_handler(self._admin, registry_pb2.DESCRIPTOR.services_by_name[
                "RegistryService"], self.admission),))
            _enable_reflection(admin, (REGISTRY_SERVICE, reflection.SERVICE_NAME))
            self.admin_port = _bind(admin, self.config.admin_listen, credentials)
            servers.append(admin)
        if self.config.health_listen:
            # grpc.health.v1 alone, in plaintext, for probes that present no client certificate: the same
            # servicer as the decision port's, so it reports the same statuses (NOT_SERVING while draining).
            probes = _grpc_server(self.config)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, GenericOnly(probes))
            self.health_port = _bind(probes, self.config.health_listen, None)
            servers.append(probes)
        if self.config.metrics_listen:
            from prometheus_client import start_http_server

            host, _, port = self.config.metrics_listen.rpartition(":")
            start_http_server(int(port), addr=host)
        for server in servers:
            await server.start()
        self._servers = servers
        self._tasks = [asyncio.create_task(self.syncer.run()), asyncio.create_task(self._serve_when_synced()),
                       asyncio.create_task(self._probe_quota_backend())]
        if self._key_factory is not None and self.config.key_rotation_interval > 0:
            self._tasks.append(asyncio.create_task(self._rotate_due_keys(self._key_factory)))
        if not self.config.quota_backend.startswith("memory:"):  # Redis: the only other backend
            from tenantgate.counters.redis import RedisCounterStore

            if isinstance(self._counters, RedisCounterStore):  # once, beside serving: never delays start
                self._tasks.append(asyncio.create_task(self._counters.warn_if_not_persistent()))
        log.info("serving DecisionService on %s (port %d)%s%s", self.config.listen, self.port,
                 f", the Admin API on {self.config.admin_listen} (port {self.admin_port})" if self.admin_port else "",
                 f", health for probes on {self.config.health_listen} (port {self.health_port}, plaintext)"
                 if self.health_port else "")
        return self.port

    async def _serve_when_synced(self) -> None:
        await self.holder.wait_for_revision(0, None)
        for service in ("", DECISION_SERVICE):
            if not self._draining:
                await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    def _quota_backend_changed(self, available: bool) -> None:
        """Health (service "tenantgate.quota_backend") and metrics follow the counter backend."""
        self._quota_available = available
        metrics.QUOTA_BACKEND_UP.set(1 if available else 0)
        status = health_pb2.HealthCheckResponse.SERVING if available else health_pb2.HealthCheckResponse.NOT_SERVING
        if available:
            log.warning("the quota backend answers again")
        else:
            log.error("the quota backend is unreachable; quotas are answered by their on_backend_error policy")
        task = asyncio.ensure_future(self.health.set(QUOTA_BACKEND_HEALTH, status))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _probe_quota_backend(self, interval: float = 1.0) -> None:
        """While the backend is down, ask it every second, so recovery shows without waiting for traffic."""
        while True:
            await asyncio.sleep(interval)
            if not self._quota_available:
                await self._counters.ping()

    async def _rotate_due_keys(self, key_factory: KeyFactory) -> None:
        """keys.rotate_every: add a new primary version when the newest is due. The store checks due-ness
        inside its write transaction, so servers sharing a registry rotate each key once."""
        while True:
            await asyncio.sleep(self.config.key_rotation_interval)
            try:
                rotated = await asyncio.to_thread(self._store.rotate_due_keys, key_factory)
            except TenantgateError as exc:
                log.error("scheduled key rotation failed: %s", exc.message)
                continue
            for result in rotated:
                log.info("rotated %s/%s to v%d (keys.rotate_every)", result.key.tenant_id, result.key.purpose,
                         result.key.version)

    async def _report_not_serving(self) -> None:
        """The overall status and DecisionService's turn NOT_SERVING for good (readiness); "liveness" stays
        SERVING while the process runs, so that a liveness probe never kills a server that drains."""
        self._draining = True
        for service in ("", DECISION_SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def drain(self, delay: float, grace: float, cut_short: asyncio.Event | None = None) -> None:
        """Get a process that is about to end ready for it, losing no call.

        Report NOT_SERVING and keep answering for ``delay`` seconds (less if ``cut_short`` is set), while load
        balancers stop sending calls here; then refuse every new call with UNAVAILABLE before it does any
        work, give the calls being handled up to ``grace`` seconds, and keep refusing for RESPONSE_LINGER
        more, so that the last answers reach their callers before the connections close.

        gRPC's own stop is not called: it answers CANCELLED to every call that arrived but that gRPC had not
        yet handed to the application (grpc/grpc#41785), and grpc.aio takes calls one at a time, so under load
        many wait there. The process ends instead (``serve``), and its connections close with it: a call that
        never reached a handler did no work, and its caller sees UNAVAILABLE."""
        loop = asyncio.get_running_loop()
        await self._report_not_serving()
        log.info("shutting down: NOT_SERVING, answering calls for %.1f s more", delay)
        if cut_short is None:
            await asyncio.sleep(delay)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cut_short.wait(), delay)
        self.admission.refuse()
        log.info("refusing new calls (UNAVAILABLE); %d being handled get up to %.1f s",
                 self.admission.in_flight, grace)
        deadline = loop.time() + grace
        while self.admission.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self.admission.in_flight:
            log.warning("%d calls still being handled after the grace period (%.1f s) are cut off",
                        self.admission.in_flight, grace)
        await asyncio.sleep(RESPONSE_LINGER)

    async def stop(self, grace: float | None = None) -> None:
        """Stop within a process that goes on (tests, embedding): report NOT_SERVING, let in-flight calls
        finish within the grace period with gRPC's own stop, then close. Calls that gRPC had received but not
        yet handed to the application are answered CANCELLED: ``serve`` drains without that."""
        await self._report_not_serving()
        period = self.config.grace_period if grace is None else grace
        await asyncio.gather(*(server.stop(period) for server in self._servers))
        await self.close()

    async def close(self) -> None:
        """Stop the background tasks and close the counters, the registry store and the decision log."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._counters.close()
        self._store.close()
        if self._decision_log is not None:
            self._decision_log.close()


async def serve(config: ServeConfig, master_key: MasterKey | None, *,
                on_listening: Callable[[], None] | None = None) -> NoReturn:
    """Serve until SIGTERM or SIGINT, drain (``TenantgateServer.drain``; a SIGINT while draining cuts the drain
    delay short), then end the process with status 0 (1 if closing failed). ``on_listening`` is called once every
    listener is bound (a worker process tells its supervisor so).

    The process ends here, with ``os._exit`` once the logs are written, while the gRPC servers still run:
    returning would let their destructors call gRPC's stop, which answers CANCELLED to the calls queued in
    gRPC (see ``drain``)."""
    server = TenantgateServer(config, master_key)
    await server.start()
    if on_listening is not None:
        on_listening()
    stopping, hurried = asyncio.Event(), asyncio.Event()

    def on_signal(signum: signal.Signals) -> None:
        # Only SIGINT hurries: a worker may get each SIGTERM twice (systemd signals every process of the unit,
        # and the parent passes the signal on), and must not take the second for an operator in a hurry.
        if stopping.is_set() and signum == signal.SIGINT:
            hurried.set()
        stopping.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await stopping.wait()
    code = 0
    try:
        await server.drain(config.drain_delay, config.grace_period, cut_short=hurried)
        await server.close()
        log.info("drained: exiting")
    except Exception:
        log.exception("the shutdown failed")
        code = 1
    try:
        if config.otel:
            from tenantgate.server.tracing import flush_spans

            flush_spans()
        flush_logs()
    finally:
        os._exit(code)
