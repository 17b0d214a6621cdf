"""Round trips to Redis bounded in time by one timer for all of them, instead of one per round trip.

``asyncio.timeout`` arms a loop timer and cancels it again on every use: about 6 us of CPU, a tenth of a consume
sent one at a time (benchmarks/peers_bench.py). Here a round trip only notes which tick of a shared timer it
began in; the timer ticks every quarter of the timeout while round trips are in flight (it stops when they stop)
and cancels the tasks whose round trip has run through four whole ticks; they raise TimeoutError. A stalled Redis
is given up on between one and one and a quarter timeouts after the call was sent.

Used inline, so that a round trip costs no coroutine more::

    task = deadlines.watch()
    try:
        ...  # the round trip
    except asyncio.CancelledError:
        deadlines.raise_if_expired(task)
        raise
    finally:
        deadlines.forget(task)
"""

from __future__ import annotations

import asyncio

_TICKS_PER_TIMEOUT = 4


class Deadlines:
    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._interval = timeout / _TICKS_PER_TIMEOUT
        # The task awaiting each round trip in flight, and the tick it began in.
        self._watched: dict[asyncio.Task[object], int] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._ticks = 0
        self._ticker: asyncio.TimerHandle | None = None
        self._ticking_on: asyncio.AbstractEventLoop | None = None

    def watch(self) -> asyncio.Task[object]:
        """Starts the deadline of a round trip the current task is about to make (one per task at a time)."""
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a round trip is bounded only inside a task")
        self._watched[task] = self._ticks
        if self._ticker is None:
            self._arm(task.get_loop())
        elif self._ticking_on is not task.get_loop():  # a timer left on a loop this store no longer runs on
            self._ticker.cancel()
            self._arm(task.get_loop())
        return task

    def raise_if_expired(self, task: asyncio.Task[object]) -> None:
        """Called on CancelledError: raises TimeoutError when the cancellation was this deadline's alone."""
        if task in self._expired:
            self._expired.discard(task)
            if task.uncancel() == 0:
                raise TimeoutError(f"no answer within {self._timeout:g} s") from None

    def forget(self, task: asyncio.Task[object]) -> None:
        """Ends the round trip's deadline, however it ended."""
        self._watched.pop(task, None)
        if self._expired and task in self._expired:
            # Expired, but the cancellation never reached the caller as such (something in the round trip
            # turned it into another error): it is taken back, as asyncio.timeout takes back its own, so that
            # the task's next deadline is told apart from a cancellation from elsewhere.
            self._expired.discard(task)
            task.uncancel()

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        self._ticking_on = loop
        self._ticker = loop.call_later(self._interval, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._ticks += 1
        for task, began in list(self._watched.items()):
            if task.get_loop().is_closed():  # a loop closed under a round trip: nothing left to cancel
                del self._watched[task]
                self._expired.discard(task)
            elif self._ticks - began > _TICKS_PER_TIMEOUT and task not in self._expired:
                self._expired.add(task)
                task.cancel()
        # Idle: no timer until the next round trip.
        if self._watched:
            self._arm(loop)
        else:
            self._ticker = None

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
