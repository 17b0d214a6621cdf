"""Throughput measurement shared by the micro-benchmarks: best of three runs, sync or awaited in turn."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


def rate(operation: Callable[[], object], seconds: float = 1.0, chunk: int = 1000) -> float:
    """Operations per second, best of three runs."""
    best = 0.0
    for _ in range(3):
        done, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / 3:
            for _ in range(chunk):
                operation()
            done += chunk
        best = max(best, done / elapsed)
    return best


def async_rate(loop: asyncio.AbstractEventLoop, operation: Callable[[], Awaitable[object]], seconds: float = 1.5,
               chunk: int = 200) -> float:
    """Operations per second of an async operation awaited one after another inside one coroutine, as a
    server awaits them (not one event-loop start per operation)."""
    async def run() -> None:
        for _ in range(chunk):
            await operation()

    return rate(lambda: loop.run_until_complete(run()), seconds, 1) * chunk
