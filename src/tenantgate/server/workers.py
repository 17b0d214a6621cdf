"""Several worker processes serving the same ports (SO_REUSEPORT), for more than one core.

Workers are forked before any gRPC object exists in the parent (gRPC does not survive a fork of a live
process); the kernel spreads connections over them. The parent is single-threaded (it logs synchronously), so
a fork copies no lock held by another thread; each worker starts its own log writer and tags its lines with
its index. A worker writes one byte on a pipe once its listeners are bound. The parent only supervises: it
forwards SIGTERM and SIGINT, logs why each worker ended, and restarts or gives up as ``Supervisor`` decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import os
import selectors
import signal
import sys
from types import FrameType

from tenantgate.clock import MonotonicClock
from tenantgate.config import ServeConfig
from tenantgate.errors import TenantgateError
from tenantgate.keywrap import MasterKey
from tenantgate.logs import configure_logging, flush_logs
from tenantgate.server.supervisor import RestartPolicy, Supervisor, WorkerExit

log = logging.getLogger("tenantgate.workers")
FORWARDED = (signal.SIGTERM, signal.SIGINT)
WATCHED = (*FORWARDED, signal.SIGCHLD)
LISTENING = b"L"
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _worker_config(config: ServeConfig, index: int) -> ServeConfig:
    if not config.metrics_listen:
        return config
    host, _, port = config.metrics_listen.rpartition(":")
    return dataclasses.replace(config, metrics_listen=f"{host}:{int(port) + index}")  # one metrics port each


def _tell_listening(fd: int) -> None:
    with contextlib.suppress(OSError):  # a parent gone: nobody to tell
        os.write(fd, LISTENING)
        os.close(fd)


def _run_worker(config: ServeConfig, master_key: MasterKey | None, index: int, listening_fd: int) -> int:
    """Serve in this (forked) process; the exit code. Every record is written before returning."""
    configure_logging(config.log_level, config.log_format, background=True, worker=index)
    try:
        from tenantgate.server.app import serve

        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        asyncio.run(serve(config, master_key, on_listening=lambda: _tell_listening(listening_fd)))
        return 0
    except TenantgateError as error:
        log.error("worker %d cannot serve: %s", index, error.message)
        return 1
    except Exception as error:
        log.exception("worker %d failed: %s", index, error)
        return 1
    finally:
        flush_logs()


def _stop_with_parent(parent: int) -> None:
    """Linux: SIGTERM (a drain) to this worker when the parent dies, even by SIGKILL, so that no orphan keeps
    serving unsupervised. Elsewhere a no-op."""
    with contextlib.suppress(AttributeError, OSError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request above took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _ignore(_signum: int, _frame: FrameType | None) -> None:
    """The signal's number reaches the loop through the wake-up pipe; the handler itself has nothing to do."""


class _Pool:
    def __init__(self, config: ServeConfig, master_key: MasterKey | None, supervisor: Supervisor) -> None:
        self._config = config
        self._master_key = master_key
        self._supervisor = supervisor
        self._workers: dict[int, tuple[int, int]] = {}  # pid -> (index, read end of its listening pipe)
        self._selector = selectors.DefaultSelector()
        self._wakeup_read, self._wakeup_write = os.pipe()

    def run(self) -> int:
        for fd in (self._wakeup_read, self._wakeup_write):
            os.set_blocking(fd, False)
        self._selector.register(self._wakeup_read, selectors.EVENT_READ)
        previous_wakeup = signal.set_wakeup_fd(self._wakeup_write, warn_on_full_buffer=False)
        previous = {signum: signal.signal(signum, _ignore) for signum in WATCHED}
        try:
            for index in range(self._config.workers):
                self._spawn(index)
            while self._workers or not self._supervisor.stopping:
                self._wait()
                self._reap()
                for index in self._supervisor.due():
                    self._spawn(index)
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._selector.close()
            os.close(self._wakeup_read)
            os.close(self._wakeup_write)
        return self._finish()

    def _wait(self) -> None:
        """Until a signal, a worker's listening byte, or the next restart is due."""
        for key, _ in self._selector.select(self._supervisor.next_restart_in()):
            if key.fd == self._wakeup_read:
                received = os.read(self._wakeup_read, 512)
                for signum in FORWARDED:
                    if signum in received:
                        self._stop(signum)
            else:
                self._read_listening(key.fd, key.data)

    def _read_listening(self, fd: int, index: int) -> None:
        try:
            byte = os.read(fd, 1)
        except BlockingIOError:
            return
        self._selector.unregister(fd)
        if byte == LISTENING:
            self._supervisor.serving(index)
            log.info("worker %d is serving", index)

    def _spawn(self, index: int) -> None:
        listening_read, listening_write = os.pipe()
        sys.stderr.flush()
        # Signals are blocked across the fork: one that arrives before the child has reset its handlers
        # must reach the child's default action (exit), not the parent's handler it inherited.
        signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                self._detach(listening_read, parent)
                code = _run_worker(_worker_config(self._config, index), self._master_key, index, listening_write)
            finally:
                os._exit(code)  # never back into the parent's loop, whatever happened
        signal.pthread_sigmask(signal.SIG_UNBLOCK, WATCHED)
        os.close(listening_write)
        os.set_blocking(listening_read, False)
        self._selector.register(listening_read, selectors.EVENT_READ, index)
        self._workers[pid] = (index, listening_read)
        self._supervisor.started(index)
        log.info("worker %d started (pid %d)", index, pid)

    def _detach(self, listening_read: int, parent: int) -> None:
        """In a new worker: the parent's signal handling and file descriptors are not its own."""
        signal.set_wakeup_fd(-1)
        for signum in WATCHED:
            signal.signal(signum, signal.SIG_DFL)
        _stop_with_parent(parent)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, WATCHED)
        self._selector.close()  # closes this process's descriptor only; the parent's registrations stay
        for fd in (listening_read, self._wakeup_read, self._wakeup_write,
                   *(other for _, other in self._workers.values())):
            os.close(fd)

    def _reap(self) -> None:
        while self._workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid not in self._workers:
                continue
            index, listening_read = self._workers.pop(pid)
            if self._selector.get_map().get(listening_read) is not None:  # a byte written just before it ended
                self._read_listening(listening_read, index)
                with contextlib.suppress(KeyError):
                    self._selector.unregister(listening_read)
            os.close(listening_read)
            self._log_exit(pid, self._supervisor.exited(index, status))

    def _log_exit(self, pid: int, outcome: WorkerExit) -> None:
        served = "never served" if outcome.served is None else f"served {outcome.served:.1f} s"
        what = f"worker {outcome.index} (pid {pid}) {outcome.cause} after {outcome.ran:.1f} s ({served})"
        if outcome.clean:
            log.info("%s: stopped", what)
        elif outcome.gave_up:
            log.error("%s; %s: stopping the server", what, outcome.gave_up)
            self._signal_all(signal.SIGTERM)
        elif outcome.restart_in is not None:
            log.error("%s; restarting it in %.1f s", what, outcome.restart_in)
        else:
            log.error("%s while stopping", what)

    def _stop(self, signum: int) -> None:
        if not self._supervisor.stopping:
            log.info("%s: stopping %d worker(s)", signal.Signals(signum).name, len(self._workers))
        self._supervisor.stop()
        self._signal_all(signum)

    def _signal_all(self, signum: int) -> None:
        for pid in self._workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _finish(self) -> int:
        code = self._supervisor.exit_code()
        if self._supervisor.gave_up:
            log.error("stopped: %s", self._supervisor.gave_up)
        elif never := self._supervisor.never_served():
            log.error("stopped, but worker(s) %s never served", ", ".join(map(str, never)))
        elif code:
            log.error("stopped, but not every worker stopped cleanly")
        else:
            log.info("all workers stopped")
        return code


def run_workers(config: ServeConfig, master_key: MasterKey | None, policy: RestartPolicy | None = None) -> int:
    """Serve with ``config.workers`` processes until SIGTERM or SIGINT, or until one keeps failing at start;
    the exit status (0: every worker served and stopped cleanly)."""
    return _Pool(config, master_key, Supervisor(config.workers, MonotonicClock(), policy)).run()
