"""The ``tenantgate`` command: serve, apply manifests, and ask a running server from the shell."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import grpc

from tenantgate.cli import admin, events, queries, serving, tools
from tenantgate.cli.common import EXIT_ERROR, Handler
from tenantgate.errors import TenantgateError
from tenantgate.logs import configure_logging

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Each group of commands adds its own subcommands; every command's parser names its handler."""
    parser = argparse.ArgumentParser(prog="tenantgate", description=__doc__)
    # main logs a command's warnings as text to stderr, unless its parser sets logs_as_configured (serving's
    # do: a subcommand's defaults override the top parser's).
    parser.set_defaults(logs_as_configured=False)
    commands = parser.add_subparsers(dest="command", required=True)
    for group in (serving, admin, events, queries, tools):  # the order of `tenantgate --help`
        group.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.logs_as_configured:
        configure_logging(os.environ.get("TENANTGATE_LOG_LEVEL", "WARNING"), "text")
    handler: Handler = args.handler
    try:
        return handler(args)
    except TenantgateError as error:
        print(f"tenantgate {args.command}: {error.message}", file=sys.stderr)
        return EXIT_ERROR
    except grpc.RpcError as error:
        print(f"tenantgate {args.command}: {error.code().name}: {error.details()}", file=sys.stderr)
        return EXIT_ERROR
