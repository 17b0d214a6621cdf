"""Script calls on a Redis Cluster (``redis+cluster://host:port[,host:port...]``, ``rediss+cluster://`` for TLS)
through redis-py's asyncio cluster client.

Every key of one call carries the tenant as its hash tag, so each call runs whole on the primary that owns the
tenant's slot, its idempotency record beside it. Calls are queued by node (a lane each, ``RedisCounterStore``): each
node has its own pipeline in flight, under the deadline, so a node that fails or stalls holds up and fails only
the calls for its slots (answered by each quota's failure policy), never the others. After a failover the client
follows the new slot map (MOVED, and a refresh in the background), and a promoted replica that lacks the script
gets it on first use (NOSCRIPT). The cluster is healthy while every primary answers; a failed node stops counting
once it is no longer a primary.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import parse_qs, unquote

from redis import exceptions as redis_errors
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tenantgate.counters.scripts import (
    CONSUME_SCRIPT,
    PersistenceReport,
    ScriptCall,
    awaitable,
    command_arguments,
    missing_script,
    own_connection,
    send_calls,
)
from tenantgate.errors import ConfigurationError

SCHEMES = ("redis+cluster", "rediss+cluster")
REFRESH_INTERVAL = 0.5
# Replies that say the call did not run on this node and may run elsewhere or later: its slot has moved or is
# moving (a failover, a resharding: MOVED, ASK, TRYAGAIN).
_REDIRECTIONS = (redis_errors.MovedError, redis_errors.AskError, redis_errors.TryAgainError)
# Replies that say the node cannot serve the call (unreachable, or refusing while the cluster is down), as
# opposed to the script's own errors.
_NODE_FAILURES = (redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.ClusterDownError,
                  redis_errors.SlotNotCoveredError)
# TLS settings a cluster URL may carry as query parameters, passed on to redis-py as they are.
_TLS_PARAMETERS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")


def cluster_settings(url: str) -> dict[str, Any]:
    """redis-py RedisCluster settings from ``redis+cluster://[user:password@]host:port[,host:port...][?tls]``."""
    scheme, _, rest = url.partition("://")
    location, _, query = rest.partition("?")
    location, _, path = location.partition("/")
    credentials, _, hosts = location.rpartition("@")
    shown = url.replace(credentials, "***") if credentials else url  # errors never print the password
    if scheme not in SCHEMES:
        raise ConfigurationError(f"not a Redis Cluster URL: {shown!r}")
    if path not in ("", "0"):
        raise ConfigurationError(f"Redis Cluster has only database 0, not {path!r}: {shown!r}")
    nodes = []
    for address in hosts.split(","):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(f"Redis Cluster node {address!r} is not HOST:PORT in {shown!r}")
        nodes.append(ClusterNode(host.strip("[]"), int(port)))
    settings: dict[str, Any] = {"startup_nodes": nodes, "ssl": scheme == "rediss+cluster"}
    if credentials:
        # Percent-encoded, as in redis:// URLs (a password holding "@" or ":").
        username, _, password = credentials.partition(":")
        settings.update(username=unquote(username) or None, password=unquote(password) or None)
    for name, values in parse_qs(query).items():
        if name not in _TLS_PARAMETERS:
            raise ConfigurationError(f"unknown Redis Cluster URL parameter {name!r}; known: "
                                     f"{', '.join(_TLS_PARAMETERS)}")
        settings[name] = values[-1]
    return settings


class ClusterScripts:
    def __init__(self, url: str, *, timeout: float) -> None:
        # No retries: redis-py retries a pipeline that met a connection error by closing every connection of the
        # client, the other nodes' lanes included. A node that does not answer fails fast instead, the calls
        # for its slots are answered by their failure policy, and the slot map is read again in the background
        # (``_refresh``). Redirections (MOVED, ASK) are followed without retries. Slots without a primary (one
        # down, its replica not yet promoted) do not stop the others.
        self._cluster = RedisCluster(**cluster_settings(url), socket_timeout=timeout, socket_connect_timeout=timeout,
                                     retry=Retry(NoBackoff(), 0), require_full_coverage=False)
        self._timeout = timeout
        # Lanes (nodes) whose last batch failed: the cluster is unhealthy while one of them is a primary.
        self._failed: set[str] = set()
        self._refreshing: asyncio.Task[None] | None = None
        # A connection of each lane's own to its node (one pipeline in flight per lane: no pool needed).
        self._connections: dict[str, AbstractConnection] = {}
        self._refreshed = 0.0  # loop time of the last refresh
        self.healthy = True
        self.round_trips = 0

    def lane_of(self, key: str) -> str:
        try:
            node = self._cluster.get_node_from_key(key)
        except (redis_errors.RedisError, redis_errors.RedisClusterException):  # no slot map yet, or no primary
            return ""
        return node.name if node is not None else ""

    async def evaluate(self, lane: str, calls: list[ScriptCall]) -> list[Any]:
        """One pipeline with the lane's calls on a connection of the lane's own to its node. Calls made before
        the slot map was known (the lane "") go through redis-py's cluster pipeline, which follows
        redirections; so do calls whose slot has moved (``_follow``), without holding back the others' replies."""
        try:
            async with asyncio.timeout(self._timeout):
                node = self._cluster.get_node(node_name=lane) if lane else None
                if node is None:
                    # Only here: redis-py's initialize tries the known nodes in turn, a frozen one included.
                    await self._cluster.initialize()
                    replies = await self._pipeline(calls)
                else:
                    replies = await self._on_node(node, calls)
                failure = next((reply for reply in replies if isinstance(reply, _NODE_FAILURES)), None)
                if failure is not None:  # the node, not the script: fail the lane's batch
                    raise failure
        except (redis_errors.RedisError, redis_errors.RedisClusterException, OSError) as exc:
            self._failed.add(lane)
            self._update_health()
            self._refresh_soon()
            if isinstance(exc, (redis_errors.RedisError, OSError)):
                raise
            raise redis_errors.ConnectionError(str(exc)) from exc
        self.round_trips += 1
        if lane in self._failed:
            self._failed.discard(lane)
            self._update_health()
        again = [index for index, reply in enumerate(replies)
                 if isinstance(reply, _REDIRECTIONS) or missing_script(reply)]
        if again:
            await self._follow(calls, replies, again)
        return replies

    async def _follow(self, calls: list[ScriptCall], replies: list[Any], again: list[int]) -> None:
        """Send again, under a deadline of their own, the calls that did not run: their slot moved (they go
        through redis-py, which follows MOVED and ASK and waits out TRYAGAIN), or their node lacked the script
        (a promoted replica: the script is loaded on the nodes that serve those calls' slots). A call that
        still fails gets its error in its place; the lane's other replies are kept."""
        try:
            async with asyncio.timeout(self._timeout):
                for _ in range(2):
                    if any(isinstance(replies[index], _REDIRECTIONS) for index in again):
                        self._refresh_soon()
                    missing = [calls[index][0] for index in again if missing_script(replies[index])]
                    if missing:
                        await self._load_script(missing)
                    for index, reply in zip(again, await self._pipeline([calls[i] for i in again]), strict=True):
                        replies[index] = reply
                    again = [index for index in again
                             if isinstance(replies[index], _REDIRECTIONS) or missing_script(replies[index])]
                    if not again:
                        return
        except (redis_errors.RedisError, redis_errors.RedisClusterException, OSError) as exc:
            for index in again:
                replies[index] = exc

    async def _load_script(self, keys: list[str]) -> None:
        """Loads the script on the nodes that serve ``keys``' slots by the slot map known here, replicas included:
        after a failover that map may still name the old primary, and a call, redirected, reach the replica promoted
        in its place. A node that does not answer is passed over (a call that needs it fails on its own)."""
        serving = self._cluster.nodes_manager.slots_cache
        nodes = {node.name: node for key in keys for node in serving.get(self._cluster.keyslot(key), [])}

        async def load(node: ClusterNode) -> None:
            with contextlib.suppress(redis_errors.RedisError, redis_errors.RedisClusterException, OSError):
                await self._cluster.execute_command("SCRIPT LOAD", CONSUME_SCRIPT, target_nodes=node)

        if nodes:
            await asyncio.gather(*(load(node) for node in nodes.values()))
        else:
            await self._cluster.execute_command("SCRIPT LOAD", CONSUME_SCRIPT, target_nodes=RedisCluster.PRIMARIES)

    async def _on_node(self, node: ClusterNode, calls: list[ScriptCall]) -> list[Any]:
        connection = self._connections.get(node.name)
        if connection is None:
            connection = self._connections[node.name] = own_connection(node.connection_class, node.connection_kwargs)
        return await send_calls(connection, calls)

    async def _pipeline(self, calls: list[ScriptCall]) -> list[Any]:
        pipeline = self._cluster.pipeline()
        for _, command in calls:
            # execute_command: redis-py's cluster pipeline refuses its evalsha method, not the command.
            pipeline.execute_command(*command_arguments(command))
        replies: list[Any] = await pipeline.execute(raise_on_error=False)
        return replies

    def _update_health(self) -> None:
        primaries = {node.name for node in self._cluster.get_primaries()}
        self.healthy = not (self._failed & primaries or "" in self._failed)

    def _refresh_soon(self) -> None:
        """Read the slot map again in the background (at most every REFRESH_INTERVAL), so that calls follow a
        promoted replica without waiting for one to fail first."""
        now = asyncio.get_running_loop().time()
        if (self._refreshing is not None and not self._refreshing.done()) or now - self._refreshed < REFRESH_INTERVAL:
            return
        self._refreshed = now
        self._refreshing = asyncio.ensure_future(self._refresh())

    async def _refresh(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._cluster.nodes_manager.initialize()
        except (redis_errors.RedisError, redis_errors.RedisClusterException, OSError):
            return  # no node answered: the next failure tries again
        self._update_health()
        # Connections to nodes the cluster no longer has (replaced machines) are closed, not kept for ever.
        known = {node.name for node in self._cluster.get_nodes()}
        for name in [name for name in self._connections if name not in known]:
            await self._connections.pop(name).disconnect(nowait=True)

    async def ping(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._cluster.initialize()
                await awaitable(self._cluster.ping(target_nodes=RedisCluster.PRIMARIES))
        except redis_errors.RedisClusterException as exc:
            raise redis_errors.ConnectionError(str(exc)) from exc
        self._failed.clear()
        self.healthy = True

    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        try:
            async with asyncio.timeout(self._timeout):
                found: dict[bytes, bytes] = await awaitable(self._cluster.hgetall(key))
        except redis_errors.RedisClusterException as exc:
            raise redis_errors.ConnectionError(str(exc)) from exc
        return found

    async def persistence_settings(self) -> list[PersistenceReport]:
        try:
            await self._cluster.initialize()
            reports: list[PersistenceReport] = []
            for node in self._cluster.get_primaries():
                try:
                    settings = {**await awaitable(self._cluster.config_get("appendonly", target_nodes=node)),
                                **await awaitable(self._cluster.config_get("save", target_nodes=node))}
                    reports.append((node.name, settings, None))
                except redis_errors.ResponseError:  # CONFIG disabled or not permitted
                    reports.append((node.name, None, await awaitable(self._cluster.info("persistence",
                                                                                         target_nodes=node))))
        except redis_errors.RedisClusterException as exc:
            raise redis_errors.ConnectionError(str(exc)) from exc
        return reports

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        for connection in self._connections.values():
            await connection.disconnect()
        await self._cluster.aclose()
