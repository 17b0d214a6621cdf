"""``tenantgate events export``: the audit ledger as CloudEvents, and quota usage for billing, to NATS JetStream
or to JSON-lines files."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from tenantgate.cli.common import EXIT_ERROR, EXIT_OK, add_tls, default_actor, security
from tenantgate.config import DEFAULT_REGISTRY
from tenantgate.errors import ConfigurationError
from tenantgate.events.cloudevents import DEFAULT_SOURCE

STOP_GRACE = 5.0  # seconds the export loops get to finish their step after SIGTERM

if TYPE_CHECKING:
    from tenantgate.events.exporter import AuditSource


def _bounded(kind: Callable[[str], float], low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is outside {low:g}..{high:g}")
        return value
    return parse


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    events = commands.add_parser("events", help="registry events out: audit CloudEvents and usage for billing")
    events_commands = events.add_subparsers(dest="events_command", required=True)
    export = events_commands.add_parser(
        "export", help="publish every audit ledger entry (and quota usage every interval) to NATS JetStream or "
                       "JSON-lines files, resuming where the sink ends; runs until SIGTERM/SIGINT")
    env = os.environ.get
    add = export.add_argument
    add("--registry", default=env("TENANTGATE_REGISTRY", DEFAULT_REGISTRY),
        help="registry URL: sqlite:///path.db, postgresql://… or a server's Admin API grpc://host:port "
             f"(env TENANTGATE_REGISTRY; default {DEFAULT_REGISTRY})")
    add("--sink", default=env("TENANTGATE_EVENTS_SINK", ""),
        help="nats://HOST:4222 (JetStream; needs the nats extra) or file:DIRECTORY (audit.jsonl and usage.jsonl) "
             "(env TENANTGATE_EVENTS_SINK)")
    add("--source", default=env("TENANTGATE_EVENTS_SOURCE", DEFAULT_SOURCE),
        help=f"the CloudEvents source naming this registry (env TENANTGATE_EVENTS_SOURCE; default {DEFAULT_SOURCE})")
    add("--stream", default="TENANTGATE_AUDIT", help="JetStream stream of the audit events (default TENANTGATE_AUDIT)")
    add("--usage-stream", default="TENANTGATE_USAGE", help="JetStream stream of usage (default TENANTGATE_USAGE)")
    add("--subject-prefix", default="tenantgate",
        help="subjects are PREFIX.audit.<tenant> and PREFIX.usage.<tenant> (default tenantgate)")
    add("--duplicate-window", type=_bounded(float, 1, 86400), default=120.0,
        help="seconds JetStream remembers message ids, for a stream the export creates (default 120)")
    add("--counters", default=env("TENANTGATE_EVENTS_COUNTERS", ""),
        help="the servers' shared quota counters, redis://HOST:6379/0 or redis+cluster://…: publish usage every "
             "--usage-interval (env TENANTGATE_EVENTS_COUNTERS; default: no usage)")
    add("--counters-prefix", default="tg:", help="the servers' --quota-prefix (default tg:)")
    add("--usage-interval", type=_bounded(int, 1, 86400), default=60,
        help="seconds between usage reports, at multiples of it (default 60)")
    add("--poll-interval", type=_bounded(float, 0.01, 3600), default=1.0,
        help="seconds between reads of the ledger once it is exported (default 1)")
    add("--batch", type=_bounded(int, 1, 10000), default=500, help="entries published at a time (default 500)")
    add("--once", action="store_true",
        help="export what the ledger holds (and one usage report of the last period) and exit; errors end it")
    add_tls(export)
    add("--actor", default=env("TENANTGATE_ACTOR", default_actor()),
        help="who a grpc:// registry's Admin API is called as, without a client certificate (env TENANTGATE_ACTOR)")
    export.set_defaults(handler=_export)


def _open_registry(args: argparse.Namespace) -> AuditSource:
    from tenantgate.adminapi.client import open_admin

    # An exporter never creates a registry.
    return open_admin(args.registry, security(args), args.actor, create=False)


def _export(args: argparse.Namespace) -> int:
    if not args.sink:
        raise ConfigurationError("--sink is required: nats://HOST:4222 or file:DIRECTORY")
    if args.counters.startswith("memory:"):
        raise ConfigurationError("memory:// counters live inside each server process; usage for billing is read "
                                 "from the servers' shared Redis counters (--counters redis://…)")
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    # Imported here: the other commands need none of it.
    from tenantgate.events.exporter import AuditExporter, ExportSettings, UsageExporter
    from tenantgate.events.sinks import NatsSettings, open_sink

    sink = open_sink(args.sink, NatsSettings(args.stream, args.usage_stream, args.subject_prefix,
                                             args.duplicate_window))
    registry = await asyncio.to_thread(_open_registry, args)
    counters = None
    if args.counters:
        from tenantgate.clock import SystemClock
        from tenantgate.counters import open_counter_store

        counters = open_counter_store(args.counters, prefix=args.counters_prefix)
    settings = ExportSettings(source=args.source, batch=int(args.batch), poll_interval=args.poll_interval)
    audit = AuditExporter(registry, sink, settings)
    usage = None if counters is None else UsageExporter(registry, counters, sink, interval=int(args.usage_interval),
                                                        clock=SystemClock(), source=args.source)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        if args.once:
            async def once() -> None:
                published = await audit.export()
                reported = await usage.report(usage.last_period_end()) if usage is not None else 0
                print(f"published {published} audit event(s) (the sink ends at sequence {audit.last_seq})"
                      + (f" and {reported} usage event(s)" if usage is not None else ""))

            job, stopped = asyncio.create_task(once()), asyncio.create_task(stop.wait())
            await asyncio.wait((job, stopped), return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not job.done():
                job.cancel()
                # Python 3.11's wait_for (inside nats-py's connect) can swallow a cancellation until its own
                # timeout; whatever the job ends with after the interruption, the answer is "interrupted".
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await job
                print(f"interrupted; the sink ends at audit sequence {audit.last_seq} or later", file=sys.stderr)
                return EXIT_ERROR
            job.result()
            return EXIT_OK
        tasks = [asyncio.create_task(audit.run(stop))]
        if usage is not None:
            tasks.append(asyncio.create_task(usage.run(stop)))
        for task in tasks:  # whichever loop ends first (a stop, or an error that ends the command) ends the other
            task.add_done_callback(lambda _: stop.set())
        await stop.wait()
        # The loops end at their next step; one stuck in a call (a NATS that does not answer) is cancelled, which
        # loses nothing: the next start resumes from the sink.
        _, stuck = await asyncio.wait(tasks, timeout=STOP_GRACE)
        for task in stuck:
            task.cancel()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
                raise outcome
        print(f"stopped; the sink ends at audit sequence {audit.last_seq}", file=sys.stderr)
        return EXIT_OK
    finally:
        await sink.close()
        if counters is not None:
            await counters.close()
        await asyncio.to_thread(registry.close)
