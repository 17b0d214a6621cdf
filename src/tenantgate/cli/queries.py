"""Questions to a running server: ``check``, ``consume``, ``key``, ``resolve``, ``subject-tenants`` and
``check-tenant`` on its decision API, ``usage`` on its Admin API."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

import grpc
from google.protobuf import json_format

from tenantgate.channels import open_channel
from tenantgate.cli.common import EXIT_DENIED, EXIT_OK, add_tls, default_actor, security
from tenantgate.config import DEFAULT_ADMIN_LISTEN, DEFAULT_LISTEN
from tenantgate.identity import CALLER_METADATA

if TYPE_CHECKING:
    from tenantgate.client import Client
    from tenantgate.v1.decision_pb2 import HeldRole
    from tenantgate.v1.decision_pb2_grpc import DecisionServiceStub


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    check.set_defaults(handler=_check)

    consume = commands.add_parser("consume", help="spend (or release) quota on a running server")
    _add_target(consume)
    consume.add_argument("--tenant", required=True)
    consume.add_argument("--quota", dest="quotas", action="append", required=True,
                         help="NAME or NAME=AMOUNT (default amount 1; repeatable, all-or-nothing)")
    consume.add_argument("--release", action="store_true")
    consume.add_argument("--lease-id", default="", help="the lease to release (concurrency quotas)")
    consume.add_argument("--idempotency-key", default="")
    consume.set_defaults(handler=_consume)

    key = commands.add_parser("key", help="read a tenant key from a running server")
    _add_target(key)
    key.add_argument("--tenant", required=True)
    key.add_argument("--purpose", required=True)
    key.add_argument("--version", type=int, default=0)
    key.add_argument("--caller", default=os.environ.get("TENANTGATE_CALLER", ""),
                     help="caller identity sent as x-tenantgate-caller, e.g. service:storage")
    key.set_defaults(handler=_key)

    usage = commands.add_parser("usage", help="quota units consumed and denied by a tenant (metering)")
    usage.add_argument("--tenant", required=True)
    usage.add_argument("--admin", default=os.environ.get("TENANTGATE_ADMIN_TARGET", DEFAULT_ADMIN_LISTEN),
                       help=f"a server's Admin API (env TENANTGATE_ADMIN_TARGET; default {DEFAULT_ADMIN_LISTEN})")
    usage.add_argument("--json", action="store_true", help="print the response as JSON")
    usage.add_argument("--actor", default=os.environ.get("TENANTGATE_ACTOR", default_actor()),
                       help="the admin identity sent as x-tenantgate-caller (env TENANTGATE_ACTOR)")
    add_tls(usage)
    usage.set_defaults(handler=_usage)

    resolve = commands.add_parser("resolve", help="describe a tenant as a running server sees it")
    _add_target(resolve)
    resolve.add_argument("--tenant", required=True)
    resolve.set_defaults(handler=_resolve)

    listing = commands.add_parser("subject-tenants", help="the tenants a subject may use (ListSubjectTenants)")
    _add_target(listing)
    _add_subject(listing, "the subject's home tenant (required with --subject)")
    listing.add_argument("--include-inactive", action="store_true", help="list Draft and Archived tenants too")
    listing.add_argument("--page-size", type=_page_size, default=0,
                         help="tenants per page (default 100, at most 1000)")
    listing.add_argument("--page-token", type=_text, default="", help="start at the page a previous listing named")
    listing.add_argument("--all", action="store_true", help="follow every page (otherwise one page)")
    listing.set_defaults(handler=_subject_tenants)

    tenant_check = commands.add_parser("check-tenant", help="may a subject use a tenant at all (CheckTenantAccess)")
    _add_target(tenant_check)
    tenant_check.add_argument("--tenant", type=_text, required=True, help="the tenant the subject wants to use")
    _add_subject(tenant_check, "the subject's home tenant (default: --tenant)")
    tenant_check.set_defaults(handler=_check_tenant)


def _add_subject(parser: argparse.ArgumentParser, home_help: str) -> None:
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--subject", type=_text, help='e.g. "user:alice"')
    who.add_argument("--token", type=_text, help="a bearer JWT")
    parser.add_argument("--subject-tenant", type=_text, default="", help=home_help)
    parser.add_argument("--env", type=_text, default="", help="only bindings that apply in this environment, e.g. prod")


# What a request's page_size (a uint32) can carry; the server refuses more than its maximum (1000) itself.
_MAX_UINT32 = 2**32 - 1
_MAX_TIMEOUT = 86400


def _page_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= _MAX_UINT32:
        raise argparse.ArgumentTypeError(f"{text} is not a page size: 0 (the server's default, 100) up to the "
                                         "server's maximum (1000)")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    # gRPC turns a deadline past its clock's range (about 1e10 s) into one already passed: refuse it here.
    if not 0 < value <= _MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(f"{text} is not a deadline: seconds above 0, at most {_MAX_TIMEOUT}")
    return value


def _text(text: str) -> str:
    """An argument as it goes on the wire: protobuf strings are UTF-8, and a command line may hold bytes that are
    not (Python keeps them as surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"{text!a} is not valid UTF-8") from None
    return text


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default=os.environ.get("TENANTGATE_TARGET", DEFAULT_LISTEN),
                        help=f"server address (env TENANTGATE_TARGET; default {DEFAULT_LISTEN})")
    add_tls(parser)
    parser.add_argument("--timeout", type=_seconds, default=5.0, help="deadline in seconds (default 5)")
    parser.add_argument("--json", action="store_true", help="print the response as JSON")


def _print(args: argparse.Namespace, message: object, line: str) -> None:
    """The response as JSON with --json, else the command's one-line (or one-table) summary."""
    if args.json:
        print(json.dumps(json_format.MessageToDict(message), indent=2))  # type: ignore[arg-type]
    else:
        print(line)


def _client(args: argparse.Namespace, caller: str = "") -> Client:
    """A client for the one server a command names: each call made once, whatever the server's health says,
    so that the command prints what that server answers."""
    from tenantgate.client import NO_RETRIES, Client, ClientConfig

    return Client(ClientConfig(args.target, timeout=args.timeout, caller=caller, security=security(args),
                               retry=NO_RETRIES, health_check=False))


def _check(args: argparse.Namespace) -> int:
    with _client(args) as client:
        decision = client.check_access(args.tenant, args.action, args.resource, subject=args.subject or "",
                                       token=args.token or "", subject_tenant_id=args.subject_tenant,
                                       environment=args.env)
    verdict = "ALLOWED" if decision.allowed else "DENIED"
    _print(args, decision.wire, f"{verdict} ({decision.reason}) rule={decision.rule or '-'} "
                                f"revision={decision.revision} decision_id={decision.decision_id}")
    return EXIT_OK if decision.allowed else EXIT_DENIED


def _consume(args: argparse.Namespace) -> int:
    items = []
    for text in args.quotas:
        name, _, amount = text.partition("=")
        items.append((name, int(amount) if amount else 1))
    with _client(args) as client:
        result = client.consume_quota(args.tenant, items, release=args.release, lease_id=args.lease_id,
                                      idempotency_key=args.idempotency_key)
    lines = [f"{'ALLOWED' if result.allowed else 'DENIED'} revision={result.revision}"]
    for item in result.items:
        lines.append(f"  {item.quota}: {'ok' if item.allowed else 'over'} limit={item.limit} "
                     f"remaining={item.remaining}"
                     + (f" retry_after={item.retry_after:.3f}s" if not item.allowed else "")
                     + (f" lease_id={item.lease_id}" if item.lease_id else "") + (" (shadow)" if item.shadow else ""))
    _print(args, result.wire, "\n".join(lines))
    return EXIT_OK if result.allowed else EXIT_DENIED


def _key(args: argparse.Namespace) -> int:
    with _client(args, caller=args.caller) as client:
        key = client.get_tenant_key(args.tenant, args.purpose, version=args.version)
    _print(args, key.wire, f"{key.key_id} version={key.version} algorithm={key.algorithm} "
                           f"material={key.material.hex()}")
    return EXIT_OK


def _usage(args: argparse.Namespace) -> int:
    from tenantgate.v1 import registry_pb2, registry_pb2_grpc

    with open_channel(args.admin, security(args)) as channel:
        response = registry_pb2_grpc.RegistryServiceStub(channel).GetQuotaUsage(
            registry_pb2.GetQuotaUsageRequest(tenant_id=args.tenant), timeout=10,
            metadata=((CALLER_METADATA, args.actor),))
    lines = [f"{'quota':<24} {'consumed':>14} {'denied':>14}"]
    lines += [f"{q.quota:<24} {q.consumed:>14} {q.denied:>14}" for q in response.quotas]
    _print(args, response, "\n".join(lines))
    return EXIT_OK


def _resolve(args: argparse.Namespace) -> int:
    with _client(args) as client:
        tenant = client.resolve_tenant(args.tenant)
    print(json.dumps(json_format.MessageToDict(tenant.wire), indent=2))  # type: ignore[arg-type]
    return EXIT_OK


def _decision_stub(args: argparse.Namespace) -> tuple[grpc.Channel, DecisionServiceStub]:
    from tenantgate.v1 import decision_pb2_grpc

    channel = open_channel(args.target, security(args))
    return channel, decision_pb2_grpc.DecisionServiceStub(channel)


def _held(roles: Iterable[HeldRole], grants: Iterable[str]) -> str:
    held = [f"{r.role}" + (f" via {r.group}" if r.group else "")
            + (f" in {','.join(r.environments)}" if r.environments else "") for r in roles]
    return "; ".join([*held, *grants]) or "-"


def _subject_tenants(args: argparse.Namespace) -> int:
    from tenantgate.v1 import decision_pb2

    request = decision_pb2.ListSubjectTenantsRequest(
        subject=args.subject or "", token=args.token or "", subject_tenant_id=args.subject_tenant,
        environment=args.env, include_inactive=args.include_inactive, page_size=args.page_size,
        page_token=args.page_token)
    channel, stub = _decision_stub(args)
    with channel:
        pages = [stub.ListSubjectTenants(request, timeout=args.timeout)]
        while args.all and pages[-1].next_page_token:
            request.page_token = pages[-1].next_page_token
            pages.append(stub.ListSubjectTenants(request, timeout=args.timeout))
    first = pages[0]
    if first.reason != decision_pb2.DECISION_REASON_ALLOWED:
        _print(args, first, f"DENIED ({_reason_name(first.reason)}) {first.detail}")
        return EXIT_DENIED
    if args.json:
        answer = decision_pb2.ListSubjectTenantsResponse()
        answer.CopyFrom(pages[-1])
        del answer.tenants[:]
        answer.tenants.extend(entry for page in pages for entry in page.tenants)
        _print(args, answer, "")
        return EXIT_OK
    lines = [f"{first.subject_tenant_id}/{first.subject} at revision {pages[-1].revision}:"]
    lines += [f"  {entry.tenant_id:<24} {decision_pb2.TenantState.Name(entry.state).removeprefix('TENANT_STATE_'):<10}"
              f" {'ALLOWED' if entry.allowed else 'DENIED (' + _reason_name(entry.reason) + ')':<30}"
              f" {_held(entry.roles, entry.grants)}"
              for page in pages for entry in page.tenants]
    if pages[-1].next_page_token:
        lines.append(f"more: --page-token {pages[-1].next_page_token}")
    print("\n".join(lines))
    return EXIT_OK


def _check_tenant(args: argparse.Namespace) -> int:
    from tenantgate.v1 import decision_pb2

    request = decision_pb2.CheckTenantAccessRequest(
        tenant_id=args.tenant, subject=args.subject or "", token=args.token or "",
        subject_tenant_id=args.subject_tenant, environment=args.env)
    channel, stub = _decision_stub(args)
    with channel:
        answer = stub.CheckTenantAccess(request, timeout=args.timeout)
    verdict = "ALLOWED" if answer.allowed else "DENIED"
    _print(args, answer, f"{verdict} ({_reason_name(answer.reason)}) revision={answer.revision} "
                         f"{_held(answer.roles, answer.grants)}")
    return EXIT_OK if answer.allowed else EXIT_DENIED


def _reason_name(reason: int) -> str:
    from tenantgate.v1 import decision_pb2

    return decision_pb2.DecisionReason.Name(reason).removeprefix("DECISION_REASON_")
