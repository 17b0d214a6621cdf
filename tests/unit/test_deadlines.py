"""The shared round-trip deadline of the Redis transports (``counters.deadlines``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import pytest

from tenantgate.counters.deadlines import Deadlines

T = TypeVar("T")
TIMEOUT = 0.05


async def bounded(deadlines: Deadlines, operation: Awaitable[T]) -> T:
    """A round trip as the transports bound one."""
    task = deadlines.watch()
    try:
        return await operation
    except asyncio.CancelledError:
        deadlines.raise_if_expired(task)
        raise
    finally:
        deadlines.forget(task)


async def test_an_operation_within_its_deadline_answers_and_leaves_no_timer_behind() -> None:
    deadlines = Deadlines(TIMEOUT)
    assert await bounded(deadlines, asyncio.sleep(0, result="answer")) == "answer"
    # The timer stops at its next tick once nothing is in flight: an idle store wakes nobody.
    assert deadlines._ticker is not None
    deadlines._tick(asyncio.get_running_loop())
    assert deadlines._ticker is None


async def test_an_operation_that_never_answers_raises_timeout_error_and_is_cancelled() -> None:
    deadlines = Deadlines(TIMEOUT)
    released = asyncio.Event()

    async def stalled() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            released.set()

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(bounded(deadlines, stalled()), 10)
    assert TIMEOUT <= loop.time() - started < 10
    assert released.is_set()
    # The task is not left cancelled: what it does next runs.
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    assert await bounded(deadlines, asyncio.sleep(0, result=1)) == 1


async def test_many_round_trips_each_get_their_own_deadline() -> None:
    deadlines = Deadlines(TIMEOUT)
    never = asyncio.Event()
    quick = [asyncio.ensure_future(bounded(deadlines, asyncio.sleep(0, result=i))) for i in range(5)]
    stuck = [asyncio.ensure_future(bounded(deadlines, never.wait())) for _ in range(3)]
    assert await asyncio.gather(*quick) == list(range(5))
    results = await asyncio.gather(*stuck, return_exceptions=True)
    assert all(isinstance(result, TimeoutError) for result in results)


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    deadlines = Deadlines(10.0)
    call = asyncio.ensure_future(bounded(deadlines, asyncio.Event().wait()))
    await asyncio.sleep(0)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    deadlines.close()


async def test_a_round_trip_outside_a_task_is_refused() -> None:
    deadlines = Deadlines(TIMEOUT)
    loop = asyncio.get_running_loop()
    with pytest.raises(RuntimeError):
        await loop.run_in_executor(None, deadlines.watch)


async def test_an_expiry_turned_into_another_error_leaves_the_next_deadline_a_timeout() -> None:
    """A round trip that catches the expiry's cancellation and raises something else must not leave the task
    marked cancelled: its next round trip's expiry is still a TimeoutError."""
    deadlines = Deadlines(TIMEOUT)

    async def converts() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise ConnectionError("closed while reading") from None

    async def two_round_trips() -> None:  # in one task, as a store's caller makes them
        with pytest.raises(ConnectionError):
            await bounded(deadlines, converts())
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
        with pytest.raises(TimeoutError):
            await bounded(deadlines, asyncio.Event().wait())

    await asyncio.wait_for(two_round_trips(), 10)


def test_a_loop_closed_under_a_round_trip_does_not_stop_the_deadlines_of_the_next() -> None:
    deadlines = Deadlines(TIMEOUT)
    first = asyncio.new_event_loop()
    left = first.create_task(bounded(deadlines, asyncio.Event().wait()))
    first.run_until_complete(asyncio.sleep(0))  # the round trip has begun
    first.close()  # without cancelling it: its task can never be cancelled now
    left._log_destroy_pending = False  # type: ignore[attr-defined]  # left pending on purpose

    async def stalled_round_trip() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(bounded(deadlines, asyncio.Event().wait()), 10)

    asyncio.run(stalled_round_trip())
    assert left not in deadlines._watched
