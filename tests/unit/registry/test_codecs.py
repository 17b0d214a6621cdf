"""Every registry record survives each of its representations, field for field: SQL rows (through a real
SQLite table of the registry's schema), the last-known-good JSON, and the Admin API's protobuf.

The strategies name every field of each record; a field added to a record without a strategy here fails
``test_strategies_cover_every_field``, so a new field cannot be left out of a codec unnoticed."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tenantgate.adminapi import wire
from tenantgate.model import KeyState, TenantState
from tenantgate.registry import rows
from tenantgate.registry.audit import AuditEntry
from tenantgate.registry.canonical import canonical_json
from tenantgate.registry.migrations import MIGRATIONS
from tenantgate.registry.records import (
    ApplyResult,
    ChangeEntry,
    KeyInfo,
    KeyRecord,
    PlanChange,
    PlanRecord,
    RegistryState,
    TenantChange,
    TenantInfo,
    TenantRecord,
)
from tenantgate.registry.statefile import decode, encode
from tenantgate.v1 import registry_pb2 as pb

# Values as the registry holds them: ids and names are text, counters fit 63 bits (SQLite's INTEGER, protobuf's
# uint64), times are non-negative seconds to the microsecond (what a float keeps exactly at today's epoch).
texts = st.text(max_size=40)
names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20)
counters = st.integers(min_value=0, max_value=2**63 - 1)
versions = st.integers(min_value=0, max_value=2**32 - 1)
times = st.integers(min_value=0, max_value=4_102_444_800 * 10**6).map(lambda micros: micros / 10**6)
tenant_states = st.sampled_from([state.value for state in TenantState])
# A stored document is canonical JSON of a manifest; only its labels are read without parsing it whole.
documents = st.builds(lambda labels, plan: canonical_json({"metadata": {"labels": labels}, "spec": {"plan": plan}}),
                      st.dictionaries(names, texts, max_size=3), texts)
key_states = st.sampled_from([int(state) for state in KeyState])

FIELDS: dict[type, dict[str, st.SearchStrategy[Any]]] = {
    TenantRecord: {"id": names, "document_json": documents, "digest": texts, "revision": counters,
                   "state": tenant_states, "state_since": times},
    KeyRecord: {"tenant_id": names, "purpose": names, "version": versions, "wrapped": st.binary(max_size=64),
                "algorithm": texts, "state": key_states, "created_at": times, "min_decryption_version": versions},
    KeyInfo: {"tenant_id": names, "purpose": names, "version": versions, "algorithm": texts, "state": key_states,
              "created_at": times},
    AuditEntry: {"seq": counters, "at": texts, "actor": texts, "action": texts, "tenant_id": texts,
                 "before_digest": texts, "after_digest": texts, "detail": texts, "prev_hash": texts, "hash": texts},
    ChangeEntry: {"revision": counters, "tenant_id": names, "action": texts, "digest": texts, "actor": texts,
                  "committed_at": times},
    PlanRecord: {"id": names, "document_json": documents, "digest": texts, "revision": counters},
    TenantChange: {"tenant_id": names, "action": st.sampled_from(["create", "update", "delete"]),
                   "before_state": tenant_states, "after_state": tenant_states,
                   "differences": st.lists(texts, max_size=3).map(tuple),
                   "new_keys": st.lists(names, max_size=2).map(tuple)},
    PlanChange: {"plan_id": names, "action": st.sampled_from(["create", "update", "delete"]),
                 "differences": st.lists(texts, max_size=3).map(tuple),
                 "tenants": st.lists(names, max_size=3).map(tuple), "tenant_count": counters},
}
FIELDS[ApplyResult] = {"revision": counters, "dry_run": st.booleans(),
                       "changes": st.lists(st.builds(TenantChange, **FIELDS[TenantChange]), max_size=3).map(tuple),
                       "plans": st.lists(st.builds(PlanChange, **FIELDS[PlanChange]), max_size=3).map(tuple),
                       "quota_changes": st.lists(names, max_size=3).map(tuple),
                       "warnings": st.lists(texts, max_size=2).map(tuple), "quota_change_count": counters}


def records(cls: type) -> st.SearchStrategy[Any]:
    built = st.builds(cls, **FIELDS[cls])
    # A list of tenants names the first of them and counts them all: at least as many as it names.
    if cls is PlanChange:
        return built.map(lambda change: dataclasses.replace(
            change, tenant_count=max(change.tenant_count, len(change.tenants))))
    if cls is ApplyResult:
        return built.map(lambda result: dataclasses.replace(
            result, plans=tuple(dataclasses.replace(plan, tenant_count=max(plan.tenant_count, len(plan.tenants)))
                                for plan in result.plans),
            quota_change_count=max(result.quota_change_count, len(result.quota_changes))))
    return built


def test_strategies_cover_every_field() -> None:
    for cls, strategies in FIELDS.items():
        assert set(strategies) == {field.name for field in dataclasses.fields(cls)}, cls.__name__


# -- SQL rows ----------------------------------------------------------------------------------------------

def _registry_tables() -> sqlite3.Connection:
    """The registry's tables, emptied: one database for every example (creating them is most of the time)."""
    global _DB
    if _DB is None:
        _DB = sqlite3.connect(":memory:")
        for migration in MIGRATIONS["sqlite"]:
            _DB.executescript(migration)
    for table in ("tenants", "tenant_keys", "key_policies", "audit", "changes", "plans"):
        _DB.execute(f"DELETE FROM {table}")
    return _DB


_DB: sqlite3.Connection | None = None


@settings(max_examples=100)
@given(records(TenantRecord))
def test_a_tenant_row_reads_back_as_the_record(record: TenantRecord) -> None:
    db = _registry_tables()
    db.execute(f"INSERT INTO tenants ({rows.TENANT_COLUMNS}, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 0, 0)",
               rows.tenant_row(record))
    assert rows.tenant_from_row(db.execute(f"SELECT {rows.TENANT_COLUMNS} FROM tenants").fetchone()) == record


@settings(max_examples=100)
@given(records(KeyRecord))
def test_a_key_row_reads_back_as_the_record(key: KeyRecord) -> None:
    db = _registry_tables()
    db.execute(f"INSERT INTO tenant_keys ({rows.KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", rows.key_row(key))
    db.execute("INSERT INTO key_policies (tenant_id, purpose, min_decryption_version) VALUES (?, ?, ?)",
               (key.tenant_id, key.purpose, key.min_decryption_version))
    assert rows.keys_by_tenant(db.execute(rows.KEY_SELECT).fetchall()) == {key.tenant_id: (key,)}
    info = db.execute(f"SELECT {rows.KEY_INFO_COLUMNS} FROM tenant_keys").fetchone()
    assert rows.key_info_from_row(info) == KeyInfo(key.tenant_id, key.purpose, key.version, key.algorithm,
                                                   key.state, key.created_at)


@settings(max_examples=100)
@given(records(KeyInfo), records(AuditEntry), records(ChangeEntry))
def test_key_audit_and_change_rows_read_back_as_their_records(key: KeyInfo, entry: AuditEntry,
                                                              change: ChangeEntry) -> None:
    db = _registry_tables()
    # Key metadata is written as a key (the store never writes metadata alone), read without the material.
    stored = KeyRecord(key.tenant_id, key.purpose, key.version, b"", key.algorithm, key.state, key.created_at)
    db.execute(f"INSERT INTO tenant_keys ({rows.KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", rows.key_row(stored))
    db.execute(f"INSERT INTO audit ({rows.AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows.audit_row(entry))
    db.execute(f"INSERT INTO changes ({rows.CHANGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", rows.change_row(change))
    assert rows.key_info_from_row(db.execute(f"SELECT {rows.KEY_INFO_COLUMNS} FROM tenant_keys").fetchone()) == key
    assert rows.audit_from_row(db.execute(f"SELECT {rows.AUDIT_COLUMNS} FROM audit").fetchone()) == entry
    assert rows.change_from_row(db.execute(f"SELECT {rows.CHANGE_COLUMNS} FROM changes").fetchone()) == change


@settings(max_examples=100)
@given(records(PlanRecord))
def test_a_plan_row_reads_back_as_the_record(record: PlanRecord) -> None:
    db = _registry_tables()
    db.execute(f"INSERT INTO plans ({rows.PLAN_COLUMNS}, created_at, updated_at) VALUES (?, ?, ?, ?, 0, 0)",
               rows.plan_row(record))
    assert rows.plan_from_row(db.execute(f"SELECT {rows.PLAN_COLUMNS} FROM plans").fetchone()) == record


# -- the last-known-good JSON ------------------------------------------------------------------------------

@st.composite
def registry_states(draw: st.DrawFn) -> RegistryState:
    tenants = {record.id: record for record in draw(st.lists(records(TenantRecord), max_size=4))}
    keys: dict[str, tuple[KeyRecord, ...]] = {}
    for tenant_id in tenants:
        owned = draw(st.lists(records(KeyRecord), max_size=3))
        if owned:
            keys[tenant_id] = tuple(dataclasses.replace(key, tenant_id=tenant_id) for key in owned)
    plans = {record.id: record for record in draw(st.lists(records(PlanRecord), max_size=3))}
    return RegistryState(draw(counters), tenants, keys, draw(texts), plans)


@settings(max_examples=100)
@given(registry_states(), times)
def test_the_last_known_good_json_reads_back_as_the_state(state: RegistryState, saved_at: float) -> None:
    text = json.dumps(encode(state, saved_at))
    assert decode(json.loads(text)) == (state, saved_at)


# -- protobuf ------------------------------------------------------------------------------------------------

@settings(max_examples=100)
@given(records(TenantRecord), st.lists(records(KeyInfo), max_size=3), times, times, st.lists(names, max_size=3))
def test_a_tenant_message_reads_back_as_the_record(record: TenantRecord, keys: list[KeyInfo], created_at: float,
                                                   updated_at: float, quotas: list[str]) -> None:
    info = TenantInfo(record, tuple(dataclasses.replace(key, tenant_id=record.id) for key in keys), created_at,
                      updated_at, tuple(quotas))
    message = pb.Tenant.FromString(wire.tenant_to_wire(info).SerializeToString())
    assert wire.tenant_from_wire(message) == info


@settings(max_examples=100)
@given(records(AuditEntry), records(ChangeEntry))
def test_audit_and_change_messages_read_back_as_their_records(entry: AuditEntry, change: ChangeEntry) -> None:
    assert wire.audit_from_wire(pb.AuditEntry.FromString(wire.audit_to_wire(entry).SerializeToString())) == entry
    assert wire.change_from_wire(pb.Change.FromString(wire.change_to_wire(change).SerializeToString())) == change


@settings(max_examples=100)
@given(records(ApplyResult))
def test_an_apply_result_message_reads_back_as_the_result(result: ApplyResult) -> None:
    message = pb.ApplyManifestsResponse.FromString(wire.apply_to_wire(result).SerializeToString())
    assert wire.apply_from_wire(message) == result
