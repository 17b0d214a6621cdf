"""The JSON-lines sink and the export loops over a real SQLite registry: a torn last line is cut and written
again, the file ends gap-free and duplicate-free, a file of another registry is refused, usage reports carry
totals and deltas (fake clock, real memory counters)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest

from tenantgate.clock import FakeClock
from tenantgate.counters.memory import MemoryCounterStore
from tenantgate.engines.quota import CounterOp
from tenantgate.errors import FailedPrecondition
from tenantgate.events.cloudevents import decode, encode_audit
from tenantgate.events.exporter import AuditExporter, ExportSettings, UsageExporter
from tenantgate.events.file_sink import AUDIT_FILE, USAGE_FILE, FileSink, repair_tail
from tenantgate.events.sinks import SinkUnavailable, open_sink
from tenantgate.model import QuotaKind, QuotaSpec
from tenantgate.registry.records import TenantRecord
from tenantgate.registry.sqlite import SQLiteStore
from tests.conftest import manifests, tenant_doc


def audit_ids(directory: Path) -> list[int]:
    return [int(json.loads(line)["id"]) for line in (directory / AUDIT_FILE).read_bytes().splitlines()]


def export(store: SQLiteStore, directory: Path, batch: int = 7) -> int:
    async def run() -> int:
        sink = open_sink(f"file:{directory}")
        try:
            return await AuditExporter(store, sink, ExportSettings(batch=batch)).export()
        finally:
            await sink.close()
    return asyncio.run(run())


def changes(store: SQLiteStore, count: int) -> None:
    """``count`` ledger entries: transitions of one tenant back and forth."""
    store.apply(manifests([tenant_doc("acme")]))  # tenant.create and apply: two entries
    for i in range(count - 2):
        store.transition("acme", "Suspended" if i % 2 == 0 else "Active")


def test_the_file_holds_every_entry_once_in_order_across_runs(sqlite_store: SQLiteStore, tmp_path: Path) -> None:
    changes(sqlite_store, 20)
    assert export(sqlite_store, tmp_path / "events") == 20
    assert export(sqlite_store, tmp_path / "events") == 0  # nothing again
    sqlite_store.transition("acme", "Suspended")
    assert export(sqlite_store, tmp_path / "events") == 1
    assert audit_ids(tmp_path / "events") == list(range(1, 22))
    lines = (tmp_path / "events" / AUDIT_FILE).read_bytes().splitlines()
    assert lines == [encode_audit(entry).body for entry in sqlite_store.audit_entries(limit=100)]


@pytest.mark.parametrize("torn", [b'{"specversion":"1.0","id":"1', b"{", b"\x00" * 300])
def test_a_torn_last_line_is_cut_and_its_entries_written_again(sqlite_store: SQLiteStore, tmp_path: Path,
                                                               torn: bytes) -> None:
    changes(sqlite_store, 12)
    directory = tmp_path / "events"
    export(sqlite_store, directory)
    whole = (directory / AUDIT_FILE).read_bytes()
    lines = whole.splitlines(keepends=True)
    # A crash in the middle of writing entry 9: eight whole lines, then part of the ninth (or garbage).
    (directory / AUDIT_FILE).write_bytes(b"".join(lines[:8]) + (lines[8][:len(lines[8]) // 2] if torn == b"{"
                                                                  else torn))
    assert export(sqlite_store, directory) == 4
    assert (directory / AUDIT_FILE).read_bytes() == whole


def test_a_file_that_is_all_one_torn_line_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"specversion":"1.0","id":"1","da')
    assert repair_tail(path) is None and path.read_bytes() == b""


def test_a_file_whose_last_line_is_not_an_audit_event_is_refused(sqlite_store: SQLiteStore, tmp_path: Path) -> None:
    changes(sqlite_store, 3)
    directory = tmp_path / "events"
    directory.mkdir()
    (directory / AUDIT_FILE).write_bytes(b'{"hello": "world"}\n')
    with pytest.raises(FailedPrecondition, match="not a tenantgate audit event"):
        export(sqlite_store, directory)
    (directory / AUDIT_FILE).write_bytes(b"x" * (3 * 1024 * 1024))  # no line break at all, far past any event
    with pytest.raises(FailedPrecondition, match="not an event file"):
        export(sqlite_store, directory)
    assert (directory / AUDIT_FILE).stat().st_size == 3 * 1024 * 1024  # refused, not cut


def test_a_file_of_another_registry_is_refused(tmp_path: Path) -> None:
    first, second = SQLiteStore(tmp_path / "first.db"), SQLiteStore(tmp_path / "second.db")
    changes(first, 5)
    changes(second, 3)
    export(first, tmp_path / "events")
    with pytest.raises(FailedPrecondition, match="no entry 5"):
        export(second, tmp_path / "events")
    changes(second, 4)  # now it has an entry 5, but not the same one
    with pytest.raises(FailedPrecondition, match="not the registry's entry 5"):
        export(second, tmp_path / "events")
    assert audit_ids(tmp_path / "events") == [1, 2, 3, 4, 5]
    first.close()
    second.close()


def test_one_exporter_writes_a_directory_at_a_time(tmp_path: Path) -> None:
    async def run() -> None:
        first, second = FileSink(str(tmp_path)), FileSink(str(tmp_path))
        assert await first.last_audit() is None
        with pytest.raises(SinkUnavailable, match="another exporter"):
            await second.last_audit()
        await first.close()
        assert await second.last_audit() is None
        await second.close()
    asyncio.run(run())


@pytest.mark.parametrize("url", ["", "file:", "nats:/x", "kafka://h:1", "/tmp/x"])
def test_an_unsupported_sink_url_is_a_configuration_error(url: str) -> None:
    from tenantgate.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="nats://HOST:4222"):
        open_sink(url)


USERS = QuotaSpec("users", QuotaKind.ALLOCATION, 5)


def test_usage_reports_each_tenant_every_period_with_deltas(sqlite_store: SQLiteStore, tmp_path: Path) -> None:
    sqlite_store.apply(manifests([tenant_doc("acme", quotas={"users": {"allocation": 5}, "ai": {"limit": 9,
                                                                                                   "period": "day"}}),
                                  tenant_doc("globex"), tenant_doc("gone")]))
    sqlite_store.transition("gone", "Suspended")
    sqlite_store.transition("gone", "Archived")
    sqlite_store.transition("gone", "Deleted", force=True)
    clock = FakeClock(1_800_000_030.0)
    counters = MemoryCounterStore()

    async def run() -> list[dict[str, object]]:
        sink = FileSink(str(tmp_path))
        usage = UsageExporter(sqlite_store, counters, sink, interval=60, clock=clock, page=1)
        await counters.consume("acme", [CounterOp(USERS, 3)], clock.now())
        assert usage.last_period_end() == 1_800_000_000
        assert await usage.report(1_800_000_060) == 2  # acme and globex; the deleted tenant is not billed
        await counters.consume("acme", [CounterOp(USERS, 4)], clock.now())  # denied: 3 + 4 > 5
        await counters.consume("acme", [CounterOp(USERS, 1)], clock.now())
        await usage.report(1_800_000_120)
        await sink.close()
        return [decode(line) for line in (tmp_path / USAGE_FILE).read_bytes().splitlines()]

    events = asyncio.run(run())
    assert [event["id"] for event in events] == ["usage/acme/1800000060", "usage/globex/1800000060",
                                                 "usage/acme/1800000120", "usage/globex/1800000120"]
    first, later = events[0]["data"], events[2]["data"]
    assert first["quotas"] == {"ai": {"consumed": 0, "denied": 0}, "users": {"consumed": 3, "denied": 0}}
    assert later["previous_period_end"] == "2027-01-15T08:01:00+00:00"
    assert later["quotas"]["users"] == {"consumed": 4, "denied": 4, "consumed_delta": 1, "denied_delta": 4}
    assert events[3]["data"]["quotas"] == {}



# The threads that parsed a stored tenant document of a WatchedRegistry's answers.
DOCUMENT_READS: set[int] = set()


class WatchedRecord(TenantRecord):
    """A tenant record that notes the thread parsing its document."""

    @property  # type: ignore[override]
    def document(self) -> Any:
        DOCUMENT_READS.add(threading.get_ident())
        return json.loads(self.document_json)


class WatchedRegistry:
    """A real store whose reads, and the parsing of the documents they answer, note the thread they run on."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store, self.threads = store, set[int]()

    def audit_entries(self, **kwargs: Any) -> Any:
        self.threads.add(threading.get_ident())
        return self.store.audit_entries(**kwargs)

    def list_tenants(self, **kwargs: Any) -> Any:
        self.threads.add(threading.get_ident())
        return [dataclasses.replace(info, record=WatchedRecord(**dataclasses.asdict(info.record)))
                for info in self.store.list_tenants(**kwargs)]

    def close(self) -> None:
        self.store.close()


def test_registry_reads_and_encoding_run_off_the_event_loop(sqlite_store: SQLiteStore, tmp_path: Path) -> None:
    """A read of a page of the ledger (and its encoding, in the same call) or of the tenants takes milliseconds
    to seconds: never on the loop, which the usage export's counter calls and the other loop share."""
    changes(sqlite_store, 30)
    registry = WatchedRegistry(sqlite_store)

    async def run() -> int:
        sink = FileSink(str(tmp_path))
        await AuditExporter(registry, sink, ExportSettings(batch=4)).export()
        await UsageExporter(registry, MemoryCounterStore(), sink, interval=60, clock=FakeClock(), page=1).report(60)
        await sink.close()
        return threading.get_ident()

    DOCUMENT_READS.clear()
    loop_thread = asyncio.run(run())
    assert registry.threads and loop_thread not in registry.threads
    assert DOCUMENT_READS and loop_thread not in DOCUMENT_READS  # acme declares no quota: its document is read


def test_a_directory_that_cannot_be_written_is_said_plainly(tmp_path: Path) -> None:
    (tmp_path / "events").write_text("a file, not a directory")

    async def run() -> None:
        with pytest.raises(SinkUnavailable, match="cannot open the event files"):
            await FileSink(str(tmp_path / "events")).last_audit()
    asyncio.run(run())


def test_usage_is_reported_at_the_end_of_each_period_until_stopped(sqlite_store: SQLiteStore, tmp_path: Path) -> None:
    sqlite_store.apply(manifests([tenant_doc("acme")]))
    clock = FakeClock(1_800_000_030.0)
    waited: list[float] = []

    async def run() -> None:
        stop = asyncio.Event()

        async def fake_wait(_: asyncio.Event, seconds: float) -> None:
            waited.append(seconds)
            clock.advance(seconds)
            if len(waited) == 3:
                stop.set()

        sink = FileSink(str(tmp_path))
        await UsageExporter(sqlite_store, MemoryCounterStore(), sink, interval=60, clock=clock,
                            waiter=fake_wait).run(stop)
        await sink.close()

    asyncio.run(run())
    assert waited == [30.0, 60.0, 60.0]  # to the first multiple of the interval, then one interval each
    assert [decode(line)["id"] for line in (tmp_path / USAGE_FILE).read_bytes().splitlines()] == [
        "usage/acme/1800000060", "usage/acme/1800000120"]


def test_usage_reports_the_quotas_a_tenant_takes_from_its_plan(sqlite_store: SQLiteStore, tmp_path: Path) -> None:
    plan = {"apiVersion": "tenantgate/v1", "kind": "Plan", "metadata": {"id": "pro"},
            "spec": {"quotas": {"users": {"allocation": 5}, "api": {"rate": "10/second"}}}}
    sqlite_store.apply(manifests([plan, tenant_doc("acme", plan="pro", quotas={"ai": {"limit": 9, "period": "day"}}),
                                  tenant_doc("globex", plan="pro"), tenant_doc("initech")]))
    counters, clock = MemoryCounterStore(), FakeClock(1_800_000_030.0)

    async def run() -> list[dict[str, Any]]:
        await counters.consume("globex", [CounterOp(USERS, 2)], clock.now())
        sink = FileSink(str(tmp_path))
        await UsageExporter(sqlite_store, counters, sink, interval=60, clock=clock).report(1_800_000_060)
        await sink.close()
        return [decode(line) for line in (tmp_path / USAGE_FILE).read_bytes().splitlines()]

    reported = {event["subject"]: event["data"]["quotas"] for event in asyncio.run(run())}
    zero = {"consumed": 0, "denied": 0}
    assert reported == {"acme": {"ai": zero, "api": zero, "users": zero},
                        "globex": {"api": zero, "users": {"consumed": 2, "denied": 0}}, "initech": {}}


class OlderServer:
    """A real store behind an Admin API of an older server, which answered a page too large for one message with
    RESOURCE_EXHAUSTED: more than ``most`` entries at once, or any page holding entry ``oversized``."""

    def __init__(self, store: SQLiteStore, most: int, oversized: int = 0) -> None:
        self.store, self.most, self.oversized, self.asked = store, most, oversized, list[int]()

    def audit_entries(self, *, after_seq: int = 0, limit: int = 100, **kwargs: Any) -> Any:
        self.asked.append(limit)
        if limit > self.most or after_seq < self.oversized <= after_seq + limit:
            raise TooLargeAnswer()
        return self.store.audit_entries(after_seq=after_seq, limit=limit, **kwargs)

    def list_tenants(self, **kwargs: Any) -> Any:
        return self.store.list_tenants(**kwargs)

    def close(self) -> None:
        self.store.close()


class TooLargeAnswer(grpc.RpcError):  # type: ignore[misc]
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.RESOURCE_EXHAUSTED

    def details(self) -> str:
        return "Sent message larger than max (6101927 vs. 4194304)"


def test_an_answer_too_large_for_one_message_halves_the_batch_not_retries_it(sqlite_store: SQLiteStore,
                                                                              tmp_path: Path) -> None:
    """RESOURCE_EXHAUSTED was retried as it was, forever: the same batch is always too large."""
    changes(sqlite_store, 20)
    registry = OlderServer(sqlite_store, most=5)

    async def run() -> int:
        sink = FileSink(str(tmp_path))
        try:
            return await AuditExporter(registry, sink, ExportSettings(batch=16)).export()
        finally:
            await sink.close()

    assert asyncio.run(run()) == 20
    assert audit_ids(tmp_path) == list(range(1, 21)) and registry.asked[:3] == [16, 8, 4]


def test_an_entry_too_large_for_one_message_ends_the_export_saying_what_to_do(sqlite_store: SQLiteStore,
                                                                               tmp_path: Path) -> None:
    changes(sqlite_store, 9)
    registry = OlderServer(sqlite_store, most=1000, oversized=5)

    async def run() -> None:
        sink = FileSink(str(tmp_path))
        try:
            await AuditExporter(registry, sink, ExportSettings(batch=8)).run(asyncio.Event())
        finally:
            await sink.close()

    with pytest.raises(FailedPrecondition, match=r"audit entry 5 is larger than one Admin API message .*export from "
                                                 r"the registry's store instead"):
        asyncio.run(run())
    assert audit_ids(tmp_path) == [1, 2, 3, 4]
