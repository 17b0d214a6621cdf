"""Script calls on a Redis Cluster (``redis+cluster://host:port[,host:port...]``, ``rediss+cluster://`` for TLS)
through redis-py's asyncio cluster client.

Every key of one call carries the tenant as its hash tag, so each call runs whole on the primary that owns the
tenant's slot, its idempotency record beside it. A batch is split by node and each node's share goes as one
pipeline, all nodes at once, each under the deadline: a node that fails or stalls fails only the calls for its
slots (answered by each quota's failure policy), never the others. After a failover the client follows the new
slot map (MOVED, then a refresh), and a promoted replica that lacks the script gets it on first use (NOSCRIPT).
The cluster is healthy while every primary answers; a failed node stops counting once it is no longer a primary.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any
from urllib.parse import parse_qs

from redis import exceptions as redis_errors
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tenantgate.counters.scripts import PersistenceReport, ScriptCall, awaitable, missing_script
from tenantgate.errors import ConfigurationError

SCHEMES = ("redis+cluster", "rediss+cluster")
# Replies that say the node cannot serve the call (unreachable, or refusing while the cluster is down), as
# opposed to the script's own errors.
REFRESH_INTERVAL = 0.5
_NODE_FAILURES = (redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.ClusterDownError,
                  redis_errors.SlotNotCoveredError)
# TLS settings a cluster URL may carry as query parameters, passed on to redis-py as they are.
_TLS_PARAMETERS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")


def cluster_settings(url: str) -> dict[str, Any]:
    """redis-py RedisCluster settings from ``redis+cluster://[user:password@]host:port[,host:port...][?tls]``."""
    scheme, _, rest = url.partition("://")
    if scheme not in SCHEMES:
        raise ConfigurationError(f"not a Redis Cluster URL: {url!r}")
    location, _, query = rest.partition("?")
    location, _, path = location.partition("/")
    if path not in ("", "0"):
        raise ConfigurationError(f"Redis Cluster has only database 0, not {path!r}: {url!r}")
    credentials, _, hosts = location.rpartition("@")
    nodes = []
    for address in hosts.split(","):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(f"Redis Cluster node {address!r} is not HOST:PORT in {url!r}")
        nodes.append(ClusterNode(host.strip("[]"), int(port)))
    settings: dict[str, Any] = {"startup_nodes": nodes, "ssl": scheme == "rediss+cluster"}
    if credentials:
        username, _, password = credentials.partition(":")
        settings.update(username=username or None, password=password or None)
    for name, values in parse_qs(query).items():
        if name not in _TLS_PARAMETERS:
            raise ConfigurationError(f"unknown Redis Cluster URL parameter {name!r}; known: "
                                     f"{', '.join(_TLS_PARAMETERS)}")
        settings[name] = values[-1]
    return settings


class ClusterScripts:
    def __init__(self, url: str, *, script: str, timeout: float) -> None:
        # No retries: redis-py retries a pipeline that met a connection error by closing every connection of the
        # client, the other nodes' shares of the batch included. A node that does not answer fails fast instead,
        # the calls for its slots are answered by their failure policy, and the slot map is read again before
        # the next batch (``_refresh``). Redirections (MOVED, ASK) are followed without retries. Slots without a
        # primary (one down, its replica not yet promoted) do not stop the others.
        self._cluster = RedisCluster(**cluster_settings(url), socket_timeout=timeout, socket_connect_timeout=timeout,
                                     retry=Retry(NoBackoff(), 0), require_full_coverage=False)
        self._script = script
        self._sha = hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()
        self._timeout = timeout
        # Nodes whose last batch failed: the cluster is unhealthy while one of them is a primary.
        self._failed: set[str] = set()
        # When the slot map was last read again after a failure (loop time); at most every REFRESH_INTERVAL.
        self._refreshed = 0.0
        self.healthy = True
        self.round_trips = 0

    async def evaluate(self, calls: list[ScriptCall]) -> list[Any]:
        await self._cluster.initialize()
        if self._failed:
            await self._refresh()
        replies: list[Any] = [None] * len(calls)
        by_node: dict[str, tuple[ClusterNode, list[int]]] = {}
        for index, (keys, _) in enumerate(calls):
            try:
                node = self._cluster.get_node_from_key(keys[0])
            except redis_errors.RedisError as exc:  # its slot has no primary now
                replies[index] = exc
                continue
            if node is None:
                replies[index] = redis_errors.RedisError(f"no node serves the slot of {keys[0]!r}")
                continue
            by_node.setdefault(node.name, (node, []))[1].append(index)
        outcomes = await asyncio.gather(*(self._run(node, [calls[i] for i in indexes])
                                          for node, indexes in by_node.values()), return_exceptions=True)
        for (name, (_, indexes)), outcome in zip(by_node.items(), outcomes, strict=True):
            if isinstance(outcome, BaseException):
                self._failed.add(name)
                for index in indexes:
                    replies[index] = outcome
            else:
                self._failed.discard(name)
                for index, reply in zip(indexes, outcome, strict=True):
                    replies[index] = reply
        self.round_trips += len(by_node)
        self.healthy = not self._failed & {node.name for node in self._cluster.get_primaries()}
        return replies

    async def _refresh(self) -> None:
        """Read the slot map again while a node fails, so that calls follow a promoted replica."""
        now = asyncio.get_running_loop().time()
        if now - self._refreshed < REFRESH_INTERVAL:
            return
        self._refreshed = now
        try:
            async with asyncio.timeout(self._timeout):
                await self._cluster.nodes_manager.initialize()
        except (redis_errors.RedisError, OSError):
            pass  # no node answered: the batch fails as it would have, and the next one tries again

    async def _run(self, node: ClusterNode, calls: list[ScriptCall]) -> list[Any]:
        """One node's share of a batch, as one pipeline (routed by key: a call whose slot moved follows it)."""
        for _ in range(2):
            pipeline = self._cluster.pipeline()
            for keys, args in calls:
                pipeline.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)
            async with asyncio.timeout(self._timeout):
                replies: list[Any] = await pipeline.execute(raise_on_error=False)
            for reply in replies:
                if isinstance(reply, _NODE_FAILURES):  # the node, not the call: fail its share of the batch
                    raise reply
            if not any(missing_script(reply) for reply in replies):
                break
            async with asyncio.timeout(self._timeout):
                await self._cluster.execute_command("SCRIPT LOAD", self._script, target_nodes=node)
        return replies

    async def ping(self) -> None:
        await self._cluster.initialize()
        await awaitable(self._cluster.ping(target_nodes=RedisCluster.PRIMARIES))
        self._failed.clear()
        self.healthy = True

    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        found: dict[bytes, bytes] = await awaitable(self._cluster.hgetall(key))
        return found

    async def persistence_settings(self) -> list[PersistenceReport]:
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
        return reports

    async def close(self) -> None:
        await self._cluster.aclose()
