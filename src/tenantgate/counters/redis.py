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
from tenantgate.counters.scripts import ScriptCall, ScriptTransport, bulk, evalsha_command
from tenantgate.engines.quota import (
    CounterOp,
    CounterResult,
    Idempotency,
    allocation_take,
    bounded_take,
    bucket_take,
    lease_return,
    lease_take,
    unknown_lease,
)
from tenantgate.errors import Aborted, StorageError
from tenantgate.model import QuotaKind, QuotaSpec

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


# What the store keeps encoded, per tenant and per (tenant, quota): at most this many of each (then it starts over).
MAX_ENCODED = 100_000
# Arguments of the script (lua/consume.lua): four for the call, eight per item.
_CALL_FIELDS, _FIELDS = 4, 8
_SERVER_TIME = bulk(b"")  # the script reads the Redis server's clock
_NO_IDEMPOTENCY = bulk(b"") + bulk(b"0")  # no payload digest, no TTL
_RELEASE, _ACQUIRE = bulk(b"1"), bulk(b"0")
_NO_LEASE = bulk(b"")


@dataclass(slots=True)
class _TenantKeys:
    usage: str
    usage_bulk: bytes
    idempotency: str  # the prefix of its idempotency keys


@dataclass(slots=True)
class _Item:
    """A quota's part of every script call, encoded: its two keys, and its fixed arguments (kind, shadow, name,
    parameters). Kept while its tenant's snapshot holds the same spec."""

    spec: QuotaSpec
    keys: bytes
    fixed: bytes
    # The whole command of the usual call, one item of this quota taking ``alone_amount`` units on the server's
    # clock, without an idempotency key: the same bytes call after call (empty until made).
    alone: bytes = b""
    alone_amount: int = -1


@dataclass(slots=True)
class _Lane:
    """The calls waiting for one Redis server, and the one pipeline sent to it and not yet answered."""

    name: str
    queue: list[tuple[ScriptCall, asyncio.Future[Any]]] = field(default_factory=list)
    # A pipeline is in flight: sent by a caller itself (``_send_alone``), or by ``sender``.
    busy: bool = False
    sender: asyncio.Future[None] | None = None


def _transport(url: str, timeout: float) -> ScriptTransport:
    if url.partition("://")[0] in CLUSTER_SCHEMES:
        return ClusterScripts(url, timeout=timeout)
    return NodeScripts(url, timeout=timeout)


def _recorded(record: bytes) -> list[CounterResult]:
    """An idempotent call's answers, as the script keeps them for its retries (JSON, see lua/consume.lua)."""
    return [CounterResult(bool(allowed), int(remaining), float(reset), float(retry), str(lease))
            for allowed, remaining, reset, retry, lease in json.loads(record)]


def _answers(ops: Sequence[CounterOp], leases: list[str], reply: list[Any], now: float | None) -> list[CounterResult]:
    """Each item's answer, worked out by the functions the memory store uses from what the script read (see
    lua/consume.lua): the clock (``now`` when the caller gave the time), then per item whether the script
    allowed it, and two values it read."""
    if now is None:
        now = int(reply[1]) + int(reply[2]) / 1000000  # the script's arithmetic, to the last bit
    results = []
    for index, op in enumerate(ops):
        spec = op.spec
        verdict, first, second = reply[3 + 3 * index:6 + 3 * index]
        if spec.kind is QuotaKind.RATE:
            result = bucket_take(float(first) if first else None, float(second) if second else 0.0, spec, now,
                                 op.amount)[0]
        elif spec.kind is QuotaKind.WINDOW:
            result = bounded_take(first, spec.limit, op.amount, second - now, second - now)
        elif spec.kind is QuotaKind.CONCURRENCY:
            if op.release:
                result = lease_return(first, second, spec.limit, op.lease_id)
            else:
                result = lease_take(first, spec.limit, op.amount, float(second) if second else None, now,
                                    leases[index])
        else:
            result = allocation_take(first, spec.limit, op.amount, op.release)
        if result.allowed != (verdict == 1):  # a bug, never an outage: answered INTERNAL
            raise RuntimeError(f"the Redis quota script and the store disagree on quota {spec.name!r}")
        results.append(result)
    return results


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
        self._tenants: dict[str, _TenantKeys] = {}
        self._items: dict[tuple[str, str], _Item] = {}
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

    def _tenant_keys(self, tenant_id: str) -> _TenantKeys:
        keys = self._tenants.get(tenant_id)
        if keys is None:
            if len(self._tenants) >= MAX_ENCODED:
                self._tenants.clear()
            usage = self._key(tenant_id, "usage")
            keys = self._tenants[tenant_id] = _TenantKeys(usage, bulk(usage.encode()), self._key(tenant_id, "idem:"))
        return keys

    def _item(self, tenant_id: str, spec: QuotaSpec) -> _Item:
        """What ``spec`` sends on every call, encoded once (again when the tenant's quota changes)."""
        item = self._items.get((tenant_id, spec.name))
        if item is None or item.spec is not spec:
            if len(self._items) >= MAX_ENCODED:
                self._items.clear()
            state = self._key(tenant_id, f"q:{spec.name}")
            kind = "allocation" if spec.kind is QuotaKind.VOLUME else spec.kind.value
            if spec.kind is QuotaKind.RATE:
                parameters: tuple[object, ...] = (spec.limit, spec.per_seconds, spec.burst)
            elif spec.kind is QuotaKind.WINDOW:
                parameters = (spec.limit, spec.period.value if spec.period else "", "")
            elif spec.kind is QuotaKind.CONCURRENCY:
                parameters = (spec.limit, int(spec.lease_ttl * 1000), "")
            else:
                parameters = (spec.limit, "", "")
            fixed = (kind, "1" if spec.shadow else "0", spec.name, *parameters)  # an item's last six arguments
            item = self._items[(tenant_id, spec.name)] = _Item(
                spec, bulk(state.encode()) + bulk(f"{state}:leases".encode()),
                b"".join(bulk(str(value).encode()) for value in fixed))
        return item

    async def consume(self, tenant_id: str, ops: Sequence[CounterOp], now: float,
                      idempotency: Idempotency | None = None) -> list[CounterResult]:
        tenant = self._tenant_keys(tenant_id)
        if idempotency is None and len(ops) == 1 and not self._time_from_caller:
            op = ops[0]
            if not op.release and op.spec.kind is not QuotaKind.CONCURRENCY:  # no lease to name
                item = self._item(tenant_id, op.spec)
                if item.alone_amount != op.amount:
                    item.alone = self._command(tenant, now, None, False, [item], [op.amount], [""])
                    item.alone_amount = op.amount
                return self._answered(ops, [""], await self._call(tenant, item.alone), idempotency, now)
        release = ops[0].release  # the same for every item of a call
        # A lease to grant is named here, so that a lost reply's retry (idempotency) answers the same id.
        leases = [op.lease_id if release else (secrets.token_hex(12) if op.spec.kind is QuotaKind.CONCURRENCY
                                               else "") for op in ops]
        command = self._command(tenant, now, idempotency, release, [self._item(tenant_id, op.spec) for op in ops],
                                [op.amount for op in ops], leases)
        return self._answered(ops, leases, await self._call(tenant, command), idempotency, now)

    def _command(self, tenant: _TenantKeys, now: float, idempotency: Idempotency | None, release: bool,
                 items: list[_Item], amounts: list[int], leases: list[str]) -> bytes:
        """The EVALSHA of one call (see lua/consume.lua for its keys and arguments)."""
        keys = [tenant.usage_bulk]
        args = [bulk(repr(now).encode()) if self._time_from_caller else _SERVER_TIME]
        if idempotency is None:
            keys.append(tenant.usage_bulk)
            args.append(_NO_IDEMPOTENCY)
        else:
            keys.append(bulk(f"{tenant.idempotency}{idempotency.key}".encode()))
            args += [bulk(idempotency.payload_digest.encode()), bulk(b"%d" % int(idempotency.ttl * 1000))]
        args.append(_RELEASE if release else _ACQUIRE)
        for item, amount, lease in zip(items, amounts, leases, strict=True):
            keys.append(item.keys)
            args += [bulk(b"%d" % amount), bulk(lease.encode()) if lease else _NO_LEASE, item.fixed]
        return evalsha_command(2 + 2 * len(items), b"".join(keys), _CALL_FIELDS + _FIELDS * len(items),
                               b"".join(args))

    async def _call(self, tenant: _TenantKeys, command: bytes) -> Any:
        """The script's reply to ``command``: sent at once when the tenant's lane is idle, else with the calls
        queued behind the pipeline in flight."""
        call = (tenant.usage, command)
        name = self._transport.lane_of(tenant.usage)
        lane = self._lanes.get(name)
        if lane is None:
            lane = self._lanes[name] = _Lane(name)
        if lane.busy or lane.queue:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            lane.queue.append((call, future))
            self._schedule_flush(lane)
            return await future
        return await self._send_alone(lane, call)

    def _answered(self, ops: Sequence[CounterOp], leases: list[str], reply: Any, idempotency: Idempotency | None,
                  now: float) -> list[CounterResult]:
        status = reply[0]
        if status == b"ok":
            if idempotency is not None:  # answered by what its retries will be answered
                return _recorded(reply[-1])
            return _answers(ops, leases, reply, now if self._time_from_caller else None)
        if status == b"replay":
            return _recorded(reply[1])
        if status == b"conflict":
            raise Aborted(f"idempotency key {idempotency.key if idempotency else ''!r} was used with a different "
                          "request", field="idempotency_key")
        if status == b"unknown_lease":
            index = int(reply[1]) - 1  # Lua counts from 1
            raise unknown_lease(ops[index], index)
        raise StorageError(f"the Redis quota script answered {status!r}")

    async def _send_alone(self, lane: _Lane, call: ScriptCall) -> Any:
        """A call made while its lane is idle, sent at once by its caller: no task, no waiting for the next turn
        of the loop (a third of the time of a consume one at a time). Calls made meanwhile queue behind it and
        go together once it is answered."""
        lane.busy = True
        try:
            reply = (await self._evaluate(lane.name, [call]))[0]
        finally:
            self._sent(lane)
        if isinstance(reply, StorageError):
            raise reply
        return reply

    def _schedule_flush(self, lane: _Lane) -> None:
        """Send what is queued once the loop has run the other ready callbacks (so that consumes arriving
        together share a pipeline), unless the lane has a pipeline in flight: then the queue grows until it
        returns, so batches grow with the load instead of the round trips. A round trip costs far more CPU than
        a script call in it (about 200 us against 75 us on the benchmark machine); one pipeline at a time
        used 12% less CPU per consume under load than two. The task that sends is made at once: its first step
        runs after the callbacks already ready, which is when it takes the queue."""
        if lane.queue and not lane.busy:
            lane.busy = True
            # Held here: a task nobody references may be collected before it runs.
            lane.sender = asyncio.ensure_future(self._send(lane))
            lane.sender.add_done_callback(lambda _: self._sent(lane))

    def _sent(self, lane: _Lane) -> None:
        lane.busy = False
        lane.sender = None
        self._schedule_flush(lane)

    async def _send(self, lane: _Lane) -> None:
        batch, lane.queue = lane.queue, []
        try:
            replies = await self._evaluate(lane.name, [call for call, _ in batch])
        except Exception as exc:
            if not isinstance(exc, StorageError):  # a bug, not an outage: every caller gets INTERNAL, none waits
                log.exception("the Redis quota backend call failed unexpectedly")
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if not future.done():
                if isinstance(reply, StorageError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)

    async def _evaluate(self, lane: str, calls: list[ScriptCall]) -> list[Any]:
        """Each call's reply, or a StorageError in its place for a script that failed; raises StorageError when the
        lane's Redis cannot be reached."""
        try:
            replies = await self._transport.evaluate(lane, calls)
        except (RedisError, OSError) as exc:
            self._set_available(self._transport.healthy)
            raise StorageError(f"the Redis quota backend is unavailable: {exc}") from exc
        self.consumes += len(calls)
        self._set_available(self._transport.healthy)
        return [StorageError(f"the Redis quota script failed: {reply}") if isinstance(reply, BaseException)
                else reply for reply in replies]

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
