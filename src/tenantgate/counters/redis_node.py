"""Script calls on one Redis server: each batch is one pipeline on the store's own connection, under one
deadline (``deadlines``). Only one batch is in flight at a time (``RedisCounterStore``), so it needs no
pool."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError

from tenantgate.counters.deadlines import Deadlines
from tenantgate.counters.scripts import (
    CONSUME_SCRIPT,
    PersistenceReport,
    ScriptCall,
    awaitable,
    missing_script,
    own_connection,
    send_calls,
)


class NodeScripts:
    def __init__(self, url: str, *, timeout: float) -> None:
        self._redis = aioredis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                        retry_on_timeout=False)
        self._connection: AbstractConnection | None = None
        self._timeout = timeout
        self._deadlines = Deadlines(timeout)
        # Whether the last batch reached the server: the store's health follows it.
        self.healthy = True
        self.round_trips = 0

    def lane_of(self, key: str) -> str:
        return ""

    async def evaluate(self, lane: str, calls: list[ScriptCall]) -> list[Any]:
        """Each call's reply (or its ResponseError) in order; raises RedisError or OSError when Redis cannot be
        reached, for the whole batch. Loads the script again if the server lost it (a restart, SCRIPT FLUSH)."""
        self.healthy = False
        if self._connection is None:
            pool = self._redis.connection_pool
            self._connection = own_connection(pool.connection_class, pool.connection_kwargs)
        connection = self._connection
        for _ in range(2):
            task = self._deadlines.watch()
            try:
                replies = await send_calls(connection, calls)
            except asyncio.CancelledError:
                self._deadlines.raise_if_expired(task)
                raise
            finally:
                self._deadlines.forget(task)
            self.round_trips += 1
            self.healthy = True
            if not any(missing_script(reply) for reply in replies):
                return replies
            await self._redis.script_load(CONSUME_SCRIPT)
        return replies

    async def ping(self) -> None:
        await awaitable(self._redis.ping())
        self.healthy = True

    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        found: dict[bytes, bytes] = await awaitable(self._redis.hgetall(key))
        return found

    async def persistence_settings(self) -> list[PersistenceReport]:
        try:
            return [("", {**await awaitable(self._redis.config_get("appendonly")),
                          **await awaitable(self._redis.config_get("save"))}, None)]
        except ResponseError:  # CONFIG disabled or not permitted
            return [("", None, await awaitable(self._redis.info("persistence")))]

    async def close(self) -> None:
        self._deadlines.close()
        if self._connection is not None:
            await self._connection.disconnect()
        await self._redis.aclose()

