"""Seconds (floats, as the engines and records hold time) to and from protobuf Timestamp and Duration."""

from __future__ import annotations

from typing import Protocol


class SecondsAndNanos(Protocol):
    """google.protobuf.Timestamp and google.protobuf.Duration alike."""

    seconds: int
    nanos: int


def set_seconds(target: SecondsAndNanos, seconds: float) -> None:
    """``target`` set to ``seconds``, to the nearest nanosecond (non-negative times: the only ones used). The
    fraction is taken before scaling: ``seconds * 1e9`` would lose nanoseconds at today's epoch."""
    whole = int(seconds)
    nanos = round((seconds - whole) * 1e9)
    if nanos >= 1_000_000_000:  # rounded up to the next second
        whole, nanos = whole + 1, nanos - 1_000_000_000
    target.seconds = whole
    target.nanos = nanos


def seconds_of(source: SecondsAndNanos) -> float:
    """The nearest float to the time ``source`` holds (so a time to the nanosecond, as every time here is, reads
    back as the float it was written from; integer division rounds once, where ``s + n / 1e9`` rounds twice)."""
    return (source.seconds * 1_000_000_000 + source.nanos) / 1_000_000_000
