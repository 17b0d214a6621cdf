"""The ``tenantgate`` command: serve, apply manifests, and ask a running server from the shell."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

import grpc
import yaml
from google.protobuf import json_format

from tenantgate.channels import ChannelSecurity, open_channel
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
from tenantgate.errors import TenantgateError
from tenantgate.identity import CALLER_METADATA
from tenantgate.keywrap import MasterKey, generate_master_key_file, tenant_key_factory
from tenantgate.logs import configure_logging
from tenantgate.model import KeyState
from tenantgate.registry.manifest import load_manifests
from tenantgate.registry.store import (
    KeyFactory,
    RegistryAdmin,
    RegistrySettings,
    TenantInfo,
    open_admin,
    open_store,
)

EXIT_OK, EXIT_DENIED, EXIT_ERROR = 0, 1, 2


def _registry_default() -> str:
    return os.environ.get("TENANTGATE_REGISTRY", DEFAULT_REGISTRY)


def _add_registry(parser: argparse.ArgumentParser, *, admin: bool = False) -> None:
    where = ("sqlite:///path.db, postgresql://… or a server's Admin API grpc://host:port" if admin
             else "sqlite:///path.db or postgresql://…")
    parser.add_argument("--registry", default=None,
                        help=f"registry URL: {where} (env TENANTGATE_REGISTRY; default {DEFAULT_REGISTRY})")
    parser.add_argument("--master-key-file", default="",
                        help="file holding the base64 master key (env TENANTGATE_MASTER_KEY_FILE)")
    if admin:
        _add_tls(parser)
        parser.add_argument("--actor", default=os.environ.get("TENANTGATE_ACTOR", _default_actor()),
                            help="who the audit ledger records as making the change (env TENANTGATE_ACTOR)")


def _default_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _add_tls(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ca", default=os.environ.get("TENANTGATE_CA_FILE", ""),
                        help="CA of the server's certificate: use TLS (env TENANTGATE_CA_FILE)")
    parser.add_argument("--cert", default=os.environ.get("TENANTGATE_CERT_FILE", ""),
                        help="client certificate for mutual TLS (env TENANTGATE_CERT_FILE)")
    parser.add_argument("--key", default=os.environ.get("TENANTGATE_KEY_FILE", ""),
                        help="its private key (env TENANTGATE_KEY_FILE)")


def _security(args: argparse.Namespace) -> ChannelSecurity:
    return ChannelSecurity(args.ca, args.cert, args.key)


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default=os.environ.get("TENANTGATE_TARGET", DEFAULT_LISTEN),
                        help=f"server address (env TENANTGATE_TARGET; default {DEFAULT_LISTEN})")
    _add_tls(parser)
    parser.add_argument("--timeout", type=float, default=5.0, help="deadline in seconds (default 5)")
    parser.add_argument("--json", action="store_true", help="print the response as JSON")


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


def _serve_config(args: argparse.Namespace) -> ServeConfig:
    names = {field.name for field in dataclasses.fields(ServeConfig)}
    flags = {name: value for name, value in vars(args).items() if name in names and value is not None}
    if args.metrics_port is not None:
        flags.setdefault("metrics_listen", f"127.0.0.1:{args.metrics_port}")
    if "admins" in flags:
        flags["admins"] = tuple(flags["admins"])
    return load_serve_config(args.config, flags=flags)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tenantgate", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve DecisionService (and the Admin API) from a registry")
    _add_serve_settings(serve)
    config = commands.add_parser("config", help="the serving configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    _add_serve_settings(config_commands.add_parser(
        "show", help="print the effective configuration (file, then TENANTGATE_* variables, then flags), "
                     "secrets masked"))

    apply = commands.add_parser("apply", help="make the registry match manifests")
    _add_registry(apply, admin=True)
    apply.add_argument("-f", "--file", dest="files", action="append", required=True,
                       help="manifest file or directory (repeatable)")
    apply.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    apply.add_argument("--prune", action="store_true",
                       help="delete tenants the manifests do not define (Archived ones past their retention)")

    tenant = commands.add_parser("tenant", help="read tenants and move them through their lifecycle")
    tenant_commands = tenant.add_subparsers(dest="tenant_command", required=True)
    get = tenant_commands.add_parser("get", help="one tenant, its state and key versions")
    get.add_argument("tenant_id")
    listing = tenant_commands.add_parser("list", help="tenants in id order")
    listing.add_argument("--state", default="", help="only tenants in this state")
    listing.add_argument("--label", action="append", default=[], help="KEY=VALUE (repeatable)")
    listing.add_argument("--limit", type=int, default=100)
    transition = tenant_commands.add_parser("transition", help="Draft -> Active <-> Suspended -> Archived -> Deleted")
    transition.add_argument("tenant_id")
    transition.add_argument("state")
    transition.add_argument("--force", action="store_true", help="delete before the retention period ends")
    transition.add_argument("--reason", default="", help="recorded in the audit ledger with --force")
    for sub in (get, listing, transition):
        _add_registry(sub, admin=True)

    keys = commands.add_parser("keys", help="tenant key versions")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    rotate = keys_commands.add_parser("rotate", help="add a new primary version of a tenant key")
    rotate.add_argument("tenant_id")
    rotate.add_argument("--purpose", required=True)
    _add_registry(rotate, admin=True)
    for state in ("disable", "enable", "destroy"):
        change = keys_commands.add_parser(state, help=f"{state} one version of a tenant key"
                                          + (" (erases it for good)" if state == "destroy" else ""))
        change.add_argument("tenant_id")
        change.add_argument("--purpose", required=True)
        change.add_argument("--version", type=int, required=True)
        _add_registry(change, admin=True)
    floor = keys_commands.add_parser("min-version", help="stop serving versions below this one")
    floor.add_argument("tenant_id")
    floor.add_argument("--purpose", required=True)
    floor.add_argument("version", type=int)
    _add_registry(floor, admin=True)
    rewrap = keys_commands.add_parser("rewrap", help="rewrap every tenant key under a new master key "
                                                     "(one transaction; on the store, not through a server)")
    rewrap.add_argument("--new-master-key-file", required=True)
    _add_registry(rewrap, admin=True)

    audit = commands.add_parser("audit", help="the registry's audit ledger")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser("verify", help="recompute the hash chain; name the first broken entry")
    log_command = audit_commands.add_parser("log", help="read audit entries")
    log_command.add_argument("--tenant", default="")
    log_command.add_argument("--after", type=int, default=0, help="entries after this sequence number")
    log_command.add_argument("--limit", type=int, default=100)
    for sub in (verify, log_command):
        _add_registry(sub, admin=True)

    settings = commands.add_parser("settings", help="show or change registry settings")
    limit = settings.add_mutually_exclusive_group()
    limit.add_argument("--max-tenants", type=int, help="most tenants that are not Deleted")
    limit.add_argument("--no-max-tenants", action="store_true", help="remove the limit")
    _add_registry(settings, admin=True)

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

    usage = commands.add_parser("usage", help="quota units consumed and denied by a tenant (metering)")
    usage.add_argument("--tenant", required=True)
    usage.add_argument("--admin", default=os.environ.get("TENANTGATE_ADMIN_TARGET", DEFAULT_ADMIN_LISTEN),
                       help=f"a server's Admin API (env TENANTGATE_ADMIN_TARGET; default {DEFAULT_ADMIN_LISTEN})")
    usage.add_argument("--json", action="store_true", help="print the response as JSON")
    usage.add_argument("--actor", default=os.environ.get("TENANTGATE_ACTOR", _default_actor()),
                       help="the admin identity sent as x-tenantgate-caller (env TENANTGATE_ACTOR)")
    _add_tls(usage)

    resolve = commands.add_parser("resolve", help="describe a tenant as a running server sees it")
    _add_target(resolve)
    resolve.add_argument("--tenant", required=True)

    certs = commands.add_parser("certs", help="development certificates for mutual TLS")
    certs_commands = certs.add_subparsers(dest="certs_command", required=True)
    dev = certs_commands.add_parser("dev", help="a CA, a localhost server certificate and client certificates")
    dev.add_argument("--out", default=".tenantgate/certs")
    dev.add_argument("--service", dest="services", action="append", default=[],
                     help="a client identity service:NAME to issue (repeatable; default storage, backup, ops)")

    master = commands.add_parser("master-key", help="create a master key file")
    master.add_argument("path", help="where to write it (refuses to overwrite)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command not in ("serve", "config"):
        configure_logging(os.environ.get("TENANTGATE_LOG_LEVEL", "WARNING"), "text")
    handler = {"serve": _serve, "apply": _apply, "check": _check, "consume": _consume, "key": _key,
               "resolve": _resolve, "master-key": _master_key, "tenant": _tenant, "usage": _usage, "keys": _keys,
               "audit": _audit, "settings": _settings, "certs": _certs, "config": _config}[args.command]
    try:
        return handler(args)
    except TenantgateError as error:
        print(f"tenantgate {args.command}: {error.message}", file=sys.stderr)
        return EXIT_ERROR
    except grpc.RpcError as error:
        print(f"tenantgate {args.command}: {error.code().name}: {error.details()}", file=sys.stderr)
        return EXIT_ERROR


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


@contextmanager
def _admin_registry(args: argparse.Namespace) -> Iterator[RegistryAdmin]:
    """The registry the admin commands change: a store, or a server's Admin API (grpc://)."""
    registry = open_admin(args.registry or _registry_default(), _security(args), args.actor)
    try:
        yield registry
    finally:
        registry.close()


def _key_factory(args: argparse.Namespace) -> KeyFactory | None:
    master_key = master_key_from(args.master_key_file)
    return tenant_key_factory(master_key) if master_key is not None else None


def _apply(args: argparse.Namespace) -> int:
    documents = {doc.tenant.id: doc.document for doc in load_manifests(args.files)}
    with _admin_registry(args) as registry:
        result = registry.apply(documents, prune=args.prune, dry_run=args.dry_run, actor=args.actor,
                                key_factory=_key_factory(args))
    for change in result.changes:
        print(change.describe())
    if not result.changed:
        print(f"no changes; the registry is at revision {result.revision}")
    elif result.dry_run:
        print(f"dry run: {len(result.changes)} tenant(s) would change; nothing was applied")
    else:
        print(f"applied {len(result.changes)} change(s); the registry is at revision {result.revision}")
    return EXIT_OK


def _describe_tenant(info: TenantInfo) -> str:
    record = info.record
    lines = [f"{record.id}  {record.state} since {_when(record.state_since)}  revision {record.revision}"]
    lines.extend(f"  key {k.tenant_id}/{k.purpose}/v{k.version} {k.algorithm} {KeyState(k.state).name.lower()} "
                 f"created {_when(k.created_at)}" for k in info.keys)
    return "\n".join(lines)


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _tenant(args: argparse.Namespace) -> int:
    with _admin_registry(args) as registry:
        if args.tenant_command == "get":
            info = registry.get_tenant(args.tenant_id)
            print(_describe_tenant(info))
            print(json.dumps(info.record.document, indent=2, sort_keys=True))
        elif args.tenant_command == "list":
            labels = dict(label.partition("=")[::2] for label in args.label)
            for info in registry.list_tenants(state=args.state, labels=labels, limit=args.limit):
                print(_describe_tenant(info).splitlines()[0])
        else:
            result = registry.transition(args.tenant_id, args.state, actor=args.actor, force=args.force,
                                         reason=args.reason)
            if result.before == result.after:
                print(f"{result.tenant_id} is already {result.after}; nothing changed")
            else:
                print(f"{result.tenant_id}: {result.before} -> {result.after}; the registry is at revision "
                      f"{result.revision}")
    return EXIT_OK


def _keys(args: argparse.Namespace) -> int:
    if args.keys_command == "rewrap":
        return _rewrap(args)
    with _admin_registry(args) as registry:
        if args.keys_command == "rotate":
            result = registry.rotate_key(args.tenant_id, args.purpose, actor=args.actor,
                                         key_factory=_key_factory(args))
            key = result.key
            print(f"{key.tenant_id}/{key.purpose}/v{key.version} is the new primary key; the registry is at "
                  f"revision {result.revision}")
        elif args.keys_command == "min-version":
            revision = registry.update_key(args.tenant_id, args.purpose, min_decryption_version=args.version,
                                           actor=args.actor)
            print(f"{args.tenant_id}/{args.purpose}: versions below {args.version} are no longer served; the "
                  f"registry is at revision {revision}")
        else:
            state = {"disable": KeyState.DISABLED, "enable": KeyState.ENABLED, "destroy": KeyState.DESTROYED}
            revision = registry.update_key(args.tenant_id, args.purpose, version=args.version,
                                           state=int(state[args.keys_command]), actor=args.actor)
            print(f"{args.tenant_id}/{args.purpose}/v{args.version} is {state[args.keys_command].name.lower()}; "
                  f"the registry is at revision {revision}")
    return EXIT_OK


def _rewrap(args: argparse.Namespace) -> int:
    old = master_key_from(args.master_key_file)
    if old is None:
        print("tenantgate keys rewrap: the current master key is needed (--master-key-file or "
              "TENANTGATE_MASTER_KEY_FILE)", file=sys.stderr)
        return EXIT_ERROR
    new = MasterKey.from_file(args.new_master_key_file)

    def rewrap(tenant_id: str, purpose: str, version: int, wrapped: bytes) -> bytes:
        material = old.unwrap(wrapped, tenant_id=tenant_id, purpose=purpose, version=version)
        return new.wrap(material, tenant_id=tenant_id, purpose=purpose, version=version)

    store = open_store(args.registry or _registry_default())
    try:
        count = store.rewrap_keys(rewrap, actor=args.actor)
    finally:
        store.close()
    print(f"rewrapped {count} keys under the new master key; servers need it from now on")
    return EXIT_OK


def _audit(args: argparse.Namespace) -> int:
    with _admin_registry(args) as registry:
        if args.audit_command == "verify":
            verification = registry.verify_audit()
            if verification.ok:
                print(f"audit ledger intact: {verification.checked} entries verified")
                return EXIT_OK
            print(f"audit ledger BROKEN at entry {verification.first_broken}: {verification.problem} "
                  f"({verification.checked} entries before it verified)")
            return EXIT_DENIED
        for entry in registry.audit_entries(tenant_id=args.tenant, after_seq=args.after, limit=args.limit):
            print(f"{entry.seq:>6} {entry.at} {entry.actor:<16} {entry.action:<18} {entry.tenant_id or '-':<12} "
                  f"{_digests(entry.before_digest, entry.after_digest):<26} {entry.detail}")
    return EXIT_OK


def _digests(before: str, after: str) -> str:
    """The tenant document's digests before and after a change, by their first 12 hex digits ("none" where
    the tenant did not exist); "-" for entries that change no document."""
    if not before and not after:
        return "-"
    return f"{before[:12] or 'none'}->{after[:12] or 'none'}"


def _settings(args: argparse.Namespace) -> int:
    with _admin_registry(args) as registry:
        if args.max_tenants is not None or args.no_max_tenants:
            current = registry.update_settings(RegistrySettings(None if args.no_max_tenants else args.max_tenants),
                                               actor=args.actor)
        else:
            current = registry.settings()
    print(f"max_tenants: {current.max_tenants if current.max_tenants is not None else 'unlimited'}")
    return EXIT_OK


def _print(args: argparse.Namespace, message: object, line: str) -> None:
    if args.json:
        print(json.dumps(json_format.MessageToDict(message), indent=2))  # type: ignore[arg-type]
    else:
        print(line)


def _check(args: argparse.Namespace) -> int:
    from tenantgate.client import DecisionClient
    from tenantgate.v1 import decision_pb2 as pb

    with DecisionClient(args.target, timeout=args.timeout, security=_security(args)) as client:
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
    with DecisionClient(args.target, timeout=args.timeout, security=_security(args)) as client:
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

    with DecisionClient(args.target, timeout=args.timeout, caller=args.caller, security=_security(args)) as client:
        response = client.get_tenant_key(args.tenant, args.purpose, args.version)
    _print(args, response, f"{response.key_id} version={response.version} algorithm={response.algorithm} "
                           f"material={response.material.hex()}")
    return EXIT_OK


def _usage(args: argparse.Namespace) -> int:
    from tenantgate.v1 import registry_pb2, registry_pb2_grpc

    with open_channel(args.admin, _security(args)) as channel:
        response = registry_pb2_grpc.RegistryServiceStub(channel).GetQuotaUsage(
            registry_pb2.GetQuotaUsageRequest(tenant_id=args.tenant), timeout=10,
            metadata=((CALLER_METADATA, args.actor),))
    lines = [f"{'quota':<24} {'consumed':>14} {'denied':>14}"]
    lines += [f"{q.quota:<24} {q.consumed:>14} {q.denied:>14}" for q in response.quotas]
    _print(args, response, "\n".join(lines))
    return EXIT_OK


def _resolve(args: argparse.Namespace) -> int:
    from tenantgate.client import DecisionClient

    with DecisionClient(args.target, timeout=args.timeout, security=_security(args)) as client:
        response = client.resolve_tenant(args.tenant)
    print(json.dumps(json_format.MessageToDict(response), indent=2))
    return EXIT_OK


def _certs(args: argparse.Namespace) -> int:
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


if __name__ == "__main__":
    sys.exit(main())
