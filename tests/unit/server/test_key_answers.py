"""GetTenantKey responses are reused only for the same key version at the same snapshot revision."""

from __future__ import annotations

import time

from tenantgate.model import KeyState
from tenantgate.server.decision import KeyAnswers
from tenantgate.snapshot import KeyVersion
from tenantgate.v1 import decision_pb2 as pb


def _key(version: int, state: KeyState = KeyState.ENABLED) -> KeyVersion:
    return KeyVersion("acme", "data", version, "AES-256-GCM", state, time.time(), bytes([version]) * 32)


def test_the_response_carries_the_key_and_is_reused_within_a_revision() -> None:
    answers, key = KeyAnswers(), _key(1)
    first = answers.answer(7, key)
    assert (first.key_id, first.version, first.material, first.state) == ("acme/data/v1", 1, bytes([1]) * 32,
                                                                          pb.KEY_STATE_ENABLED)
    assert answers.answer(7, key) is first


def test_another_key_or_a_new_revision_gets_its_own_response() -> None:
    answers, key = KeyAnswers(), _key(1)
    first = answers.answer(7, key)
    rotated = answers.answer(7, _key(2))
    assert rotated.version == 2 and answers.answer(7, key) is first
    # A key rebuilt at a new revision (say, now disabled) is never answered from the old response.
    disabled = answers.answer(8, _key(1, KeyState.DISABLED))
    assert disabled.state == pb.KEY_STATE_DISABLED
    assert answers.answer(8, key) is not first
