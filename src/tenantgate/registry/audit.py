"""The audit ledger's hash chain: each entry commits to its content and to the entry before it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: str  # ISO 8601, UTC, microseconds
    actor: str
    action: str  # apply, tenant.create, tenant.update, tenant.transition, tenant.delete, key.create, key.rotate, ...
    tenant_id: str
    before_digest: str
    after_digest: str
    detail: str
    prev_hash: str
    hash: str


def entry_hash(prev_hash: str, seq: int, at: str, actor: str, action: str, tenant_id: str, before_digest: str,
               after_digest: str, detail: str) -> str:
    body = json.dumps([seq, at, actor, action, tenant_id, before_digest, after_digest, detail],
                      ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()


@dataclass(frozen=True)
class AuditVerification:
    checked: int
    first_broken: int | None = None  # the seq of the first entry that does not verify
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.first_broken is None


def verify_chain(entries: Iterable[AuditEntry]) -> AuditVerification:
    """Recompute the chain in seq order; report the first entry that is missing, moved or altered."""
    prev_hash, expected_seq, checked = GENESIS, 1, 0
    for entry in entries:
        if entry.seq != expected_seq:
            return AuditVerification(checked, expected_seq, f"entry {expected_seq} is missing (found {entry.seq})")
        if entry.prev_hash != prev_hash:
            return AuditVerification(checked, entry.seq, "its link to the previous entry does not match")
        recomputed = entry_hash(prev_hash, entry.seq, entry.at, entry.actor, entry.action, entry.tenant_id,
                                entry.before_digest, entry.after_digest, entry.detail)
        if recomputed != entry.hash:
            return AuditVerification(checked, entry.seq, "its content does not match its hash")
        prev_hash, expected_seq, checked = entry.hash, expected_seq + 1, checked + 1
    return AuditVerification(checked)
