"""Where events go, behind one Protocol, and the one place a sink URL becomes a sink.

A sink holds the audit events itself, so it is the sink that says where an export resumes: after a crash of the
exporter, of NATS, or of both, the next export asks the sink for its last audit event and publishes from the
entry after it. Publishing is at least once (a batch is published again when its acknowledgement is lost); each
sink makes that exactly once in what it holds (JetStream by message id and expected last sequence, the file
by appending only after its last complete line).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from tenantgate.errors import ConfigurationError, Unavailable
from tenantgate.events.cloudevents import OutboundEvent


class SinkUnavailable(Unavailable):
    """The sink cannot take events now (NATS down, a timeout, a refused publish): retry after a backoff, from
    the resume point the sink gives then."""


@dataclass(frozen=True, slots=True)
class Position:
    """The last audit event a sink holds: its ledger sequence and the entry's hash."""

    seq: int
    hash: str


class Sink(Protocol):
    description: str

    async def last_audit(self) -> Position | None:
        """The last audit event the sink holds (None: none yet). Connects first when not connected."""
        ...

    async def publish_audit(self, events: Sequence[OutboundEvent]) -> None:
        """Appends ``events`` (consecutive sequences, the first right after ``last_audit``) in order; on an
        error some first part of them may be held: the caller asks ``last_audit`` again."""
        ...

    async def publish_usage(self, events: Sequence[OutboundEvent]) -> None: ...

    async def close(self) -> None:
        """Drops the connection (or file); the next call opens it again."""
        ...


@dataclass(frozen=True, slots=True)
class NatsSettings:
    audit_stream: str = "TENANTGATE_AUDIT"
    usage_stream: str = "TENANTGATE_USAGE"
    subject_prefix: str = "tenantgate"
    duplicate_window: float = 120.0  # seconds JetStream remembers message ids
    timeout: float = 5.0


def open_sink(url: str, nats: NatsSettings | None = None) -> Sink:
    """``nats://host:port`` (JetStream; needs the ``nats`` extra) or ``file:DIRECTORY`` (JSON lines)."""
    scheme, sep, rest = url.partition(":")
    if scheme in ("nats", "tls") and sep and rest.startswith("//"):
        from tenantgate.events.nats_sink import NatsSink

        return NatsSink(url, nats or NatsSettings())
    if scheme == "file" and sep and rest:
        from tenantgate.events.file_sink import FileSink

        return FileSink(rest.removeprefix("//"))
    raise ConfigurationError(f"unsupported event sink {url!r}; supported: nats://HOST:4222 (JetStream) or "
                             "file:DIRECTORY (JSON lines)")
