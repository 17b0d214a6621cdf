"""The restart decisions of `serve --workers N`: backoff, reset once stable, stop on a crash loop, exit status."""

from __future__ import annotations

import signal

import pytest

from tenantgate.clock import FakeClock
from tenantgate.server.supervisor import RestartPolicy, Supervisor, describe_status

POLICY = RestartPolicy(first_delay=0.5, max_delay=8.0, stable_after=30.0, max_quick_failures=6)


def exited(code: int) -> int:
    """The wait status of a process that called exit(code)."""
    return code << 8


def killed(signum: int) -> int:
    return signum


def serving_workers(clock: FakeClock, count: int = 2) -> Supervisor:
    supervisor = Supervisor(count, clock, POLICY)
    for index in range(count):
        supervisor.started(index)
        supervisor.serving(index)
    return supervisor


def fail_and_restart(supervisor: Supervisor, clock: FakeClock, index: int, *, ran: float = 1.0) -> float | None:
    """Let the worker run ``ran`` seconds, fail; wait for its restart, start it again; the delay it was given."""
    clock.advance(ran)
    outcome = supervisor.exited(index, exited(1))
    if outcome.restart_in is None:
        return None
    clock.advance(outcome.restart_in)
    assert supervisor.due() == [index]
    supervisor.started(index)
    return outcome.restart_in


def test_exit_causes_name_the_signal_or_the_status() -> None:
    assert describe_status(exited(3)) == "exited with status 3"
    assert describe_status(killed(signal.SIGKILL)) == "killed by SIGKILL"
    assert describe_status(killed(signal.SIGSEGV) | 0x80) == "killed by SIGSEGV (core dumped)"


def test_restarts_back_off_exponentially_up_to_the_cap() -> None:
    clock = FakeClock()
    supervisor = Supervisor(1, clock, RestartPolicy(first_delay=0.5, max_delay=4.0, max_quick_failures=100))
    supervisor.started(0)
    delays = [fail_and_restart(supervisor, clock, 0) for _ in range(7)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]


def test_nothing_restarts_before_its_delay() -> None:
    clock = FakeClock()
    supervisor = serving_workers(clock)
    clock.advance(1)
    assert supervisor.exited(1, killed(signal.SIGKILL)).restart_in == 0.5
    assert supervisor.next_restart_in() == 0.5
    clock.advance(0.4)
    assert supervisor.due() == [] and supervisor.next_restart_in() == pytest.approx(0.1)
    clock.advance(0.1)
    assert supervisor.due() == [1]


def test_a_worker_that_served_a_while_starts_again_from_the_first_delay() -> None:
    clock = FakeClock()
    supervisor = serving_workers(clock, 1)
    assert [fail_and_restart(supervisor, clock, 0) for _ in range(3)] == [0.5, 1.0, 2.0]
    supervisor.serving(0)
    clock.advance(POLICY.stable_after)  # served long enough: what came before is forgotten
    outcome = supervisor.exited(0, killed(signal.SIGSEGV))
    assert outcome.restart_in == 0.5 and outcome.served == POLICY.stable_after and not outcome.gave_up


def test_serving_briefly_does_not_reset_the_backoff() -> None:
    clock = FakeClock()
    supervisor = serving_workers(clock, 1)
    assert fail_and_restart(supervisor, clock, 0) == 0.5
    supervisor.serving(0)
    assert fail_and_restart(supervisor, clock, 0, ran=POLICY.stable_after - 1) == 1.0


def test_a_worker_failing_at_start_again_and_again_stops_everything() -> None:
    clock = FakeClock()
    supervisor = serving_workers(clock)
    for _ in range(POLICY.max_quick_failures - 1):
        assert fail_and_restart(supervisor, clock, 1, ran=0.2) is not None
        assert not supervisor.stopping
    clock.advance(0.2)
    outcome = supervisor.exited(1, exited(1))
    assert outcome.restart_in is None and outcome.served is None
    assert outcome.gave_up == "worker 1 failed 6 times in a row within 30 s of starting"
    assert supervisor.stopping and supervisor.due() == [] and supervisor.next_restart_in() is None
    clock.advance(1)
    assert supervisor.exited(0, killed(signal.SIGTERM)).clean  # the others are stopped as on SIGTERM
    assert supervisor.exit_code() == 1


def test_giving_up_cancels_the_other_workers_restarts() -> None:
    clock = FakeClock()
    supervisor = serving_workers(clock)
    for _ in range(POLICY.max_quick_failures - 1):
        fail_and_restart(supervisor, clock, 1)
    clock.advance(1)
    assert supervisor.exited(0, killed(signal.SIGKILL)).restart_in == 0.5  # worker 0 waits to restart
    assert supervisor.exited(1, exited(1)).gave_up
    clock.advance(60)
    assert supervisor.due() == [] and supervisor.next_restart_in() is None


def test_failures_of_different_workers_are_counted_apart() -> None:
    clock = FakeClock()
    supervisor = serving_workers(clock)
    for _ in range(POLICY.max_quick_failures - 1):
        fail_and_restart(supervisor, clock, 0)
        fail_and_restart(supervisor, clock, 1)
    assert not supervisor.stopping


def test_a_stop_during_a_backoff_wait_cancels_the_restart() -> None:
    clock = FakeClock()
    supervisor = serving_workers(clock)
    clock.advance(60)
    supervisor.exited(0, killed(signal.SIGKILL))
    supervisor.stop()
    assert supervisor.next_restart_in() is None
    clock.advance(10)
    assert supervisor.due() == []
    assert supervisor.exited(1, exited(0)).clean
    assert supervisor.exit_code() == 0  # both served; the killed one was replaced by no one, as asked


def test_a_clean_stop_of_workers_that_served_exits_zero() -> None:
    clock = FakeClock()
    supervisor = serving_workers(clock)
    supervisor.stop()
    clock.advance(3)
    first = supervisor.exited(0, exited(0))
    second = supervisor.exited(1, killed(signal.SIGTERM))  # the signal came before its handlers were set
    assert first.clean and second.clean and first.ran == 3 and first.served == 3
    assert supervisor.exit_code() == 0


def test_a_worker_killed_while_stopping_is_a_failure() -> None:
    clock = FakeClock()
    supervisor = serving_workers(clock)
    supervisor.stop()
    assert not supervisor.exited(0, killed(signal.SIGKILL)).clean
    supervisor.exited(1, exited(0))
    assert supervisor.exit_code() == 1


def test_a_server_whose_workers_never_served_fails_even_on_a_requested_stop() -> None:
    clock = FakeClock()
    supervisor = Supervisor(2, clock, POLICY)
    supervisor.started(0)
    supervisor.started(1)
    supervisor.serving(0)
    clock.advance(1)
    supervisor.exited(1, exited(1))  # worker 1 fails at start, and is waiting to restart
    supervisor.stop()
    supervisor.exited(0, exited(0))
    assert supervisor.never_served() == [1]
    assert supervisor.exit_code() == 1


def test_serving_counts_only_for_the_process_running_now() -> None:
    clock = FakeClock()
    supervisor = Supervisor(1, clock, POLICY)
    supervisor.started(0)
    clock.advance(1)
    supervisor.exited(0, exited(1))
    supervisor.serving(0)  # a late report about the process that has ended: no process runs in slot 0
    assert supervisor.never_served() == [0]
