"""Access answers built once and reused: what a response holds depends on the decision alone, but for the
decision's id. Building and serializing a response message field by field was the largest cost of answering
a check after reading its request."""

from __future__ import annotations

from typing import cast

from tenantgate.engines.access import Decision, Reason
from tenantgate.v1 import decision_pb2 as pb

# Engine enums to protocol enums, by name; a missing name fails at import, not on a request.
REASONS = {reason: cast(pb.DecisionReason, pb.DecisionReason.Value(f"DECISION_REASON_{reason.name}"))
           for reason in Reason}
# The tag of CheckAccessResponse.decision_id (field 5, length-delimited).
_DECISION_ID_TAG = bytes(((pb.CheckAccessResponse.DESCRIPTOR.fields_by_name["decision_id"].number << 3) | 2,))
# The tag and length of an id of each length below 128 (a length in one byte); ids are shorter.
_SHORT_ID_TAGS = tuple(_DECISION_ID_TAG + bytes((size,)) for size in range(128))


def _length(size: int) -> bytes:
    """``size`` as a protobuf varint."""
    out = bytearray()
    while size > 0x7F:
        out.append(size & 0x7F | 0x80)
        size >>= 7
    out.append(size)
    return bytes(out)


class EncodedAnswers:
    """CheckAccess responses, serialized. The fields a decision fixes (allowed, reason, rule, revision) are
    serialized once per snapshot revision by protobuf; each answer appends its decision id, the last field:
    a serialized message is its fields' encodings one after another, so the bytes are exactly those of the
    message built whole. Bounded: at most MAX_DECISIONS distinct decisions are kept, and a new revision
    starts afresh."""

    MAX_DECISIONS = 10_000

    __slots__ = ("_heads", "_revision")

    def __init__(self) -> None:
        self._revision = -1
        self._heads: dict[tuple[Reason, str], bytes] = {}

    def encode(self, revision: int, decision: Decision, decision_id: str) -> bytes:
        head = self._heads.get((decision.reason, decision.rule)) if revision == self._revision else None
        if head is None:
            head = self._head(revision, decision)
        encoded_id = decision_id.encode()
        size = len(encoded_id)
        return head + (_SHORT_ID_TAGS[size] if size < 128 else _DECISION_ID_TAG + _length(size)) + encoded_id

    def _head(self, revision: int, decision: Decision) -> bytes:
        if revision != self._revision or len(self._heads) >= self.MAX_DECISIONS:
            self._heads, self._revision = {}, revision
        head = self._heads[(decision.reason, decision.rule)] = pb.CheckAccessResponse(
            allowed=decision.allowed, reason=REASONS[decision.reason], rule=decision.rule,
            revision=revision).SerializeToString()
        return head


class Answered:
    """One distinct decision of a call that decides many checks: its answer but for the id, which the checks
    decided alike copy (instead of setting each field), and how many checks it answered, counted in the
    metrics at once when the call is done."""

    __slots__ = ("answer", "decision", "tenant_id", "times")

    def __init__(self, decision: Decision, tenant_id: str, revision: int) -> None:
        self.answer = pb.CheckAccessResponse(allowed=decision.allowed, reason=REASONS[decision.reason],
                                             rule=decision.rule, revision=revision)
        self.decision = decision  # held: calls key these by id(decision), which must not be reused meanwhile
        self.tenant_id = tenant_id
        self.times = 0
