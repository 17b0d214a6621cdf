"""The commands that run the server: ``serve`` and ``config show``, both from the same settings."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os

import yaml

from tenantgate.cli.common import EXIT_OK
from tenantgate.config import (
    DEFAULT_ADMIN_LISTEN,
    DEFAULT_LISTEN,
    DEFAULT_REGISTRY,
    DEFAULT_SNAPSHOT_FILE,
    ServeConfig,
    describe,
    load_serve_config,
    master_key_from,
)
from tenantgate.logs import configure_logging


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # Both log as the serving configuration says (config show: not at all), not as the other commands do.
    serve = commands.add_parser("serve", help="serve DecisionService (and the Admin API) from a registry")
    _add_serve_settings(serve)
    serve.set_defaults(handler=_serve, logs_as_configured=True)

    config = commands.add_parser("config", help="the serving configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    show = config_commands.add_parser(
        "show", help="print the effective configuration (file, then TENANTGATE_* variables, then flags), "
                     "secrets masked")
    _add_serve_settings(show)
    show.set_defaults(handler=_config, logs_as_configured=True)


def _add_serve_settings(parser: argparse.ArgumentParser) -> None:
    """Every setting defaults to None here, so that only flags actually given override the file and the
    environment (see config.load_serve_config)."""
    add = parser.add_argument
    add("--config", default=os.environ.get("TENANTGATE_CONFIG", ""),
        help="a YAML file of settings (env TENANTGATE_CONFIG); environment variables and flags override it")
    add("--registry", help=f"registry URL (env TENANTGATE_REGISTRY; default {DEFAULT_REGISTRY})")
    add("--master-key-file", help="file holding the base64 master key (env TENANTGATE_MASTER_KEY_FILE)")
    add("--listen", help=f"decision API address (default {DEFAULT_LISTEN})")
    add("--admin-listen", help=f"the Admin API's address (default {DEFAULT_ADMIN_LISTEN}; empty: not served)")
    add("--metrics-listen", help="Prometheus metrics HTTP address, e.g. 127.0.0.1:9464 (default: not served)")
    add("--metrics-port", type=int, help="shorthand for --metrics-listen 127.0.0.1:PORT")
    add("--health-listen", help="plaintext grpc.health.v1-only address for probes, e.g. 0.0.0.0:50053; allowed "
                                "without TLS on any address (default: not served)")
    add("--snapshot-file", help=f"last-known-good registry copy (default {DEFAULT_SNAPSHOT_FILE}; empty: none)")
    add("--replace-snapshot-file", action="store_true", default=None,
        help="let the registry replace a snapshot file of another registry or of a later revision (once, after "
             "moving to a new registry or restoring a backup)")
    add("--max-staleness", type=float, help="fail closed once the registry is unread this many seconds (0: never)")
    add("--sync-interval", type=float, help="registry poll interval in seconds (default 0.2)")
    add("--max-concurrent-rpcs", type=int, help="calls in flight beyond this are refused (default 1000)")
    add("--drain-delay", type=float, help="seconds the server keeps answering after SIGTERM while it reports "
                                          "NOT_SERVING, before it refuses new calls (default 5)")
    add("--grace-period", type=float, help="seconds in-flight calls get to finish once new calls are refused "
                                           "(default 5)")
    add("--quota-backend", help="quota counters: memory:// (one process), redis://HOST:6379/0 or "
        "redis+cluster://HOST:PORT[,HOST:PORT...] (shared)")
    add("--quota-prefix", help="prefix of the Redis keys (default tg:)")
    add("--quota-on-backend-error", choices=("deny", "allow"),
        help="answer for quotas without their own policy while the backend is down (default deny)")
    add("--workers", type=int, help="processes sharing the ports (SO_REUSEPORT); more than one needs Redis quotas")
    add("--tls-cert", help="server certificate chain (PEM)")
    add("--tls-key", help="server private key (PEM)")
    add("--client-ca", help="require client certificates signed by this CA (mutual TLS)")
    add("--trust-caller-metadata", action="store_true", default=None,
        help="take the caller from x-tenantgate-caller (only behind a proxy that sets it and strips it)")
    add("--insecure-listen", action="store_true", default=None, help="allow non-loopback addresses without TLS")
    add("--admin", dest="admins", action="append", help="an identity allowed to use the Admin API (repeatable; "
                                                        "env TENANTGATE_ADMINS, comma-separated)")
    add("--log-level", dest="log_level", help="DEBUG, INFO (default), WARNING, ERROR")
    add("--log-format", choices=("json", "text"), help="json (default: one object per line) or text")
    add("--decision-log", help="write every deny and sampled allows to this file (rotated), or - for stdout")
    add("--decision-log-sample", type=float, help="share of allows in the decision log, 0 to 1 (default 0)")
    add("--otel", action="store_true", default=None,
        help="OpenTelemetry server spans with the tenant and the decision (needs the otel extra; spans go to the "
             "tracer provider the process is run with, e.g. by opentelemetry-instrument)")


def _serve_config(args: argparse.Namespace) -> ServeConfig:
    names = {field.name for field in dataclasses.fields(ServeConfig)}
    flags = {name: value for name, value in vars(args).items() if name in names and value is not None}
    if args.metrics_port is not None:
        flags.setdefault("metrics_listen", f"127.0.0.1:{args.metrics_port}")
    if "admins" in flags:
        flags["admins"] = tuple(flags["admins"])
    return load_serve_config(args.config, flags=flags)


def _serve(args: argparse.Namespace) -> int:
    config = _serve_config(args)
    # A parent that forks workers stays single-threaded (it logs little, synchronously); each worker starts
    # its own writer thread, since a fork copies none.
    configure_logging(config.log_level, config.log_format, background=config.workers <= 1)
    master_key = master_key_from(config.master_key_file)
    if master_key is None:
        logging.getLogger("tenantgate").warning(
            "no master key configured: key calls will answer FAILED_PRECONDITION for every key")
    if config.workers > 1:
        from tenantgate.server.workers import run_workers

        return run_workers(config, master_key)
    from tenantgate.server.app import serve

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(config, master_key))
    return EXIT_OK


def _config(args: argparse.Namespace) -> int:
    print(yaml.safe_dump(describe(_serve_config(args)), sort_keys=False), end="")
    return EXIT_OK
