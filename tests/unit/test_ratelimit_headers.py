"""The quota headers every HTTP front door writes (draft-ietf-httpapi-ratelimit-headers, RFC 9110 Retry-After)."""

from __future__ import annotations

import pytest

from tenantgate.ratelimit_headers import joined, policy_item, retry_after, state_item


def test_policy_members_name_the_quota_its_units_and_its_window_when_it_has_one() -> None:
    assert policy_item("api-requests", 1000, 60) == '"api-requests";q=1000;w=60'
    assert policy_item("ai-requests", 50000) == '"ai-requests";q=50000'
    assert joined([policy_item("a", 1, 1), policy_item("b", 2)]) == '"a";q=1;w=1, "b";q=2'


@pytest.mark.parametrize(("remaining", "reset_after", "member"), [
    (998, 0.2, '"api";r=998;t=1'), (0, 60.0, '"api";r=0;t=60'), (-3, 0.0, '"api";r=0;t=0')])
def test_state_members_never_go_below_zero_and_round_the_reset_up(remaining: int, reset_after: float,
                                                                   member: str) -> None:
    assert state_item("api", remaining, reset_after) == member


@pytest.mark.parametrize(("waits", "seconds"), [([0.1], 1), ([59.2, 3.0], 60), ([0.0], 1), ([], 1)])
def test_retry_after_is_the_longest_wait_in_whole_seconds_never_zero(waits: list[float], seconds: int) -> None:
    assert retry_after(waits) == seconds
