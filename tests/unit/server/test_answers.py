"""CheckAccess answers encoded once per decision (the bytes are those of the whole message), and decision ids
handed out in blocks (unique, increasing)."""

from __future__ import annotations

import pytest

from tenantgate.engines.access import Decision, Reason
from tenantgate.server.answers import REASONS, EncodedAnswers
from tenantgate.server.decider import DecisionIds
from tenantgate.v1 import decision_pb2 as pb

DECISIONS = [Decision(True, Reason.ALLOWED, "acme/roles/admin/allow/0", "user:alice", "acme"),
             Decision(False, Reason.EXPLICIT_DENY, "acme/deny/0", "user:alice", "acme"),
             Decision(False, Reason.TENANT_NOT_FOUND), Decision(False, Reason.NO_MATCHING_GRANT, "", "user:é", "acme")]


@pytest.mark.parametrize("decision", DECISIONS)
@pytest.mark.parametrize("decision_id", ["0123456789abcdef-1000", "x" * 127, "x" * 128, "é" * 200])
@pytest.mark.parametrize("revision", [0, 1, 2**40])
def test_an_encoded_answer_is_the_whole_message_serialized(decision: Decision, decision_id: str,
                                                            revision: int) -> None:
    answers = EncodedAnswers()
    for _ in range(2):  # encoded, then from what was kept
        encoded = answers.encode(revision, decision, decision_id)
        assert encoded == pb.CheckAccessResponse(
            allowed=decision.allowed, reason=REASONS[decision.reason], rule=decision.rule, revision=revision,
            decision_id=decision_id).SerializeToString()


def test_a_new_revision_is_encoded_afresh_and_at_most_max_decisions_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = EncodedAnswers()
    assert pb.CheckAccessResponse.FromString(answers.encode(1, DECISIONS[0], "a")).revision == 1
    assert pb.CheckAccessResponse.FromString(answers.encode(2, DECISIONS[0], "a")).revision == 2
    monkeypatch.setattr(EncodedAnswers, "MAX_DECISIONS", 3)
    for number in range(10):
        answers.encode(2, Decision(True, Reason.ALLOWED, f"acme/r/{number}"), "a")
        assert len(answers._heads) <= 3


def test_decision_ids_are_unique_and_increasing_whether_taken_one_by_one_or_for_a_batch() -> None:
    ids = DecisionIds()
    taken: list[str] = []
    # Batches of each size around what is left of a block (16**3 ids), and single ids between them.
    for count in (None, 5, None, 4089, 1, 0, None, 4096, 4097, None, 4000, 95, 2, None, 4095, 4096):
        if count is None:
            taken.append(ids.next())
        else:
            batch = ids.take(count)
            assert len(batch) == count
            taken += batch
    assert len(set(taken)) == len(taken)
    prefixes = {decision_id.split("-")[0] for decision_id in taken}
    numbers = [int(decision_id.split("-")[1], 16) for decision_id in taken]
    assert len(prefixes) == 1 and numbers == sorted(numbers)
    assert DecisionIds().next().split("-")[0] not in prefixes  # per process, unlikely to repeat
