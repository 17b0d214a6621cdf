"""Registry records to and from SQL rows: the one codec of the SQL representation, for every SQL backend.

Each record's columns are named once here, in the order its row holds them; reads select those columns and
writes insert them. Values are converted on the way in (a binary column may arrive as bytes or a memoryview
depending on the driver, a SQLite number as an int where a float was stored), so a backend gives back the
record it was given: tests/unit/registry/test_codecs.py checks every field through SQLite's column types,
and the store contract tests run every write and read on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tenantgate.registry.audit import AuditEntry
from tenantgate.registry.records import ChangeEntry, KeyInfo, KeyRecord, PlanRecord, TenantRecord

Row = Sequence[Any]

TENANT_COLUMNS = "id, document, digest, revision, state, state_since"
PLAN_COLUMNS = "id, document, digest, revision"
KEY_COLUMNS = "tenant_id, purpose, version, wrapped, algorithm, state, created_at"
# A key's row, with its purpose's version floor (kept in key_policies) joined on.
KEY_SELECT = ("SELECT k.tenant_id, k.purpose, k.version, k.wrapped, k.algorithm, k.state, k.created_at,"
              " COALESCE(p.min_decryption_version, 0) FROM tenant_keys k LEFT JOIN key_policies p"
              " ON p.tenant_id = k.tenant_id AND p.purpose = k.purpose")
KEY_INFO_COLUMNS = "tenant_id, purpose, version, algorithm, state, created_at"
AUDIT_COLUMNS = "seq, at, actor, action, tenant_id, before_digest, after_digest, detail, prev_hash, hash"
CHANGE_COLUMNS = "revision, tenant_id, action, digest, actor, committed_at"


def tenant_row(record: TenantRecord) -> tuple[Any, ...]:
    return (record.id, record.document_json, record.digest, record.revision, record.state, record.state_since)


def tenant_from_row(row: Row) -> TenantRecord:
    return TenantRecord(id=str(row[0]), document_json=str(row[1]), digest=str(row[2]), revision=int(row[3]),
                        state=str(row[4]), state_since=float(row[5]))


def plan_row(record: PlanRecord) -> tuple[Any, ...]:
    return (record.id, record.document_json, record.digest, record.revision)


def plan_from_row(row: Row) -> PlanRecord:
    return PlanRecord(id=str(row[0]), document_json=str(row[1]), digest=str(row[2]), revision=int(row[3]))


def key_row(key: KeyRecord) -> tuple[Any, ...]:
    """The key's ``KEY_COLUMNS`` (its version floor is stored per purpose, in key_policies)."""
    return (key.tenant_id, key.purpose, key.version, key.wrapped, key.algorithm, key.state, key.created_at)


def key_from_row(row: Row) -> KeyRecord:
    """A key from a ``KEY_SELECT`` row."""
    return KeyRecord(str(row[0]), str(row[1]), int(row[2]), bytes(row[3]), str(row[4]), int(row[5]), float(row[6]),
                     int(row[7]))


def keys_by_tenant(rows: Iterable[Row]) -> dict[str, tuple[KeyRecord, ...]]:
    grouped: dict[str, list[KeyRecord]] = {}
    for row in rows:
        key = key_from_row(row)
        grouped.setdefault(key.tenant_id, []).append(key)
    return {tenant_id: tuple(keys) for tenant_id, keys in grouped.items()}


def key_info_from_row(row: Row) -> KeyInfo:
    return KeyInfo(str(row[0]), str(row[1]), int(row[2]), str(row[3]), int(row[4]), float(row[5]))


def audit_row(entry: AuditEntry) -> tuple[Any, ...]:
    return (entry.seq, entry.at, entry.actor, entry.action, entry.tenant_id, entry.before_digest,
            entry.after_digest, entry.detail, entry.prev_hash, entry.hash)


def audit_from_row(row: Row) -> AuditEntry:
    return AuditEntry(int(row[0]), *(str(value) for value in row[1:10]))


def change_row(change: ChangeEntry) -> tuple[Any, ...]:
    return (change.revision, change.tenant_id, change.action, change.digest, change.actor, change.committed_at)


def change_from_row(row: Row) -> ChangeEntry:
    return ChangeEntry(int(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[4]), float(row[5]))
