"""The CloudEvents codec: audit entries round-trip through it, every ledger action has its type, hostile events
read back are refused with a clear error."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tenantgate.errors import InvalidArgument
from tenantgate.events.cloudevents import (
    EVENT_TYPES,
    MAX_DETAIL_BYTES,
    MAX_EVENT_BYTES,
    NO_TENANT_TOKEN,
    OTHER_TENANT_TOKEN,
    UsageReport,
    audit_position,
    decode,
    encode_audit,
    encode_usage,
    entry_from_event,
    event_type,
    tenant_token,
)
from tenantgate.model import KeyState
from tenantgate.registry.audit import GENESIS, AuditEntry, entry_hash, verify_chain

REGISTRY_SOURCE = Path(__file__).resolve().parents[3] / "src" / "tenantgate" / "registry"


def ledger(*rows: tuple[str, str, str, str, str]) -> list[AuditEntry]:
    """A hash-chained ledger of (action, tenant, before, after, detail) rows, as the registry writes one."""
    entries, prev = [], GENESIS
    for seq, (action, tenant, before, after, detail) in enumerate(rows, start=1):
        at = f"2026-01-01T00:00:{seq:02d}.000000+00:00"
        entry = AuditEntry(seq, at, "cli:ops", action, tenant, before, after, detail, prev,
                           entry_hash(prev, seq, at, "cli:ops", action, tenant, before, after, detail))
        entries.append(entry)
        prev = entry.hash
    return entries


ENTRIES = ledger(("tenant.create", "acme", "", "a" * 64, "state Active"),
                 ("key.create", "acme", "", "", "acme/data/v1 (AES-256-GCM)"),
                 ("apply", "", "", "", "create acme"),
                 ("tenant.transition", "acme", "a" * 64, "b" * 64, "Active -> Suspended \u00e9\u6f22"),
                 ("settings.update", "", "", "", "max_tenants=10"))


def test_an_audit_event_is_a_structured_cloudevent_of_its_entry() -> None:
    event = decode(encode_audit(ENTRIES[3], "//registry.example/prod").body)
    assert event == {
        "specversion": "1.0", "id": "4", "source": "//registry.example/prod",
        "type": "dev.tenantgate.tenant.transitioned", "subject": "acme", "time": ENTRIES[3].at,
        "datacontenttype": "application/json",
        "data": {"seq": 4, "action": "tenant.transition", "actor": "cli:ops", "tenant_id": "acme",
                 "before_digest": "a" * 64, "after_digest": "b" * 64, "detail": "Active -> Suspended \u00e9\u6f22",
                 "prev_hash": ENTRIES[2].hash, "hash": ENTRIES[3].hash}}
    registry_wide = decode(encode_audit(ENTRIES[2]).body)
    assert "subject" not in registry_wide and encode_audit(ENTRIES[2]).token == NO_TENANT_TOKEN


def test_entries_round_trip_and_the_consumer_can_verify_the_chain() -> None:
    decoded = [entry_from_event(decode(encode_audit(entry).body)) for entry in ENTRIES]
    assert decoded == ENTRIES
    assert verify_chain(decoded).ok
    assert [audit_position(encode_audit(entry).body) for entry in ENTRIES] == [(e.seq, e.hash) for e in ENTRIES]


def test_every_action_the_registry_writes_has_its_own_type() -> None:
    written = set()
    for path in REGISTRY_SOURCE.glob("*.py"):
        written |= set(re.findall(r"\.audit\(\s*\"([a-z_.]+)\"", path.read_text()))
        written |= set(re.findall(r"add_key\([^)]*\"(key\.[a-z_]+)\"\)", path.read_text()))
    written |= {f"key.{state.name.lower()}" for state in KeyState}
    assert {"apply", "tenant.create", "tenant.transition", "key.rotate"} <= written  # the scan finds them
    assert written <= set(EVENT_TYPES), f"add a CloudEvents type for {sorted(written - set(EVENT_TYPES))}"
    # Actions written from a template (f"plan.{change.action}"): their family has types too.
    families = {family for path in REGISTRY_SOURCE.glob("*.py")
                for family in re.findall(r"\.audit\(\s*f\"([a-z_]+)\.\{", path.read_text())} - {"key"}
    assert all(any(action.startswith(f"{family}.") for action in EVENT_TYPES) for family in families), families
    assert len(set(EVENT_TYPES.values())) == len(EVENT_TYPES)


def test_an_action_it_does_not_know_is_published_not_dropped() -> None:
    assert event_type("quota.reset") == "dev.tenantgate.audit.quota.reset"
    assert event_type("x\ny") == event_type("A") == event_type("a" * 65) == "dev.tenantgate.audit.unknown"


@pytest.mark.parametrize("tenant", ["", "Acme", "a.b", "a*", "a>", "a b", "a\r\nNats-Msg-Id: 1", "-a", "a" * 64])
def test_a_tenant_id_no_subject_token_can_carry_goes_to_one_catch_all(tenant: str) -> None:
    assert tenant_token(tenant) == (NO_TENANT_TOKEN if not tenant else OTHER_TENANT_TOKEN)
    assert tenant_token("acme-2") == "acme-2"


def test_a_long_detail_is_cut_to_fit_a_message_and_says_so() -> None:
    entry = ledger(("apply", "", "", "", "; ".join(f"create tenant-{i}\u00e9" for i in range(50_000))))[0]
    outbound = encode_audit(entry)
    data = decode(outbound.body)["data"]
    assert len(outbound.body) < MAX_DETAIL_BYTES + 4096
    assert data["detail_truncated"] is True and data["detail_bytes"] == len(entry.detail.encode())
    assert entry.detail.startswith(data["detail"]) and data["hash"] == entry.hash


@pytest.mark.parametrize("body", [
    b"", b"not json", b"\xff\xfe", b"[]", b'{"id": "1"}', b'{"specversion": "0.3", "id": "1"}',
    b'{"specversion": "1.0", "id": 1}',
    b'{"specversion": "1.0", "id": "1", "data": {"seq": 2, "hash": "h"}}',
    b'{"specversion": "1.0", "id": "-1", "data": {"seq": -1, "hash": "h"}}',
    b'{"specversion": "1.0", "id": "\xd9\xa1", "data": {"seq": 1, "hash": "h"}}',
    b'{"specversion": "1.0", "id": "1", "data": {"seq": 1}}',
    b'{"specversion": "1.0", "id": "99999999999999999999", "data": {"seq": 99999999999999999999, "hash": "h"}}',
    b'{"specversion": "1.0", "id": "usage/acme/60", "data": {}}',
])
def test_what_is_not_an_audit_event_is_refused_with_a_clear_error(body: bytes) -> None:
    with pytest.raises(InvalidArgument):
        audit_position(body)


def test_an_oversized_event_is_refused_before_it_is_parsed() -> None:
    with pytest.raises(InvalidArgument, match="bound"):
        decode(b" " * (MAX_EVENT_BYTES + 1))


def test_usage_reports_cumulative_totals_and_the_change_since_the_previous_report() -> None:
    first = decode(encode_usage(UsageReport("acme", 1_800_000_060, 60, {"api": (10, 2), "users": (3, 0)})).body)
    assert first["id"] == "usage/acme/1800000060" and first["subject"] == "acme"
    assert first["type"] == "dev.tenantgate.usage.reported" and first["time"] == "2027-01-15T08:01:00+00:00"
    assert first["data"]["quotas"] == {"api": {"consumed": 10, "denied": 2}, "users": {"consumed": 3, "denied": 0}}
    assert first["data"]["previous_period_end"] is None  # a first report after a start claims no delta

    second = decode(encode_usage(UsageReport("acme", 1_800_000_120, 60, {"api": (15, 2), "users": (1, 0), "ai": (4, 1)},
                                             previous={"api": (10, 2), "users": (3, 0)},
                                             previous_end=1_800_000_060)).body)
    assert second["data"]["previous_period_end"] == "2027-01-15T08:01:00+00:00"
    assert second["data"]["quotas"] == {
        "ai": {"consumed": 4, "denied": 1, "consumed_delta": 4, "denied_delta": 1},
        "api": {"consumed": 15, "denied": 2, "consumed_delta": 5, "denied_delta": 0},
        # Lower than before: the counters were reset, everything counted since is new.
        "users": {"consumed": 1, "denied": 0, "consumed_delta": 1, "denied_delta": 0, "reset": True},
    }
    assert json.loads(encode_usage(UsageReport("acme", 60, 60, {})).body)["data"]["quotas"] == {}
