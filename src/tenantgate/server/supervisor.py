"""When to restart a worker process, how long to wait first, and when to give up: decisions only, no processes.

Each worker index is a slot. A worker serves once its listeners are bound. One that exits before it has
served for ``stable_after`` seconds has failed "right after start"; consecutive such failures of one slot are
restarted after a delay that doubles from ``first_delay`` up to ``max_delay``, and the
``max_quick_failures``-th stops the whole server (a broken port, certificate or setting fails every restart
the same way; with the defaults that comes at the fifth, after waits of 0.5, 1, 2 and 4 s). A worker that
served for ``stable_after`` seconds resets its slot. Time comes from an injected clock, so every rule is
tested without sleeping.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from dataclasses import dataclass

from tenantgate.clock import Clock

# What a worker that was asked to stop may end with: its own clean exit, or the signal itself when it came
# before the worker had installed its handlers.
CLEAN_STOP = frozenset({0, -signal.SIGTERM, -signal.SIGINT})


@dataclass(frozen=True)
class RestartPolicy:
    first_delay: float = 0.5
    max_delay: float = 30.0
    stable_after: float = 30.0
    max_quick_failures: int = 5

    def delay(self, failures: int) -> float:
        """The wait before restarting a slot that has failed ``failures`` (>= 1) times in a row."""
        return min(self.max_delay, self.first_delay * 2.0 ** min(failures - 1, 62))


@dataclass(frozen=True)
class WorkerExit:
    """What the parent logs about one exited worker, and what it does next."""

    index: int
    cause: str  # "exited with status 1", "killed by SIGKILL"
    ran: float  # seconds since it was started
    served: float | None  # seconds since it reported serving; None if it never did
    clean: bool  # a requested stop that ended as one should
    restart_in: float | None = None  # None: not restarted
    gave_up: str = ""  # set when this exit stops the whole server: why


def describe_status(status: int) -> str:
    """A wait status in words: the exit code, or the signal by name."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"killed by {name}" + (" (core dumped)" if os.WCOREDUMP(status) else "")
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


@dataclass
class _Slot:
    started_at: float | None = None  # None: no process in this slot now
    serving_since: float | None = None
    ever_served: bool = False
    quick_failures: int = 0
    restart_at: float | None = None


class Supervisor:
    """The state of ``workers`` slots. The caller forks, reaps and signals; this only decides."""

    def __init__(self, workers: int, clock: Clock, policy: RestartPolicy | None = None) -> None:
        self.policy = policy or RestartPolicy()
        self._clock = clock
        self._slots = [_Slot() for _ in range(workers)]
        self.stopping = False
        self.gave_up = ""
        self._unclean_stops = 0

    def started(self, index: int) -> None:
        slot = self._slots[index]
        slot.started_at, slot.serving_since, slot.restart_at = self._clock.now(), None, None

    def serving(self, index: int) -> None:
        """The worker has bound its listeners."""
        slot = self._slots[index]
        if slot.started_at is not None and slot.serving_since is None:
            slot.serving_since = self._clock.now()
            slot.ever_served = True

    def exited(self, index: int, status: int) -> WorkerExit:
        slot = self._slots[index]
        now = self._clock.now()
        started_at = now if slot.started_at is None else slot.started_at
        served = None if slot.serving_since is None else now - slot.serving_since
        slot.started_at = slot.serving_since = None
        outcome = WorkerExit(index, describe_status(status), now - started_at, served,
                             clean=self.stopping and os.waitstatus_to_exitcode(status) in CLEAN_STOP)
        if self.stopping:
            self._unclean_stops += not outcome.clean
            return outcome
        if served is not None and served >= self.policy.stable_after:
            slot.quick_failures = 0
        slot.quick_failures += 1
        if slot.quick_failures >= self.policy.max_quick_failures:
            self.gave_up = (f"worker {index} failed {slot.quick_failures} times in a row within "
                            f"{self.policy.stable_after:g} s of starting")
            self.stop()
            return dataclasses.replace(outcome, gave_up=self.gave_up)
        delay = self.policy.delay(slot.quick_failures)
        slot.restart_at = now + delay
        return dataclasses.replace(outcome, restart_in=delay)

    def stop(self) -> None:
        """No more restarts: the ones waiting are dropped."""
        self.stopping = True
        for slot in self._slots:
            slot.restart_at = None

    def due(self) -> list[int]:
        """Slots whose restart time has come (the caller starts them and calls ``started``)."""
        now = self._clock.now()
        return [index for index, slot in enumerate(self._slots) if slot.restart_at is not None
                and slot.restart_at <= now]

    def next_restart_in(self) -> float | None:
        """Seconds until the next restart is due; None when none is waiting."""
        waiting = [slot.restart_at for slot in self._slots if slot.restart_at is not None]
        return None if not waiting else max(0.0, min(waiting) - self._clock.now())

    def never_served(self) -> list[int]:
        return [index for index, slot in enumerate(self._slots) if not slot.ever_served]

    def exit_code(self) -> int:
        """0 only for a requested stop of a server whose every worker served and stopped cleanly."""
        return 1 if self.gave_up or self._unclean_stops or self.never_served() else 0
