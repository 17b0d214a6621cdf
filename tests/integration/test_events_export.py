"""`tenantgate events export` as users run it, against a nats-server -js of the test's own on a loopback port:
2,000 changes while NATS and the exporter are killed (SIGKILL) at random moments and restarted, and the stream
ends with exactly the ledger's sequences 1..N, in order, each the right event; usage from real Redis counters;
hostile streams refused; a clear error without nats-py."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tenantgate.clock import FakeClock
from tenantgate.counters.redis import RedisCounterStore
from tenantgate.engines.quota import CounterOp
from tenantgate.events.cloudevents import decode, encode_audit, tenant_token
from tenantgate.events.exporter import UsageExporter
from tenantgate.events.sinks import NatsSettings, open_sink
from tenantgate.model import QuotaKind, QuotaSpec
from tenantgate.registry.records import RegistryStore
from tenantgate.registry.sqlite import SQLiteStore
from tests.conftest import REQUIRE_SERVICES, TENANTGATE, manifests, tenant_doc

nats = pytest.importorskip("nats", reason="the nats extra (nats-py) is not installed")
SOURCE = "//registry.test/events"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"nats-server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"nats-server did not listen on {port} within {timeout}s")


class NatsServer:
    """nats-server -js on a loopback port with its store in a directory of its own; ``kill`` is SIGKILL and
    ``start`` brings it back on the same port and store."""

    def __init__(self, binary: str, root: Path) -> None:
        self.binary, self.root = binary, root
        self.port = _free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.root / "nats.log", "ab")  # noqa: SIM115 - the server's, closed with it
        self.process = subprocess.Popen([self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port),
                                         "-sd", str(self.root / "store")], stdout=log, stderr=log)
        log.close()
        _wait_for_port(self.port, self.process)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    binary = shutil.which("nats-server") or ("/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists()
                                              else None)
    if binary is None:
        message = "nats-server is not installed (Debian: apt-get install nats-server)"
        if REQUIRE_SERVICES:
            pytest.fail(message + "; TENANTGATE_REQUIRE_SERVICES=1 forbids skipping")
        pytest.skip(message)
    server = NatsServer(binary, tmp_path / "nats")
    server.root.mkdir()
    server.start()
    yield server
    server.kill()


def start_exporter(registry: str, nats_url: str, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([TENANTGATE, "events", "export", "--registry", registry, "--sink", nats_url,
                                 "--source", SOURCE, "--poll-interval", "0.05", *extra],
                                stdout=out, stderr=out)


async def _stream(url: str, stream: str) -> tuple[Any, list[Any]]:
    """The stream's state and every message it holds, in stream order."""
    nc = await nats.connect(url, allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=10)
        state = (await js.stream_info(stream)).state
        messages = [await js.get_msg(stream, seq=seq) for seq in range(state.first_seq, state.last_seq + 1)]
        return state, messages
    finally:
        await nc.close()


async def _last_id(url: str, stream: str) -> int:
    try:
        nc = await nats.connect(url, allow_reconnect=False, connect_timeout=1)
    except Exception:
        return -1
    try:
        js = nc.jetstream(timeout=2)
        state = (await js.stream_info(stream)).state
        if state.last_seq == 0:
            return 0
        return int((await js.get_msg(stream, seq=state.last_seq)).headers["Nats-Msg-Id"])
    except Exception:
        return -1
    finally:
        await nc.close()


def wait_for_export(url: str, last: int, exporter: subprocess.Popen[bytes], log: Path,
                    timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while (seen := asyncio.run(_last_id(url, "TENANTGATE_AUDIT"))) != last:
        assert exporter.poll() is None, f"the exporter exited with {exporter.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"the stream ends at {seen}, not {last}:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


def assert_stream_is_the_ledger(url: str, store: RegistryStore) -> int:
    entries = store.audit_entries(limit=1_000_000)
    state, messages = asyncio.run(_stream(url, "TENANTGATE_AUDIT"))
    ids = [int(message.headers["Nats-Msg-Id"]) for message in messages]
    assert state.messages == len(entries) and state.first_seq == 1
    assert ids == list(range(1, len(entries) + 1)), "the stream is not exactly the ledger's sequences in order"
    for entry, message in zip(entries, messages, strict=True):
        assert message.data == encode_audit(entry, SOURCE).body, f"event {entry.seq} is not its entry"
        assert message.subject == f"tenantgate.audit.{tenant_token(entry.tenant_id)}"
    return len(entries)


def _progress(url: str, beyond: int, exporter: subprocess.Popen[bytes], log: Path, timeout: float = 40.0) -> int:
    """Waits until the stream's last audit event is past ``beyond``: the exporter is at work."""
    deadline = time.monotonic() + timeout
    while (seen := asyncio.run(_last_id(url, "TENANTGATE_AUDIT"))) <= beyond:
        assert exporter.poll() is None, f"the exporter exited with {exporter.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"the stream stays at {seen}:\n{log.read_text()[-3000:]}"
    return seen


INTERRUPTED = "audit export interrupted"


def _logged(log: Path, line: str, before: int, exporter: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Waits until the exporter has logged ``line`` more than ``before`` times."""
    deadline = time.monotonic() + timeout
    while log.read_text().count(line) <= before:
        assert exporter.poll() is None, f"the exporter exited with {exporter.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"the exporter never logged {line!r}:\n{log.read_text()[-3000:]}"
        time.sleep(0.01)


def test_killed_nats_and_exporter_at_random_moments_leave_exactly_the_ledger_in_the_stream(
        tmp_path: Path, nats_server: NatsServer) -> None:
    rng = random.Random(20260418)
    store = SQLiteStore(tmp_path / "registry.db")
    tenants = [f"t{i:02d}" for i in range(20)]
    store.apply(manifests([tenant_doc(tenant) for tenant in tenants]))
    registry = f"sqlite://{tmp_path / 'registry.db'}"
    log = tmp_path / "exporter.log"
    exporter = start_exporter(registry, nats_server.url, log, "--batch", "16")
    states = dict.fromkeys(tenants, "Active")
    changes, done, seen, kills = 2000, 0, 0, {"exporter": 0, "nats": 0}

    def change(count: int) -> None:
        nonlocal done
        for _ in range(min(count, changes - done)):
            tenant = rng.choice(tenants)
            states[tenant] = "Suspended" if states[tenant] == "Active" else "Active"
            store.transition(tenant, states[tenant])
            done += 1

    try:
        while done < changes:
            change(rng.randint(40, 160))  # a burst of changes, while NATS may be down
            if nats_server.process is None:
                nats_server.start()
            target = rng.choice(("exporter", "nats", "both", "nothing"))
            if target == "nothing":
                continue
            # Once the exporter is publishing the burst, a random few more changes, then the kill: it lands in the
            # middle of its work (a batch in flight, an acknowledgement not yet read, a read of the ledger).
            seen = _progress(nats_server.url, seen, exporter, log)
            change(rng.randint(0, 20))
            if target in ("nats", "both"):
                interruptions = log.read_text().count(INTERRUPTED)
                nats_server.kill()
                kills["nats"] += 1
                change(rng.randint(1, 40))  # work for the exporter, which meets the loss and backs off
                _logged(log, INTERRUPTED, interruptions, exporter)
            if target in ("exporter", "both"):
                exporter.kill()
                exporter.wait(10)
                kills["exporter"] += 1
                exporter = start_exporter(registry, nats_server.url, log, "--batch", "16")
        if nats_server.process is None:
            nats_server.start()
        assert min(kills.values()) >= 3, kills
        last = store.audit_entries(after_seq=changes, limit=1_000)[-1].seq
        assert last == changes + len(tenants) + 1  # every tenant's creation, the apply, every change

        wait_for_export(nats_server.url, last, exporter, log)
        assert assert_stream_is_the_ledger(nats_server.url, store) == last

        exporter.send_signal(signal.SIGTERM)  # stops cleanly
        assert exporter.wait(15) == 0, log.read_text()[-3000:]
        assert "Traceback" not in log.read_text()
    finally:
        exporter.kill()  # a no-op once it has stopped; a failed run leaves none behind
    store.close()


def test_an_export_resumes_after_the_stream_and_through_the_admin_api_on_postgresql(
        postgres_url: str, nats_server: NatsServer, tmp_path: Path, start_server: Any) -> None:
    from tenantgate.registry.backends import open_store

    store = open_store(postgres_url)
    store.apply(manifests([tenant_doc("acme"), tenant_doc("globex")]))
    once = subprocess.run([TENANTGATE, "events", "export", "--registry", postgres_url, "--sink", nats_server.url,
                           "--source", SOURCE, "--once"], capture_output=True, text=True, timeout=60)
    assert once.returncode == 0 and "published 3 audit event(s)" in once.stdout, once.stderr
    store.transition("acme", "Suspended")
    server = start_server(registry_url=postgres_url)
    remote = subprocess.run([TENANTGATE, "events", "export", "--registry", f"grpc://{server.admin_target}",
                             "--sink", nats_server.url, "--source", SOURCE, "--once"],
                            capture_output=True, text=True, timeout=60, env={**os.environ,
                                                                              "TENANTGATE_ACTOR": "user:ops"})
    assert remote.returncode == 0 and "published 1 audit event(s) (the sink ends at sequence 4)" in remote.stdout, \
        remote.stderr
    assert assert_stream_is_the_ledger(nats_server.url, store) == 4
    store.close()


def _publish(url: str, subject: str, body: bytes, msg_id: str = "") -> None:
    async def publish() -> None:
        nc = await nats.connect(url)
        js = nc.jetstream()
        try:
            await js.stream_info("TENANTGATE_AUDIT")
        except nats.js.errors.NotFoundError:
            await js.add_stream(name="TENANTGATE_AUDIT", subjects=["tenantgate.audit.>"])
        await js.publish(subject, body, headers={"Nats-Msg-Id": msg_id} if msg_id else None)
        await nc.close()
    asyncio.run(publish())


@pytest.mark.parametrize(("body", "message"), [
    (b"\x00\xff not json", "is not a tenantgate audit event"),
    (json.dumps({"specversion": "1.0", "id": "1", "data": {"seq": 1, "hash": "f" * 64}}).encode(),
     "is not the registry's entry 1"),
    (json.dumps({"specversion": "1.0", "id": "9", "data": {"seq": 9, "hash": "f" * 64}}).encode(),
     "the registry's ledger has no entry 9"),
])
def test_a_stream_that_is_not_this_registrys_ledger_is_refused_and_left_alone(
        tmp_path: Path, nats_server: NatsServer, body: bytes, message: str) -> None:
    store = SQLiteStore(tmp_path / "registry.db")
    store.apply(manifests([tenant_doc("acme")]))
    _publish(nats_server.url, "tenantgate.audit.acme", body)
    result = subprocess.run([TENANTGATE, "events", "export", "--registry", f"sqlite://{tmp_path / 'registry.db'}",
                             "--sink", nats_server.url, "--once"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    state, _ = asyncio.run(_stream(nats_server.url, "TENANTGATE_AUDIT"))
    assert state.messages == 1  # nothing published after it
    store.close()


@pytest.mark.parametrize(("flags", "message"), [
    (["--sink", "nats://127.0.0.1:1", "--stream", "A.B"], "stream name 'A.B'"),
    (["--sink", "nats://127.0.0.1:1", "--stream", "X", "--usage-stream", "X"], "must differ"),
    (["--sink", "nats://127.0.0.1:1", "--subject-prefix", "a.>"], "subject prefix"),
    (["--sink", "kafka://h:1"], "unsupported event sink"),
    (["--sink", "file:x", "--counters", "memory://"], "shared Redis counters"),
    (["--sink", "file:x", "--batch", "0"], "outside 1..10000"),
    (["--sink", "file:x", "--usage-interval", "1e9"], "not a number"),
])
def test_bad_flags_get_a_clear_error_and_change_nothing(tmp_path: Path, flags: list[str], message: str) -> None:
    result = subprocess.run([TENANTGATE, "events", "export", "--registry", f"sqlite://{tmp_path / 'r.db'}", *flags],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "r.db").exists()


def test_without_nats_py_the_nats_sink_names_the_extra(tmp_path: Path) -> None:
    hidden = tmp_path / "hide" / "nats"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('nats-py is not installed here')\n")
    result = subprocess.run([TENANTGATE, "events", "export", "--registry", f"sqlite://{tmp_path / 'r.db'}",
                             "--sink", "nats://127.0.0.1:4222", "--once"], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHONPATH": str(tmp_path / "hide")})
    assert result.returncode == 2 and "pip install 'tenantgate[nats]'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("once", "status", "said"), [(False, 0, "stopped;"), (True, 2, "interrupted;")])
def test_sigterm_stops_it_even_while_nats_does_not_answer(tmp_path: Path, once: bool, status: int, said: str) -> None:
    """A NATS that accepts connections and never answers: the export is stuck in a call, and SIGTERM still
    ends it, within its grace period and nats-py's connect timeout (Python 3.11's wait_for, inside nats-py, may
    hold a cancellation until its timeout); the next start resumes from the stream."""
    store = SQLiteStore(tmp_path / "registry.db")
    store.apply(manifests([tenant_doc("acme")]))
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        silent.settimeout(30)
        log = tmp_path / "exporter.log"
        exporter = start_exporter(f"sqlite://{tmp_path / 'registry.db'}", f"nats://127.0.0.1:{silent.getsockname()[1]}",
                                  log, *(["--once"] if once else []))
        try:
            connection, _ = silent.accept()  # it is connecting, and will wait for an answer
            exporter.send_signal(signal.SIGTERM)
            assert exporter.wait(20) == status
            connection.close()
        finally:
            exporter.kill()
    assert said in log.read_text() and "Traceback" not in log.read_text(), log.read_text()
    store.close()


USERS = QuotaSpec("users", QuotaKind.ALLOCATION, 5)


async def test_usage_from_the_shared_redis_counters_reaches_the_usage_stream_once_per_period(
        tmp_path: Path, nats_server: NatsServer, redis_url: str, redis_prefix: str) -> None:
    store = SQLiteStore(tmp_path / "registry.db")
    store.apply(manifests([tenant_doc("acme", quotas={"users": {"allocation": 5}}), tenant_doc("globex")]))
    counters = RedisCounterStore(redis_url, prefix=redis_prefix)
    clock = FakeClock(1_800_000_030.0)
    sink = open_sink(nats_server.url, NatsSettings())
    usage = UsageExporter(store, counters, sink, interval=60, clock=clock, source=SOURCE)
    try:
        await counters.consume("acme", [CounterOp(USERS, 3)], clock.now())
        await usage.report(1_800_000_060)
        await usage.report(1_800_000_060)  # a period reported again (a restarted exporter): dropped by its id
        await counters.consume("acme", [CounterOp(USERS, 4)], clock.now())
        await usage.report(1_800_000_120)
    finally:
        await sink.close()
        await counters.close()
    _, messages = await _stream(nats_server.url, "TENANTGATE_USAGE")
    assert [(m.subject, m.headers["Nats-Msg-Id"]) for m in messages] == [
        ("tenantgate.usage.acme", "usage/acme/1800000060"), ("tenantgate.usage.globex", "usage/globex/1800000060"),
        ("tenantgate.usage.acme", "usage/acme/1800000120"), ("tenantgate.usage.globex", "usage/globex/1800000120")]
    assert decode(messages[2].data)["data"]["quotas"] == {
        "users": {"consumed": 3, "denied": 4, "consumed_delta": 0, "denied_delta": 4}}

    result = await asyncio.to_thread(subprocess.run, [
        TENANTGATE, "events", "export", "--registry", f"sqlite://{tmp_path / 'registry.db'}", "--sink",
        f"file:{tmp_path / 'events'}", "--counters", redis_url, "--counters-prefix", redis_prefix, "--once"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "and 2 usage event(s)" in result.stdout, result.stderr
    lines = (tmp_path / "events" / "usage.jsonl").read_bytes().splitlines()
    assert [decode(line)["data"]["quotas"] for line in lines] == [{"users": {"consumed": 3, "denied": 4}}, {}]
    store.close()
