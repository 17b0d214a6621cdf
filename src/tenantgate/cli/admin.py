"""Registry administration: ``apply``, ``tenant``, ``keys``, ``audit`` and ``settings``, on a store
(sqlite://, postgresql://) or through a server's Admin API (grpc://)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from tenantgate.adminapi.client import open_admin
from tenantgate.cli.common import EXIT_DENIED, EXIT_ERROR, EXIT_OK, add_tls, default_actor, security
from tenantgate.config import DEFAULT_REGISTRY, master_key_from
from tenantgate.keywrap import MasterKey, tenant_key_factory
from tenantgate.model import KeyState, key_id
from tenantgate.registry.backends import open_store
from tenantgate.registry.manifest import load_manifests
from tenantgate.registry.records import KeyFactory, RegistryAdmin, RegistrySettings, TenantInfo, named


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _register_apply(commands)
    _register_tenant(commands)
    _register_keys(commands)
    _register_audit(commands)
    _register_settings(commands)


def _add_registry(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", default=None,
                        help="registry URL: sqlite:///path.db, postgresql://… or a server's Admin API "
                             f"grpc://host:port (env TENANTGATE_REGISTRY; default {DEFAULT_REGISTRY})")
    parser.add_argument("--master-key-file", default="",
                        help="file holding the base64 master key (env TENANTGATE_MASTER_KEY_FILE)")
    add_tls(parser)
    parser.add_argument("--actor", default=os.environ.get("TENANTGATE_ACTOR", default_actor()),
                        help="who the audit ledger records as making the change (env TENANTGATE_ACTOR)")


def _registry_url(args: argparse.Namespace) -> str:
    return args.registry or os.environ.get("TENANTGATE_REGISTRY", DEFAULT_REGISTRY)


@contextmanager
def _admin_registry(args: argparse.Namespace) -> Iterator[RegistryAdmin]:
    """The registry the admin commands change: a store, or a server's Admin API (grpc://)."""
    registry = open_admin(_registry_url(args), security(args), args.actor)
    try:
        yield registry
    finally:
        registry.close()


def _key_factory(args: argparse.Namespace) -> KeyFactory | None:
    master_key = master_key_from(args.master_key_file)
    return tenant_key_factory(master_key) if master_key is not None else None


# apply

def _register_apply(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    apply = commands.add_parser("apply", help="make the registry match manifests")
    _add_registry(apply)
    apply.add_argument("-f", "--file", dest="files", action="append", required=True,
                       help="manifest file or directory (repeatable)")
    apply.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    apply.add_argument("--prune", action="store_true",
                       help="delete tenants the manifests do not define (Archived ones past their retention) "
                            "and plans they do not define (those no tenant names)")
    apply.set_defaults(handler=_apply)


def _apply(args: argparse.Namespace) -> int:
    manifests = load_manifests(args.files)
    with _admin_registry(args) as registry:
        result = registry.apply(manifests, prune=args.prune, dry_run=args.dry_run, actor=args.actor,
                                key_factory=_key_factory(args))
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for plan in result.plans:
        print(plan.describe())
    for change in result.changes:
        print(change.describe())
    if result.quota_change_count:
        print(f"effective quotas change for {result.quota_change_count} tenant(s): "
              f"{named(result.quota_changes, result.quota_change_count)}")
    plans = f" and {len(result.plans)} plan(s)" if result.plans else ""
    if not result.changed:
        print(f"no changes; the registry is at revision {result.revision}")
    elif result.dry_run:
        print(f"dry run: {len(result.changes)} tenant(s){plans} would change; nothing was applied")
    else:
        print(f"applied {len(result.changes) + len(result.plans)} change(s); the registry is at revision "
              f"{result.revision}")
        if any(len(plan.tenants) < plan.tenant_count for plan in result.plans):
            print(f"the change feed (WatchChanges) at revision {result.revision} names every tenant it changed")
    return EXIT_OK


# tenant get | list | transition

def _register_tenant(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        _add_registry(sub)
    get.set_defaults(handler=_tenant_get)
    listing.set_defaults(handler=_tenant_list)
    transition.set_defaults(handler=_tenant_transition)


def _tenant_get(args: argparse.Namespace) -> int:
    with _admin_registry(args) as registry:
        info = registry.get_tenant(args.tenant_id)
        print(_describe_tenant(info))
        print(json.dumps(info.record.document, indent=2, sort_keys=True))
    return EXIT_OK


def _tenant_list(args: argparse.Namespace) -> int:
    labels = dict(label.partition("=")[::2] for label in args.label)
    with _admin_registry(args) as registry:
        for info in registry.list_tenants(state=args.state, labels=labels, limit=args.limit):
            print(_describe_tenant(info).splitlines()[0])
    return EXIT_OK


def _tenant_transition(args: argparse.Namespace) -> int:
    with _admin_registry(args) as registry:
        result = registry.transition(args.tenant_id, args.state, actor=args.actor, force=args.force,
                                     reason=args.reason)
        if result.before == result.after:
            print(f"{result.tenant_id} is already {result.after}; nothing changed")
        else:
            print(f"{result.tenant_id}: {result.before} -> {result.after}; the registry is at revision "
                  f"{result.revision}")
    return EXIT_OK


def _describe_tenant(info: TenantInfo) -> str:
    record = info.record
    lines = [f"{record.id}  {record.state} since {_when(record.state_since)}  revision {record.revision}"]
    lines.extend(f"  key {k.key_id} {k.algorithm} {KeyState(k.state).name.lower()} "
                 f"created {_when(k.created_at)}" for k in info.keys)
    return "\n".join(lines)


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# keys rotate | disable | enable | destroy | min-version | rewrap

_KEY_STATES = {"disable": KeyState.DISABLED, "enable": KeyState.ENABLED, "destroy": KeyState.DESTROYED}


def _register_keys(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="tenant key versions")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    rotate = keys_commands.add_parser("rotate", help="add a new primary version of a tenant key")
    rotate.add_argument("tenant_id")
    rotate.add_argument("--purpose", required=True)
    _add_registry(rotate)
    rotate.set_defaults(handler=_keys_rotate)
    for state in _KEY_STATES:
        change = keys_commands.add_parser(state, help=f"{state} one version of a tenant key"
                                          + (" (erases it for good)" if state == "destroy" else ""))
        change.add_argument("tenant_id")
        change.add_argument("--purpose", required=True)
        change.add_argument("--version", type=int, required=True)
        _add_registry(change)
        change.set_defaults(handler=_keys_set_state)
    floor = keys_commands.add_parser("min-version", help="stop serving versions below this one")
    floor.add_argument("tenant_id")
    floor.add_argument("--purpose", required=True)
    floor.add_argument("version", type=int)
    _add_registry(floor)
    floor.set_defaults(handler=_keys_min_version)
    rewrap = keys_commands.add_parser("rewrap", help="rewrap every tenant key under a new master key "
                                                     "(one transaction; on the store, not through a server)")
    rewrap.add_argument("--new-master-key-file", required=True)
    _add_registry(rewrap)
    rewrap.set_defaults(handler=_keys_rewrap)


def _keys_rotate(args: argparse.Namespace) -> int:
    with _admin_registry(args) as registry:
        result = registry.rotate_key(args.tenant_id, args.purpose, actor=args.actor,
                                     key_factory=_key_factory(args))
        key = result.key
        print(f"{key.key_id} is the new primary key; the registry is at "
              f"revision {result.revision}")
    return EXIT_OK


def _keys_set_state(args: argparse.Namespace) -> int:
    state = _KEY_STATES[args.keys_command]
    with _admin_registry(args) as registry:
        revision = registry.update_key(args.tenant_id, args.purpose, version=args.version, state=int(state),
                                       actor=args.actor)
        print(f"{key_id(args.tenant_id, args.purpose, args.version)} is {state.name.lower()}; "
              f"the registry is at revision {revision}")
    return EXIT_OK


def _keys_min_version(args: argparse.Namespace) -> int:
    with _admin_registry(args) as registry:
        revision = registry.update_key(args.tenant_id, args.purpose, min_decryption_version=args.version,
                                       actor=args.actor)
        print(f"{args.tenant_id}/{args.purpose}: versions below {args.version} are no longer served; the "
              f"registry is at revision {revision}")
    return EXIT_OK


def _keys_rewrap(args: argparse.Namespace) -> int:
    old = master_key_from(args.master_key_file)
    if old is None:
        print("tenantgate keys rewrap: the current master key is needed (--master-key-file or "
              "TENANTGATE_MASTER_KEY_FILE)", file=sys.stderr)
        return EXIT_ERROR
    new = MasterKey.from_file(args.new_master_key_file)

    def rewrap(tenant_id: str, purpose: str, version: int, wrapped: bytes) -> bytes:
        material = old.unwrap(wrapped, tenant_id=tenant_id, purpose=purpose, version=version)
        return new.wrap(material, tenant_id=tenant_id, purpose=purpose, version=version)

    store = open_store(_registry_url(args))
    try:
        count = store.rewrap_keys(rewrap, actor=args.actor)
    finally:
        store.close()
    print(f"rewrapped {count} keys under the new master key; servers need it from now on")
    return EXIT_OK


# audit verify | log

def _register_audit(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = commands.add_parser("audit", help="the registry's audit ledger")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser("verify", help="recompute the hash chain; name the first broken entry")
    log_command = audit_commands.add_parser("log", help="read audit entries")
    log_command.add_argument("--tenant", default="")
    log_command.add_argument("--after", type=int, default=0, help="entries after this sequence number")
    log_command.add_argument("--limit", type=int, default=100)
    for sub in (verify, log_command):
        _add_registry(sub)
    verify.set_defaults(handler=_audit_verify)
    log_command.set_defaults(handler=_audit_log)


def _audit_verify(args: argparse.Namespace) -> int:
    with _admin_registry(args) as registry:
        verification = registry.verify_audit()
        if verification.ok:
            print(f"audit ledger intact: {verification.checked} entries verified")
            return EXIT_OK
        print(f"audit ledger BROKEN at entry {verification.first_broken}: {verification.problem} "
              f"({verification.checked} entries before it verified)")
    return EXIT_DENIED


def _audit_log(args: argparse.Namespace) -> int:
    with _admin_registry(args) as registry:
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


# settings

def _register_settings(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    settings = commands.add_parser("settings", help="show or change registry settings")
    limit = settings.add_mutually_exclusive_group()
    limit.add_argument("--max-tenants", type=int, help="most tenants that are not Deleted")
    limit.add_argument("--no-max-tenants", action="store_true", help="remove the limit")
    _add_registry(settings)
    settings.set_defaults(handler=_settings)


def _settings(args: argparse.Namespace) -> int:
    with _admin_registry(args) as registry:
        if args.max_tenants is not None or args.no_max_tenants:
            current = registry.update_settings(RegistrySettings(None if args.no_max_tenants else args.max_tenants),
                                               actor=args.actor)
        else:
            current = registry.settings()
    print(f"max_tenants: {current.max_tenants if current.max_tenants is not None else 'unlimited'}")
    return EXIT_OK
