"""Wiring: the registry store, syncer, engines and servicers of one serving process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tenantgate.config import ServeConfig
from tenantgate.counters import open_counter_store
from tenantgate.engines.access import AccessEngine
from tenantgate.engines.keys import KeyEngine
from tenantgate.engines.quota import QuotaEngine
from tenantgate.engines.tokens import TokenVerifier
from tenantgate.errors import ConfigurationError
from tenantgate.keywrap import MasterKey
from tenantgate.registry.store import RegistryStore, open_store
from tenantgate.server.decision import DecisionServicer
from tenantgate.snapshot import SnapshotHolder
from tenantgate.sync.syncer import Syncer
from tenantgate.v1 import decision_pb2, decision_pb2_grpc

log = logging.getLogger("tenantgate.server")
DECISION_SERVICE = decision_pb2.DESCRIPTOR.services_by_name["DecisionService"].full_name


class DecisionServer:
    """One process serving DecisionService, health and reflection on one port."""

    def __init__(self, config: ServeConfig, master_key: MasterKey | None, store: RegistryStore | None = None) -> None:
        self.config = config
        self.holder = SnapshotHolder()
        self._store = store or open_store(config.registry_url)
        self.syncer = Syncer(self._store, self.holder, master_key, interval=config.sync_interval)
        self._counters = open_counter_store(config.quota_backend)
        tokens = TokenVerifier(cache_size=config.token_cache_size)
        self._servicer = DecisionServicer(self.holder, tokens, AccessEngine(tokens), QuotaEngine(self._counters),
                                          KeyEngine())
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.port = 0

    async def start(self) -> int:
        """Bind, start serving (NOT_SERVING until the first snapshot) and return the bound port."""
        server = grpc.aio.server(
            maximum_concurrent_rpcs=self.config.max_concurrent_rpcs,
            options=[
                # Refuse to share a port silently with another instance; workers opt in explicitly.
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", self.config.max_message_bytes),
                ("grpc.max_send_message_length", self.config.max_message_bytes),
            ],
        )
        decision_pb2_grpc.add_DecisionServiceServicer_to_server(self._servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (DECISION_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server)
        for service in ("", DECISION_SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            self.port = server.add_insecure_port(self.config.listen)
        except RuntimeError as exc:
            raise ConfigurationError(f"cannot listen on {self.config.listen}: {exc}") from None
        if self.port == 0:
            raise ConfigurationError(f"cannot listen on {self.config.listen} (address in use or not local)")
        await server.start()
        self._server = server
        self._tasks = [asyncio.create_task(self.syncer.run()), asyncio.create_task(self._serve_when_synced())]
        log.info("serving DecisionService on %s (port %d)", self.config.listen, self.port)
        return self.port

    async def _serve_when_synced(self) -> None:
        await self.holder.wait_for_revision(0, None)
        for service in ("", DECISION_SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, let in-flight calls finish within the grace period, then stop."""
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(self.config.grace_period if grace is None else grace)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._counters.close()
        self._store.close()


async def serve(config: ServeConfig, master_key: MasterKey | None) -> None:
    """Serve until SIGTERM or SIGINT, then drain."""
    server = DecisionServer(config, master_key)
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    log.info("shutting down: draining in-flight calls for up to %.1f s", config.grace_period)
    await server.stop()
