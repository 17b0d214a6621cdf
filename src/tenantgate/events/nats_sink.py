"""The NATS JetStream sink (the ``nats`` extra: nats-py).

Two streams, created when missing: audit events on ``<prefix>.audit.<tenant>`` in the audit stream, usage on
``<prefix>.usage.<tenant>`` in the usage stream (registry-wide audit entries use the token ``_registry``). Each
audit message carries ``Nats-Msg-Id`` = its ledger sequence and ``Nats-Expected-Last-Sequence`` = the stream
sequence it must follow, so JetStream stores it only right after its predecessor: a message lost in a crash can
never be followed by a later one (no gap), and one published again is dropped by its id (no duplicate). After
any error the connection is closed (no client-side reconnect, whose buffer could deliver stale publishes), and
the exporter reconnects and resumes from the stream's last message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

from tenantgate.errors import ConfigurationError, FailedPrecondition, InvalidArgument
from tenantgate.events.cloudevents import OutboundEvent, audit_position
from tenantgate.events.sinks import NatsSettings, Position, SinkUnavailable

try:
    import nats
    import nats.errors
    import nats.js.errors
    from nats.aio.client import Client
    from nats.js import JetStreamContext
    from nats.js.api import StorageType, StreamConfig
except ImportError as exc:  # pragma: no cover - exercised by the packaging test without the extra
    raise ConfigurationError("the NATS event sink needs nats-py: pip install 'tenantgate[nats]'") from exc

log = logging.getLogger("tenantgate.events")
_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SUBJECT_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,64}(?:\.[A-Za-z0-9_-]{1,64}){0,7}")
# At most this many publishes wait for their acknowledgement at once.
WINDOW = 512
_NATS_ERRORS = (nats.errors.Error, OSError, TimeoutError)


async def _quiet(error: Exception) -> None:
    log.debug("NATS: %s", error)


class NatsSink:
    def __init__(self, url: str, settings: NatsSettings) -> None:
        for name in (settings.audit_stream, settings.usage_stream):
            if not _STREAM_NAME.fullmatch(name):
                raise ConfigurationError(f"stream name {name!r}: letters, digits, _ and - only (at most 64)")
        if settings.audit_stream == settings.usage_stream:
            raise ConfigurationError("the audit and the usage stream must differ: an export resumes from the "
                                     "audit stream's last message")
        if not _SUBJECT_PREFIX.fullmatch(settings.subject_prefix):
            raise ConfigurationError(f"subject prefix {settings.subject_prefix!r}: dot-separated tokens of letters, "
                                     "digits, _ and -")
        self._url = url
        self._settings = settings
        self.description = f"{url} (streams {settings.audit_stream}, {settings.usage_stream})"
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._last_stream_seq = 0  # of the audit stream, as this connection last saw it
        self._guard = asyncio.Lock()

    def _subject(self, kind: str, token: str) -> str:
        return f"{self._settings.subject_prefix}.{kind}.{token}"

    async def _connect(self) -> JetStreamContext:
        if self._js is not None:
            return self._js
        timeout = self._settings.timeout
        # One attempt, then an error (the exporter backs off and tries again): nats-py's initial connect retries
        # for ever with max_reconnect_attempts=0, and after a loss the exporter reconnects itself.
        nc = await nats.connect(self._url, allow_reconnect=False, connect_timeout=timeout, max_reconnect_attempts=1,
                                reconnect_time_wait=0, error_cb=_quiet, name="tenantgate events export")
        js = nc.jetstream(timeout=timeout)
        self._nc, self._js = nc, js
        for stream, kind in ((self._settings.audit_stream, "audit"), (self._settings.usage_stream, "usage")):
            try:
                await js.stream_info(stream)
            except nats.js.errors.NotFoundError:
                await js.add_stream(StreamConfig(name=stream, subjects=[self._subject(kind, ">")],
                                                 storage=StorageType.FILE,
                                                 duplicate_window=self._settings.duplicate_window))
                log.info("created JetStream stream %s for %s.%s.>", stream, self._settings.subject_prefix, kind)
        return js

    @contextlib.asynccontextmanager
    async def _operation(self) -> AsyncIterator[None]:
        """One operation at a time (the audit and the usage export share the sink); after a NATS error the
        connection is closed and the error is SinkUnavailable (retried)."""
        async with self._guard:
            try:
                yield
            except _NATS_ERRORS as exc:
                await self._close()
                raise SinkUnavailable(f"NATS at {self._url}: {type(exc).__name__}: {exc}") from exc

    async def last_audit(self) -> Position | None:
        async with self._operation():
            await self._close()
            return await self._last_audit()

    async def _last_audit(self) -> Position | None:
        js = await self._connect()
        stream = self._settings.audit_stream
        state = (await js.stream_info(stream)).state
        self._last_stream_seq = state.last_seq
        if state.last_seq == 0:
            return None
        if state.messages == 0:
            raise FailedPrecondition(f"stream {stream} is empty but has held {state.last_seq} messages (purged, or "
                                     "limits removed them): the export cannot tell where to resume")
        message = await js.get_msg(stream, seq=state.last_seq)
        try:
            return Position(*audit_position(message.data or b""))
        except InvalidArgument as exc:
            raise FailedPrecondition(f"the last message of stream {stream} (sequence {state.last_seq}) is not a "
                                     f"tenantgate audit event ({exc.message}): it must hold audit events only") \
                from exc

    async def publish_audit(self, events: Sequence[OutboundEvent]) -> None:
        async with self._operation():
            await self._publish_audit(events)

    async def _publish_audit(self, events: Sequence[OutboundEvent]) -> None:
        js = self._js
        if js is None:
            raise SinkUnavailable("publish before resume: not connected")
        for start in range(0, len(events), WINDOW):
            pending = []
            expected = self._last_stream_seq
            for event in events[start:start + WINDOW]:
                headers = {"Nats-Msg-Id": event.msg_id}
                if expected:  # JetStream ignores an expected sequence of 0: the first message goes unguarded
                    headers["Nats-Expected-Last-Sequence"] = str(expected)
                pending.append(await js.publish_async(self._subject("audit", event.token), event.body,
                                                      headers=headers))
                expected += 1
            acks = await self._acks(pending)
            for ack in acks:
                if ack.duplicate or ack.stream != self._settings.audit_stream:
                    # Already held (a publish whose acknowledgement was lost): resume from the stream again.
                    raise SinkUnavailable(f"stream {ack.stream} already held sequence {ack.seq}; resuming")
                self._last_stream_seq = ack.seq

    async def _acks(self, pending: list[asyncio.Future[Any]]) -> list[Any]:
        try:
            async with asyncio.timeout(self._settings.timeout):
                return await asyncio.gather(*pending)
        finally:
            for future in pending:
                future.cancel()  # no-op for the answered ones; the others are never awaited again

    async def publish_usage(self, events: Sequence[OutboundEvent]) -> None:
        async with self._operation():
            js = await self._connect()
            for start in range(0, len(events), WINDOW):
                await self._acks([await js.publish_async(self._subject("usage", event.token), event.body,
                                                         headers={"Nats-Msg-Id": event.msg_id})
                                  for event in events[start:start + WINDOW]])

    async def close(self) -> None:
        async with self._guard:
            await self._close()

    async def _close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            try:
                async with asyncio.timeout(self._settings.timeout):
                    await nc.close()
            except _NATS_ERRORS:
                log.debug("closing the NATS connection failed", exc_info=True)
