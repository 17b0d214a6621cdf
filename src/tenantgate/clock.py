"""Time behind an interface, so that quota and token tests run on a fake clock instead of sleeping."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the Unix epoch (wall clock: calendar windows and token expiry need it)."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class MonotonicClock:
    """Seconds that never go backwards, from an arbitrary start (not the Unix epoch): for intervals, such as a
    worker's time between its fork and its exit, immune to clock steps."""

    def now(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds
