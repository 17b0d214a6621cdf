"""Counters in Redis or a Redis Cluster: exact across processes and replicas.

Each ConsumeQuota call is one call of a Lua script (``lua/consume.lua``) that evaluates every item and
applies all or none, on the Redis server's clock. The script is the quota algorithms' second implementation:
the memory store runs the same algorithms in Python, and ``tests/integration/test_quota_equivalence.py`` holds the
two to the same answers. Calls made concurrently in one process are sent together: one pipeline, one round trip
for many consumes (on a cluster, one per node, all at once). How a batch reaches Redis is the transport's
(``redis_node``, ``redis_cluster``); the rest is written once here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from tenantgate.counters.redis_cluster import SCHEMES as CLUSTER_SCHEMES
from tenantgate.counters.redis_cluster import ClusterScripts
from tenantgate.counters.redis_node import NodeScripts
from tenantgate.counters.scripts import ScriptTransport
from tenantgate.engines.quota import CounterOp, CounterResult, Idempotency, unknown_lease
from tenantgate.errors import Aborted, StorageError
from tenantgate.model import QuotaKind

log = logging.getLogger("tenantgate.counters")
FORGETS = ("when it restarts it forgets every counter and admits each limit again; configure AOF (appendonly yes) "
           "or RDB snapshots (save), see \"Deploying\" in the README")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def persistence_problem(settings: Mapping[Any, Any] | None, info: Mapping[str, Any] | None = None,
                        server: str = "") -> str | None:
    """Why a Redis (``server``, of a cluster) keeps no counters across its restarts, or None when it keeps them
    on disk.

    ``settings``: what CONFIG GET answers for appendonly and save; None where CONFIG is refused (managed
    Redis, ACLs), and then ``info``, what INFO persistence answers, which shows whether AOF is on but not
    the RDB schedule, only whether a snapshot has been made since Redis started."""
    redis = f"Redis {server}" if server else "Redis"
    if settings is not None:
        values = {_text(name): _text(value) for name, value in settings.items()}
        if values.get("appendonly") == "yes" or values.get("save", "").strip():
            return None
        return f"the quota backend {redis} keeps nothing on disk (appendonly no, save \"\"): {FORGETS}"
    if info is None:
        return None
    if str(info.get("aof_enabled", "0")) == "1":
        return None
    if int(info.get("rdb_saves", 0)) > 0 or int(info.get("rdb_last_bgsave_time_sec", -1)) != -1:
        return None
    return (f"the quota backend {redis} reports AOF off and no RDB snapshot since it started (INFO persistence; "
            f"CONFIG is refused, so its snapshot schedule is unknown): if it keeps nothing on disk, {FORGETS}")


@dataclass(slots=True)
class _Lane:
    """The calls waiting for one Redis server, and the one pipeline sent to it and not yet answered."""

    name: str
    queue: list[tuple[list[str], list[Any], asyncio.Future[Any]]] = field(default_factory=list)
    flushing: bool = False
    in_flight: asyncio.Future[None] | None = None


def _transport(url: str, timeout: float) -> ScriptTransport:
    if url.partition("://")[0] in CLUSTER_SCHEMES:
        return ClusterScripts(url, timeout=timeout)
    return NodeScripts(url, timeout=timeout)


class RedisCounterStore:
    def __init__(self, url: str, *, prefix: str = "tg:", timeout: float = 1.0,
                 on_availability: Callable[[bool], None] | None = None, time_from_caller: bool = False) -> None:
        """``time_from_caller``, for tests only: the script counts at the ``now`` each consume is given (the
        engine's clock, a fake one in tests) instead of the Redis server's clock. Servers never set it: their
        processes' clocks differ, the server's is the one they share. Redis still drops keys on its own clock, at
        moments computed from the time given: a fake time earlier than the server's has keys dropped at once."""
        self._transport = _transport(url, timeout)
        self._time_from_caller = time_from_caller
        self._timeout = timeout
        self._prefix = prefix
        # One lane per Redis server (one in all for a single Redis): a stalled node holds up its own calls only.
        self._lanes: dict[str, _Lane] = {}
        self._on_availability = on_availability
        self.available = True
        # Consumes sent, for the batching benchmark (round trips: ``round_trips``).
        self.consumes = 0

    @property
    def round_trips(self) -> int:
        return self._transport.round_trips

    async def close(self) -> None:
        await self._transport.close()

    def _key(self, tenant_id: str, suffix: str) -> str:
        # The tenant in braces is the Redis Cluster hash tag: every key of one call shares a slot.
        return f"{self._prefix}{{{tenant_id}}}:{suffix}"

    async def consume(self, tenant_id: str, ops: Sequence[CounterOp], now: float,
                      idempotency: Idempotency | None = None) -> list[CounterResult]:
        keys = [self._key(tenant_id, "usage"),
                self._key(tenant_id, f"idem:{idempotency.key}" if idempotency else "idem")]
        args: list[Any] = [len(ops), "1" if idempotency else "0", idempotency.payload_digest if idempotency else "",
                           int(idempotency.ttl * 1000) if idempotency else 0, now if self._time_from_caller else ""]
        for op in ops:
            spec = op.spec
            keys += [self._key(tenant_id, f"q:{spec.name}"), self._key(tenant_id, f"q:{spec.name}:leases")]
            kind = "allocation" if spec.kind is QuotaKind.VOLUME else spec.kind.value
            lease = op.lease_id if op.release else (secrets.token_hex(12) if spec.kind is QuotaKind.CONCURRENCY
                                                    else "")
            args += [kind, op.amount, "1" if op.release else "0", lease, spec.limit, spec.per_seconds or 1,
                     spec.burst, spec.period.value if spec.period else "", int(spec.lease_ttl * 1000),
                     "1" if spec.shadow else "0", spec.name]
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        name = self._transport.lane_of(keys[0])
        lane = self._lanes.get(name)
        if lane is None:
            lane = self._lanes[name] = _Lane(name)
        lane.queue.append((keys, args, future))
        self._schedule_flush(lane)
        reply = await future
        status = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
        if status == "conflict":
            raise Aborted(f"idempotency key {idempotency.key if idempotency else ''!r} was used with a different "
                          "request", field="idempotency_key")
        if status == "unknown_lease":
            index = int(reply[1]) - 1  # Lua counts from 1
            raise unknown_lease(ops[index], index)
        return [CounterResult(bool(allowed), int(remaining), float(reset), float(retry), str(lease))
                for allowed, remaining, reset, retry, lease in json.loads(reply[1])]

    def _schedule_flush(self, lane: _Lane) -> None:
        """Send what is queued once the loop has run the other ready callbacks (so that consumes arriving
        together share a pipeline), unless the lane has a pipeline in flight: then the queue grows until it
        returns, so batches grow with the load instead of the round trips. A round trip costs far more CPU than
        a script call in it (about 200 us against 75 us on the benchmark machine); one pipeline at a time
        used 12% less CPU per consume under load than two."""
        if not lane.flushing and lane.queue and lane.in_flight is None:
            lane.flushing = True
            asyncio.get_running_loop().call_soon(self._flush, lane)

    def _flush(self, lane: _Lane) -> None:
        lane.flushing = False
        batch, lane.queue = lane.queue, []
        # Held here: a task nobody references may be collected before it runs.
        lane.in_flight = asyncio.ensure_future(self._send(lane.name, batch))
        lane.in_flight.add_done_callback(lambda _: self._sent(lane))

    def _sent(self, lane: _Lane) -> None:
        lane.in_flight = None
        self._schedule_flush(lane)

    async def _send(self, lane: str, batch: list[tuple[list[str], list[Any], asyncio.Future[Any]]]) -> None:
        try:
            replies = await self._transport.evaluate(lane, [(keys, args) for keys, args, _ in batch])
        except (RedisError, OSError) as exc:
            self._set_available(self._transport.healthy)
            error: Exception = StorageError(f"the Redis quota backend is unavailable: {exc}")
        except Exception as exc:  # a bug, not an outage: every caller gets INTERNAL, none waits for ever
            log.exception("the Redis quota backend call failed unexpectedly")
            error = exc
        else:
            self.consumes += len(batch)
            self._set_available(self._transport.healthy)
            for (_, _, future), reply in zip(batch, replies, strict=True):
                if future.done():
                    continue
                if isinstance(reply, BaseException):  # the script's own error
                    future.set_exception(StorageError(f"the Redis quota script failed: {reply}"))
                else:
                    future.set_result(reply)
            return
        for _, _, future in batch:
            if not future.done():
                future.set_exception(error)

    def _set_available(self, available: bool) -> None:
        if available != self.available:
            self.available = available
            if self._on_availability is not None:
                self._on_availability(available)

    async def ping(self) -> bool:
        """Whether Redis answers now; marks the backend available again when it does."""
        try:
            await self._transport.ping()
        except (RedisError, OSError):
            self._set_available(False)
            return False
        self._set_available(True)
        return True

    async def warn_if_not_persistent(self) -> None:
        """Logs a warning for each Redis server (each primary of a cluster) that keeps nothing on disk. Once at
        start, beside serving: it never fails the start, and a Redis that refuses CONFIG is asked INFO
        persistence instead."""
        try:
            async with asyncio.timeout(2 * self._timeout):
                reports = await self._transport.persistence_settings()
        except (RedisError, OSError, TimeoutError, ValueError) as exc:
            log.info("could not learn whether the quota backend Redis keeps counters on disk: %s", exc)
            return
        for server, settings, info in reports:
            problem = persistence_problem(settings, info, server)
            if problem:
                log.warning(problem)

    async def usage(self, tenant_id: str) -> dict[str, tuple[int, int]]:
        try:
            raw = await self._transport.hgetall(self._key(tenant_id, "usage"))
        except (RedisError, OSError) as exc:
            raise StorageError(f"the Redis quota backend is unavailable: {exc}") from exc
        usage: dict[str, list[int]] = {}
        for name, value in raw.items():
            quota, _, what = (name.decode() if isinstance(name, bytes) else name).rpartition(":")
            usage.setdefault(quota, [0, 0])[0 if what == "consumed" else 1] = int(value)
        # A denial of amount 0 (a check against a limit lowered below what is spent) writes a 0: left out, as the
        # memory store leaves out quotas that counted nothing.
        return {quota: (counts[0], counts[1]) for quota, counts in usage.items() if counts[0] or counts[1]}
