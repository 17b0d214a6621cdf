"""Local tools that need no registry or server: ``certs dev`` and ``master-key``."""

from __future__ import annotations

import argparse
import sys

from tenantgate.cli.common import EXIT_ERROR, EXIT_OK
from tenantgate.keywrap import generate_master_key_file


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    certs = commands.add_parser("certs", help="development certificates for mutual TLS")
    certs_commands = certs.add_subparsers(dest="certs_command", required=True)
    dev = certs_commands.add_parser("dev", help="a CA, a localhost server certificate and client certificates")
    dev.add_argument("--out", default=".tenantgate/certs")
    dev.add_argument("--service", dest="services", action="append", default=[],
                     help="a client identity service:NAME to issue (repeatable; default storage, backup, ops)")
    dev.set_defaults(handler=_certs_dev)

    master = commands.add_parser("master-key", help="create a master key file")
    master.add_argument("path", help="where to write it (refuses to overwrite)")
    master.set_defaults(handler=_master_key)


def _certs_dev(args: argparse.Namespace) -> int:
    from tenantgate.certs import make_dev_certificates

    services = args.services or ["storage", "backup", "ops"]
    for path in make_dev_certificates(args.out, services):
        print(path)
    print(f"development certificates for service:{', service:'.join(services)} (never use them in production)")
    return EXIT_OK


def _master_key(args: argparse.Namespace) -> int:
    try:
        generate_master_key_file(args.path)
    except FileExistsError:
        print(f"tenantgate master-key: {args.path} exists; keeping it", file=sys.stderr)
        return EXIT_ERROR
    print(f"wrote a new master key to {args.path} (keep it secret; tenant keys are wrapped under it)")
    return EXIT_OK
