"""CloudEvents 1.0 (structured JSON) for audit ledger entries and quota usage: the one codec both sinks write
and the tests read back.

An audit event's ``id`` is the ledger sequence (``"42"``), its ``subject`` the tenant, its ``type`` one per
ledger action (``EVENT_TYPES``), its ``data`` every field of the entry, the chain hashes included, so a
consumer can check the chain itself (``entry_from_event`` then ``verify_chain``). No ledger entry holds key
material, so no event does. A usage event's ``id`` is ``usage/<tenant>/<period end>``: a restarted exporter
that reports the same period again reports it under the same id, which the NATS sink's deduplication drops.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tenantgate.errors import InvalidArgument
from tenantgate.registry.audit import AuditEntry

SPECVERSION = "1.0"
DEFAULT_SOURCE = "/tenantgate/registry"
TYPE_PREFIX = "dev.tenantgate."
USAGE_TYPE = "dev.tenantgate.usage.reported"

# One CloudEvents type per ledger action. An action this table does not know (one a newer registry writes) is
# published as dev.tenantgate.audit.<action>, never dropped: the stream must stay gap-free.
EVENT_TYPES: Mapping[str, str] = {
    "apply": "dev.tenantgate.registry.applied",
    "settings.update": "dev.tenantgate.registry.settings_updated",
    "master_key.rewrap": "dev.tenantgate.registry.master_key_rewrapped",
    "tenant.create": "dev.tenantgate.tenant.created",
    "tenant.update": "dev.tenantgate.tenant.updated",
    "tenant.transition": "dev.tenantgate.tenant.transitioned",
    "tenant.delete": "dev.tenantgate.tenant.deleted",
    "tenant.force": "dev.tenantgate.tenant.deletion_forced",
    "key.create": "dev.tenantgate.key.created",
    "key.rotate": "dev.tenantgate.key.rotated",
    "key.enabled": "dev.tenantgate.key.enabled",
    "key.disabled": "dev.tenantgate.key.disabled",
    "key.destroyed": "dev.tenantgate.key.destroyed",
    "key.min_decryption_version": "dev.tenantgate.key.min_decryption_version_changed",
    "plan.create": "dev.tenantgate.plan.created",
    "plan.update": "dev.tenantgate.plan.updated",
    "plan.delete": "dev.tenantgate.plan.deleted",
}
_ACTION = re.compile(r"[a-z0-9_]+(?:\.[a-z0-9_]+)*")
# A tenant id as the registry allows it is one NATS subject token as it is; anything else (never written by
# this registry, but the ledger may come from a server we do not control) goes to one catch-all token.
_TENANT_TOKEN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
NO_TENANT_TOKEN = "_registry"
OTHER_TENANT_TOKEN = "_other"

# A JetStream message is at most 1 MiB by default; an apply of many tenants writes a long detail. Past this the
# detail is cut (on a character boundary) and the event says so; the full entry stays in the registry.
MAX_DETAIL_BYTES = 64 * 1024
# What a reader accepts as one event (a line of the file sink, a message of the stream), before parsing it.
MAX_EVENT_BYTES = 1024 * 1024
MAX_USAGE_QUOTAS = 1024


@dataclass(frozen=True, slots=True)
class OutboundEvent:
    """An encoded event and where it goes: ``msg_id`` for deduplication, ``token`` the subject's last token."""

    msg_id: str
    token: str
    body: bytes


def event_type(action: str) -> str:
    known = EVENT_TYPES.get(action)
    if known is not None:
        return known
    return f"{TYPE_PREFIX}audit.{action}" if _ACTION.fullmatch(action) and len(action) <= 64 else \
        f"{TYPE_PREFIX}audit.unknown"


def tenant_token(tenant_id: str) -> str:
    if not tenant_id:
        return NO_TENANT_TOKEN
    return tenant_id if _TENANT_TOKEN.fullmatch(tenant_id) else OTHER_TENANT_TOKEN


def _encode(event: Mapping[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()


def _cut(text: str, limit: int) -> str:
    return text.encode()[:limit].decode(errors="ignore")


def audit_event(entry: AuditEntry, source: str = DEFAULT_SOURCE) -> dict[str, Any]:
    data: dict[str, Any] = {
        "seq": entry.seq, "action": entry.action, "actor": entry.actor, "tenant_id": entry.tenant_id,
        "before_digest": entry.before_digest, "after_digest": entry.after_digest, "detail": entry.detail,
        "prev_hash": entry.prev_hash, "hash": entry.hash,
    }
    size = len(entry.detail.encode())
    if size > MAX_DETAIL_BYTES:
        data.update(detail=_cut(entry.detail, MAX_DETAIL_BYTES), detail_truncated=True, detail_bytes=size)
    event: dict[str, Any] = {"specversion": SPECVERSION, "id": str(entry.seq), "source": source,
                             "type": event_type(entry.action), "time": entry.at,
                             "datacontenttype": "application/json", "data": data}
    if entry.tenant_id:
        event["subject"] = entry.tenant_id
    return event


def encode_audit(entry: AuditEntry, source: str = DEFAULT_SOURCE) -> OutboundEvent:
    return OutboundEvent(str(entry.seq), tenant_token(entry.tenant_id), _encode(audit_event(entry, source)))


def decode(body: bytes) -> dict[str, Any]:
    """One event read back (from a file line or a stream message): a JSON object of CloudEvents 1.0, bounded."""
    if len(body) > MAX_EVENT_BYTES:
        raise InvalidArgument(f"an event of {len(body)} bytes is over the {MAX_EVENT_BYTES}-byte bound")
    try:
        event = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgument(f"not a JSON event: {exc}") from exc
    if not isinstance(event, dict) or event.get("specversion") != SPECVERSION or not isinstance(event.get("id"), str):
        raise InvalidArgument("not a CloudEvents 1.0 event (specversion and a string id required)")
    return event


def audit_position(body: bytes) -> tuple[int, str]:
    """(ledger sequence, entry hash) of an encoded audit event: where an exporter resumes, and what it checks
    the registry's entry against."""
    event = decode(body)
    data = event.get("data")
    seq_text = event["id"]
    if not (seq_text.isascii() and seq_text.isdigit() and 0 < len(seq_text) <= 18) or not isinstance(data, dict) \
            or data.get("seq") != int(seq_text) or not isinstance(data.get("hash"), str):
        raise InvalidArgument(f"not a tenantgate audit event (id {seq_text[:40]!r})")
    return int(seq_text), data["hash"]


def entry_from_event(event: Mapping[str, Any]) -> AuditEntry:
    """The ledger entry an audit event carries (its detail cut short when ``detail_truncated``: then the entry's
    hash does not verify, and the registry has the whole entry)."""
    data = event.get("data")
    if not isinstance(data, dict):
        raise InvalidArgument("an audit event needs a data object")
    try:
        return AuditEntry(int(data["seq"]), str(event["time"]), str(data["actor"]), str(data["action"]),
                          str(data["tenant_id"]), str(data["before_digest"]), str(data["after_digest"]),
                          str(data["detail"]), str(data["prev_hash"]), str(data["hash"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArgument(f"an audit event's data lacks {exc}") from exc


def iso_time(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class UsageReport:
    """One tenant's cumulative units per quota at the end of a period, and what it was at the previous report
    of this exporter (None for its first, after a start: then no delta is claimed)."""

    tenant_id: str
    period_end: int  # seconds since the epoch, a multiple of the interval
    interval: int
    totals: Mapping[str, tuple[int, int]]  # quota -> (consumed, denied), since the counters began
    previous: Mapping[str, tuple[int, int]] | None = None
    previous_end: int | None = None


def _quota_usage(now: tuple[int, int], before: tuple[int, int] | None) -> dict[str, Any]:
    consumed, denied = now
    usage: dict[str, Any] = {"consumed": consumed, "denied": denied}
    if before is not None:
        # Counters that went down were reset (Redis lost them): everything counted since is new.
        reset = consumed < before[0] or denied < before[1]
        usage["consumed_delta"] = consumed if reset else consumed - before[0]
        usage["denied_delta"] = denied if reset else denied - before[1]
        if reset:
            usage["reset"] = True
    return usage


def usage_event(report: UsageReport, source: str = DEFAULT_SOURCE) -> dict[str, Any]:
    names = sorted(report.totals)
    quotas = {name: _quota_usage(report.totals[name], None if report.previous is None else
                                 report.previous.get(name, (0, 0)))
              for name in names[:MAX_USAGE_QUOTAS]}
    data: dict[str, Any] = {
        "tenant_id": report.tenant_id, "interval_seconds": report.interval, "period_end": iso_time(report.period_end),
        "previous_period_end": None if report.previous_end is None else iso_time(report.previous_end),
        "quotas": quotas,
    }
    if len(names) > MAX_USAGE_QUOTAS:
        data["quotas_truncated"] = True
    return {"specversion": SPECVERSION, "id": f"usage/{report.tenant_id}/{report.period_end}", "source": source,
            "type": USAGE_TYPE, "subject": report.tenant_id, "time": iso_time(report.period_end),
            "datacontenttype": "application/json", "data": data}


def encode_usage(report: UsageReport, source: str = DEFAULT_SOURCE) -> OutboundEvent:
    event = usage_event(report, source)
    return OutboundEvent(event["id"], tenant_token(report.tenant_id), _encode(event))
