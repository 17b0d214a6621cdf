"""The quota headers of an HTTP answer, written once for every HTTP front door (the Envoy rate limit adapter on
the server, the SDK's ASGI middleware on the client): ``RateLimit-Policy`` and ``RateLimit``
(draft-ietf-httpapi-ratelimit-headers, one list member per quota) and ``Retry-After`` (RFC 9110, whole seconds).
Pure string formatting: no gRPC, no server code, so that both sides can import it.

    RateLimit-Policy: "api-requests";q=1000;w=60
    RateLimit: "api-requests";r=998;t=1
    Retry-After: 3

Quota names are safe inside a structured-field string as they are (a manifest's quota name is
``[A-Za-z0-9][A-Za-z0-9_.-]*``)."""

from __future__ import annotations

import math
from collections.abc import Iterable

POLICY_HEADER = "ratelimit-policy"
STATE_HEADER = "ratelimit"
RETRY_AFTER_HEADER = "retry-after"


def policy_item(quota: str, quota_units: int, window: int = 0) -> str:
    """One quota's member of ``RateLimit-Policy``: ``q`` units per ``w`` seconds, ``w`` left out when 0 (no fixed
    window: a calendar month, a concurrency or allocation quota, or a window the caller does not know)."""
    return f'"{quota}";q={quota_units}' + (f";w={window}" if window else "")


def state_item(quota: str, remaining: int, reset_after: float) -> str:
    """One quota's member of ``RateLimit``: ``r`` units left (never below 0), ``t`` whole seconds until the quota
    is whole again or its window ends (rounded up, so that a client waiting ``t`` never comes back too early)."""
    return f'"{quota}";r={max(remaining, 0)};t={math.ceil(reset_after)}'


def joined(items: Iterable[str]) -> str:
    """Members as one header value (a structured-field list)."""
    return ", ".join(items)


def retry_after(waits: Iterable[float]) -> int:
    """``Retry-After`` for a refused request: the longest wait of its refused quotas, rounded up to whole
    seconds, at least 1 (0 would invite an immediate retry of a request that was just refused)."""
    return max(1, math.ceil(max(waits, default=1.0)))
