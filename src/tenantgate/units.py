"""Parsing of the manifest's human units: durations, sizes and rates."""

from __future__ import annotations

import re

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
RATE_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
SIZE_UNITS = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}

_DURATION = re.compile(r"^(\d+)(s|m|h|d|w)$")
_SIZE = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti)?$")
_RATE = re.compile(r"^(\d+)/(second|minute|hour|day)$")


def parse_duration(text: str) -> int:
    """``"30s"``, ``"15m"``, ``"90d"`` → seconds. Raises ValueError naming the accepted units."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"bad duration {text!r} (expected a whole number and one of s, m, h, d, w, e.g. 30s)")
    return int(match.group(1)) * DURATION_UNITS[match.group(2)]


def parse_size(value: int | str) -> tuple[int, bool]:
    """``25`` or ``"100Gi"`` → (units, whether a binary size suffix was given)."""
    if isinstance(value, bool):
        raise ValueError(f"bad amount {value!r} (expected a whole number, optionally with Ki, Mi, Gi or Ti)")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"bad amount {value} (must not be negative)")
        return value, False
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"bad amount {value!r} (expected a whole number, optionally with Ki, Mi, Gi or Ti)")
    suffix = match.group(2) or ""
    return int(match.group(1)) * SIZE_UNITS[suffix], bool(suffix)


def parse_rate(text: str) -> tuple[int, int]:
    """``"1000/minute"`` → (1000, 60)."""
    match = _RATE.match(text)
    if not match:
        raise ValueError(f"bad rate {text!r} (expected N/second, N/minute, N/hour or N/day)")
    return int(match.group(1)), RATE_UNITS[match.group(2)]
