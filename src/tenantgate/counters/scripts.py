"""The quota script and what the Redis transports share: a transport runs batches of script calls on one Redis
server (``redis_node``) or on a Redis Cluster (``redis_cluster``); ``RedisCounterStore`` does the rest once."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Mapping
from importlib import resources
from typing import Any, Protocol, cast

from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, ResponseError

# One EVALSHA of the consume script: a key of the call (which names its slot) and the whole command, encoded in
# the Redis protocol (``evalsha_command``). Every key of a call carries the same hash tag (the tenant), so on a
# cluster a call runs on the one node that owns its slot.
ScriptCall = tuple[str, bytes]
# (server, CONFIG GET appendonly and save or None, INFO persistence or None)
PersistenceReport = tuple[str, Mapping[Any, Any] | None, Mapping[str, Any] | None]


def _script() -> str:
    folder = resources.files("tenantgate.counters") / "lua"
    return (folder / "window.lua").read_text() + "\n" + (folder / "consume.lua").read_text()


CONSUME_SCRIPT = _script()
# What Redis names the script by (EVALSHA): the SHA-1 of its text, known without asking a server.
CONSUME_SHA = hashlib.sha1(CONSUME_SCRIPT.encode(), usedforsecurity=False).hexdigest()


def bulk(value: bytes) -> bytes:
    """``value`` as a Redis protocol bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


_EVALSHA = b"$7\r\nEVALSHA\r\n" + bulk(CONSUME_SHA.encode())


def evalsha_command(key_count: int, keys: bytes, arg_count: int, args: bytes) -> bytes:
    """EVALSHA of the consume script in the Redis protocol, from its keys and arguments already encoded as bulk
    strings (``bulk``). Encoded here rather than by redis-py, whose encoder takes each argument apart again on every
    call: a call's keys and most of its arguments are the same each time, and encoded once (``RedisCounterStore``)."""
    return b"*%d\r\n%b%b%b%b" % (3 + key_count + arg_count, _EVALSHA, bulk(b"%d" % key_count), keys, args)


def command_arguments(command: bytes) -> list[Any]:
    """The arguments of an EVALSHA encoded by ``evalsha_command``, as redis-py's cluster pipeline takes them (it
    encodes them again itself, and reads the keys' slot from them: the command and the key count as str and int)."""
    count, _, rest = command[1:].partition(b"\r\n")
    arguments: list[Any] = []
    for _ in range(int(count)):
        size, _, rest = rest[1:].partition(b"\r\n")
        arguments.append(rest[:int(size)])
        rest = rest[int(size) + 2:]
    return [arguments[0].decode(), arguments[1].decode(), int(arguments[2]), *arguments[3:]]


def awaitable(command: object) -> Awaitable[Any]:
    """A command of the async client. redis-py types some commands for its sync and async clients at once,
    and not alike from one release to the next."""
    return cast(Awaitable[Any], command)


# A connection idle longer than this is pinged before it is used again (one round trip more), so that one a
# server or a proxy closed while idle is replaced before a batch is lost on it.
IDLE_CHECK_SECONDS = 30


def own_connection(connection_class: type[AbstractConnection], settings: dict[str, Any]) -> AbstractConnection:
    """A connection of a store's own, one pipeline in flight on it: the client's settings, less the per-read
    timeout (the round trip has one of its own), pinged after being idle; a ping that fails is tried once more
    on a new connection (nothing was sent yet)."""
    return connection_class(**{**settings, "socket_timeout": None, "health_check_interval": IDLE_CHECK_SECONDS,
                               "retry": Retry(NoBackoff(), 1)})


async def send_calls(connection: AbstractConnection, calls: list[ScriptCall]) -> list[Any]:
    """The calls as one pipeline of EVALSHA on ``connection`` (the caller bounds it with a deadline): each
    call's reply, or its ResponseError in its place. redis-py's connection layer reads the replies; its pipeline
    objects around it cost about 90 us of CPU per round trip more on the benchmark machine (the cluster one
    more still: it works out each key's slot several times per call)."""
    replies: list[Any] = []
    try:
        await connection.send_packed_command(b"".join(command for _, command in calls), check_health=True)
        for _ in calls:
            try:
                replies.append(await connection.read_response())
            except ResponseError as exc:  # that reply only; the stream stays in step
                replies.append(exc)
    except BaseException:
        # A reply may still be on its way: the connection is out of step, so it is dropped.
        await connection.disconnect(nowait=True)
        raise
    return replies


def missing_script(reply: Any) -> bool:
    """Whether a reply says the server does not have the script (restarted, flushed, or a promoted replica)."""
    return isinstance(reply, NoScriptError) or (isinstance(reply, ResponseError) and "NOSCRIPT" in str(reply))


class ScriptTransport(Protocol):
    """Raises only RedisError or OSError for a backend it cannot reach: its client's own errors are turned
    into those at this boundary."""

    # False once a batch could not reach (part of) the backend; True again once it answers everywhere.
    healthy: bool
    round_trips: int

    def lane_of(self, key: str) -> str:
        """The server a call on ``key`` goes to, as a name ("" when there is one, or it is not known yet): each
        lane has one pipeline in flight, so that a stalled server holds up its own calls only."""
        ...

    async def evaluate(self, lane: str, calls: list[ScriptCall]) -> list[Any]:
        """Each call's reply, in order, a script error in its place; raises when the lane's server cannot be
        reached."""
        ...

    async def ping(self) -> None:
        """Raises unless every server answers."""
        ...

    async def hgetall(self, key: str) -> dict[bytes, bytes]: ...

    async def persistence_settings(self) -> list[PersistenceReport]:
        """For each server that keeps counters: what CONFIG GET answers for appendonly and save, or, where
        CONFIG is refused, what INFO persistence answers (see ``redis.persistence_problem``)."""
        ...

    async def close(self) -> None: ...
