"""Several worker processes serving the same ports (SO_REUSEPORT), for more than one core.

Workers are forked before any gRPC object exists in the parent (gRPC does not survive a fork of a live
process); the kernel spreads connections over them. The parent only supervises: it forwards SIGTERM and
SIGINT, and replaces a worker that dies while the others keep serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from types import FrameType

from tenantgate.config import ServeConfig
from tenantgate.keywrap import MasterKey

log = logging.getLogger("tenantgate.workers")
RESTART_DELAY = 0.5
FORWARDED = {signal.SIGTERM, signal.SIGINT}


def _worker_config(config: ServeConfig, index: int) -> ServeConfig:
    if not config.metrics_listen:
        return config
    host, _, port = config.metrics_listen.rpartition(":")
    return dataclasses.replace(config, metrics_listen=f"{host}:{int(port) + index}")  # one metrics port each


def _run_worker(config: ServeConfig, master_key: MasterKey | None) -> int:
    from tenantgate.server.app import serve

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(serve(config, master_key))
    except Exception:
        log.exception("worker %d failed", os.getpid())
        return 1
    return 0


def run_workers(config: ServeConfig, master_key: MasterKey | None) -> int:
    children: dict[int, int] = {}  # pid -> worker index
    stopping = False

    def spawn(index: int) -> None:
        # Signals are blocked across the fork: one that arrives before the child has reset its handlers
        # must reach the child's default action (exit), not the parent's handler it inherited.
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        pid = os.fork()
        if pid == 0:
            for signum in FORWARDED:
                signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
            os._exit(_run_worker(_worker_config(config, index), master_key))
        children[pid] = index
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        log.info("worker %d started (pid %d)", index, pid)

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for index in range(config.workers):
        spawn(index)
    failed = False
    while children:
        pid, status = os.wait()
        if pid not in children:
            continue
        index = children.pop(pid)
        if stopping:
            failed = failed or os.waitstatus_to_exitcode(status) not in (0, -signal.SIGTERM, -signal.SIGINT)
            continue
        log.error("worker %d (pid %d) exited with status %d; starting another", index, pid,
                  os.waitstatus_to_exitcode(status))
        time.sleep(RESTART_DELAY)
        if not stopping:  # a SIGTERM may have come while we waited
            spawn(index)
    return 1 if failed else 0
