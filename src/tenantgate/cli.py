"""The ``tenantgate`` command: serve, apply manifests, and ask a running server from the shell."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence

import grpc
from google.protobuf import json_format

from tenantgate.config import DEFAULT_LISTEN, DEFAULT_REGISTRY, ServeConfig, master_key_from
from tenantgate.errors import TenantgateError
from tenantgate.keywrap import ALGORITHM, generate_master_key_file, new_data_key
from tenantgate.registry.manifest import load_manifests
from tenantgate.registry.store import KeyFactory, open_store

EXIT_OK, EXIT_DENIED, EXIT_ERROR = 0, 1, 2


def _registry_default() -> str:
    return os.environ.get("TENANTGATE_REGISTRY", DEFAULT_REGISTRY)


def _add_registry(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", default=None,
                        help=f"registry URL (env TENANTGATE_REGISTRY; default {DEFAULT_REGISTRY})")
    parser.add_argument("--master-key-file", default="",
                        help="file holding the base64 master key (env TENANTGATE_MASTER_KEY_FILE)")


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default=os.environ.get("TENANTGATE_TARGET", DEFAULT_LISTEN),
                        help=f"server address (env TENANTGATE_TARGET; default {DEFAULT_LISTEN})")
    parser.add_argument("--timeout", type=float, default=5.0, help="deadline in seconds (default 5)")
    parser.add_argument("--json", action="store_true", help="print the response as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tenantgate", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("TENANTGATE_LOG_LEVEL", "INFO"))
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve DecisionService from a registry")
    _add_registry(serve)
    serve.add_argument("--listen", default=os.environ.get("TENANTGATE_LISTEN", DEFAULT_LISTEN))
    serve.add_argument("--quota-backend", default="memory://", help="quota counters (default memory://)")
    serve.add_argument("--sync-interval", type=float, default=0.2, help="registry poll interval in seconds")
    serve.add_argument("--max-concurrent-rpcs", type=int, default=1000)
    serve.add_argument("--grace-period", type=float, default=5.0, help="seconds to drain on SIGTERM")

    apply = commands.add_parser("apply", help="make the registry match manifests")
    _add_registry(apply)
    apply.add_argument("-f", "--file", dest="files", action="append", required=True,
                       help="manifest file or directory (repeatable)")
    apply.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    apply.add_argument("--prune", action="store_true", help="delete tenants the manifests do not define")

    check = commands.add_parser("check", help="ask a running server one access decision")
    _add_target(check)
    check.add_argument("--tenant", required=True, help="the tenant that owns the resource")
    who = check.add_mutually_exclusive_group(required=True)
    who.add_argument("--subject", help='e.g. "user:alice"')
    who.add_argument("--token", help="a bearer JWT")
    check.add_argument("--subject-tenant", default="", help="the subject's home tenant (default: --tenant)")
    check.add_argument("--action", required=True)
    check.add_argument("--resource", required=True)
    check.add_argument("--env", default="", help="environment, e.g. prod")

    consume = commands.add_parser("consume", help="spend (or release) quota on a running server")
    _add_target(consume)
    consume.add_argument("--tenant", required=True)
    consume.add_argument("--quota", dest="quotas", action="append", required=True,
                         help="NAME or NAME=AMOUNT (default amount 1; repeatable, all-or-nothing)")
    consume.add_argument("--release", action="store_true")
    consume.add_argument("--lease-id", default="", help="the lease to release (concurrency quotas)")
    consume.add_argument("--idempotency-key", default="")

    key = commands.add_parser("key", help="read a tenant key from a running server")
    _add_target(key)
    key.add_argument("--tenant", required=True)
    key.add_argument("--purpose", required=True)
    key.add_argument("--version", type=int, default=0)
    key.add_argument("--caller", default=os.environ.get("TENANTGATE_CALLER", ""),
                     help="caller identity sent as x-tenantgate-caller, e.g. service:storage")

    resolve = commands.add_parser("resolve", help="describe a tenant as a running server sees it")
    _add_target(resolve)
    resolve.add_argument("--tenant", required=True)

    master = commands.add_parser("master-key", help="create a master key file")
    master.add_argument("path", help="where to write it (refuses to overwrite)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler = {"serve": _serve, "apply": _apply, "check": _check, "consume": _consume, "key": _key,
               "resolve": _resolve, "master-key": _master_key}[args.command]
    try:
        return handler(args)
    except TenantgateError as error:
        print(f"tenantgate {args.command}: {error.message}", file=sys.stderr)
        return EXIT_ERROR
    except grpc.RpcError as error:
        print(f"tenantgate {args.command}: {error.code().name}: {error.details()}", file=sys.stderr)
        return EXIT_ERROR


def _serve(args: argparse.Namespace) -> int:
    from tenantgate.server.app import serve

    config = ServeConfig(registry_url=args.registry or _registry_default(), listen=args.listen,
                         quota_backend=args.quota_backend, master_key_file=args.master_key_file,
                         sync_interval=args.sync_interval, max_concurrent_rpcs=args.max_concurrent_rpcs,
                         grace_period=args.grace_period)
    master_key = master_key_from(config.master_key_file)
    if master_key is None:
        logging.getLogger("tenantgate").warning(
            "no master key configured: GetTenantKey will answer FAILED_PRECONDITION for every key")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(config, master_key))
    return EXIT_OK


def _apply(args: argparse.Namespace) -> int:
    documents = {doc.tenant.id: doc.document for doc in load_manifests(args.files)}
    master_key = master_key_from(args.master_key_file)
    key_factory: KeyFactory | None = None
    if master_key is not None:
        def key_factory(tenant_id: str, purpose: str, version: int) -> tuple[bytes, str]:
            return master_key.wrap(new_data_key(), tenant_id=tenant_id, purpose=purpose, version=version), ALGORITHM

    store = open_store(args.registry or _registry_default())
    try:
        result = store.apply(documents, prune=args.prune, dry_run=args.dry_run, key_factory=key_factory)
    finally:
        store.close()
    for change in result.changes:
        print(change.describe())
    if not result.changed:
        print(f"no changes; the registry is at revision {result.revision}")
    elif result.dry_run:
        print(f"dry run: {len(result.changes)} tenant(s) would change; nothing was applied")
    else:
        print(f"applied {len(result.changes)} change(s); the registry is at revision {result.revision}")
    return EXIT_OK


def _print(args: argparse.Namespace, message: object, line: str) -> None:
    if args.json:
        print(json.dumps(json_format.MessageToDict(message), indent=2))  # type: ignore[arg-type]
    else:
        print(line)


def _check(args: argparse.Namespace) -> int:
    from tenantgate.client import DecisionClient
    from tenantgate.v1 import decision_pb2 as pb

    with DecisionClient(args.target, timeout=args.timeout) as client:
        response = client.check_access(args.tenant, args.action, args.resource, subject=args.subject or "",
                                       token=args.token or "", subject_tenant_id=args.subject_tenant,
                                       environment=args.env)
    verdict = "ALLOWED" if response.allowed else "DENIED"
    reason = pb.DecisionReason.Name(response.reason).removeprefix("DECISION_REASON_")
    _print(args, response, f"{verdict} ({reason}) rule={response.rule or '-'} revision={response.revision} "
                           f"decision_id={response.decision_id}")
    return EXIT_OK if response.allowed else EXIT_DENIED


def _consume(args: argparse.Namespace) -> int:
    from tenantgate.client import DecisionClient

    items = []
    for text in args.quotas:
        name, _, amount = text.partition("=")
        items.append((name, int(amount) if amount else 1))
    with DecisionClient(args.target, timeout=args.timeout) as client:
        response = client.consume_quota(args.tenant, items, release=args.release, lease_id=args.lease_id,
                                        idempotency_key=args.idempotency_key)
    lines = [f"{'ALLOWED' if response.allowed else 'DENIED'} revision={response.revision}"]
    for item in response.results:
        retry = item.retry_after.seconds + item.retry_after.nanos / 1e9
        lines.append(f"  {item.quota}: {'ok' if item.allowed else 'over'} limit={item.limit} "
                     f"remaining={item.remaining}" + (f" retry_after={retry:.3f}s" if not item.allowed else "")
                     + (f" lease_id={item.lease_id}" if item.lease_id else "") + (" (shadow)" if item.shadow else ""))
    _print(args, response, "\n".join(lines))
    return EXIT_OK if response.allowed else EXIT_DENIED


def _key(args: argparse.Namespace) -> int:
    from tenantgate.client import DecisionClient

    with DecisionClient(args.target, timeout=args.timeout, caller=args.caller) as client:
        response = client.get_tenant_key(args.tenant, args.purpose, args.version)
    _print(args, response, f"{response.key_id} version={response.version} algorithm={response.algorithm} "
                           f"material={response.material.hex()}")
    return EXIT_OK


def _resolve(args: argparse.Namespace) -> int:
    from tenantgate.client import DecisionClient

    with DecisionClient(args.target, timeout=args.timeout) as client:
        response = client.resolve_tenant(args.tenant)
    print(json.dumps(json_format.MessageToDict(response), indent=2))
    return EXIT_OK


def _master_key(args: argparse.Namespace) -> int:
    try:
        generate_master_key_file(args.path)
    except FileExistsError:
        print(f"tenantgate master-key: {args.path} exists; keeping it", file=sys.stderr)
        return EXIT_ERROR
    print(f"wrote a new master key to {args.path} (keep it secret; tenant keys are wrapped under it)")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
