"""What more than one group of commands shares: exit codes, the TLS options, the actor an admin call names."""

from __future__ import annotations

import argparse
import getpass
import os
from collections.abc import Callable

from tenantgate.channels import ChannelSecurity

EXIT_OK, EXIT_DENIED, EXIT_ERROR = 0, 1, 2

# What a command's parser names with set_defaults(handler=...): it runs the command and returns the exit code.
Handler = Callable[[argparse.Namespace], int]


def default_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def add_tls(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ca", default=os.environ.get("TENANTGATE_CA_FILE", ""),
                        help="CA of the server's certificate: use TLS (env TENANTGATE_CA_FILE)")
    parser.add_argument("--cert", default=os.environ.get("TENANTGATE_CERT_FILE", ""),
                        help="client certificate for mutual TLS (env TENANTGATE_CERT_FILE)")
    parser.add_argument("--key", default=os.environ.get("TENANTGATE_KEY_FILE", ""),
                        help="its private key (env TENANTGATE_KEY_FILE)")


def security(args: argparse.Namespace) -> ChannelSecurity:
    return ChannelSecurity(args.ca, args.cert, args.key)
