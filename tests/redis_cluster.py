"""A Redis Cluster on loopback from the machine's own redis-server and redis-cli, for the quota tests (the
fixtures in conftest.py) and benchmarks/cluster_bench.py."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path
from typing import Any

# Redis Cluster on loopback, from the machine's own redis-server: the quota tests run on it beside memory and
# one Redis. Each node's cluster bus listens on its port + 10000.
CLUSTER_BUS_OFFSET = 10000


class ClusterUnavailable(Exception):
    """The machine cannot run a Redis Cluster (no redis-server / redis-cli, or the cluster did not form)."""


def cluster_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports below 65536 - 10000 whose cluster bus port is free too. Both
    are held while choosing, so no two nodes get the same; another program may still take one before its
    node binds it (RedisCluster.start then starts again on new ports)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(50 * count):
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
            bus = socket.socket()
            try:
                if port + CLUSTER_BUS_OFFSET >= 65536:
                    raise OSError("bus port out of range")
                bus.bind(("127.0.0.1", port + CLUSTER_BUS_OFFSET))
            except OSError:
                probe.close()
                bus.close()
                continue
            held += [probe, bus]
            ports.append(port)
            if len(ports) == count:
                return ports
    finally:
        for sock in held:
            sock.close()
    raise ClusterUnavailable(f"found only {len(ports)} of {count} free port pairs (port, port + 10000)")


class RedisCluster:
    """A Redis Cluster of ``primaries`` redis-server processes (and ``replicas`` per primary) on loopback,
    each in a directory of its own under ``root``, made with ``redis-cli --cluster create``. Nothing on disk
    (``--save '' --appendonly no``): a restarted node comes back empty, as the tests want. ``settings``: more
    redis-server arguments, e.g. ("--cluster-require-full-coverage", "no")."""

    def __init__(self, root: Path, primaries: int = 3, replicas: int = 0, node_timeout_ms: int = 5000,
                 settings: tuple[str, ...] = ()) -> None:
        self.root = root
        self.primary_count = primaries
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.settings = settings
        self.processes: dict[int, Any] = {}  # port -> subprocess.Popen
        self.frozen: set[int] = set()  # ports of nodes stopped with SIGSTOP
        self.ports: list[int] = []

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self, timeout: float = 30.0, attempts: int = 3) -> RedisCluster:
        import shutil

        for program in ("redis-server", "redis-cli"):
            if shutil.which(program) is None:
                raise ClusterUnavailable(f"{program} is not on PATH")
        problem = ""
        for _ in range(attempts):
            try:
                self._start_once(timeout)
                return self
            except ClusterUnavailable as exc:
                problem = str(exc)
                self.stop()
        raise ClusterUnavailable(problem)

    def _start_once(self, timeout: float) -> None:
        import subprocess


        deadline = time.monotonic() + timeout
        self.ports = cluster_ports(self.primary_count * (1 + self.replicas))
        for port in self.ports:
            self.start_node(port)
        for port in self.ports:  # each node answers before the cluster is made of them
            wait_answers(port, self.processes[port], deadline, lambda port=port: self.node_log(port))
        try:
            created = subprocess.run(
                ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{port}" for port in self.ports),
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"], capture_output=True, text=True,
                timeout=max(1.0, deadline - time.monotonic()), stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise ClusterUnavailable(f"redis-cli --cluster create did not finish: {exc}") from None
        if created.returncode != 0:
            raise ClusterUnavailable(f"redis-cli --cluster create failed ({created.returncode}): "
                                     f"{created.stdout[-2000:]}{created.stderr[-2000:]}")
        self.wait_ok(deadline - time.monotonic())

    def start_node(self, port: int) -> None:
        """Starts (or restarts) the node of ``port`` in its own directory, its cluster state in nodes-PORT.conf."""
        import subprocess

        directory = self.root / f"node-{port}"
        directory.mkdir(parents=True, exist_ok=True)
        with (directory / "redis.log").open("a") as log:
            self.processes[port] = subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no",
                 "--cluster-enabled", "yes", "--cluster-config-file", str(directory / f"nodes-{port}.conf"),
                 "--cluster-node-timeout", str(self.node_timeout_ms), "--save", "", "--appendonly", "no",
                 "--dir", str(directory),
                 # A replica syncs at once (Redis 7 waits 5 s for more replicas by default) and may always stand
                 # for election, however long its link was down.
                 "--repl-diskless-sync-delay", "0", "--cluster-replica-validity-factor", "0",
                 "--shutdown-timeout", "0", *self.settings],
                cwd=directory, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def node_log(self, port: int) -> str:
        path = self.root / f"node-{port}" / "redis.log"
        return path.read_text()[-2000:] if path.exists() else ""

    def client(self, port: int) -> Any:
        import redis

        return redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)

    def alive(self, port: int) -> bool:
        """Whether the node of ``port`` runs and is not frozen."""
        process = self.processes.get(port)
        return process is not None and process.poll() is None and port not in self.frozen

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every running node says cluster_state:ok, knows the same primaries covering all 16384 slots,
        and every replica's link to its primary is up."""
        import redis

        deadline = time.monotonic() + timeout
        problem = ""
        while True:
            try:
                problem = self._not_ok()
                if not problem:
                    return
            except redis.RedisError as exc:
                problem = str(exc)
            if time.monotonic() > deadline:
                raise ClusterUnavailable(f"the cluster on {self.ports} is not ok after {timeout:.0f}s: {problem}")
            time.sleep(0.05)

    def _not_ok(self) -> str:
        views = set()
        for port in self.ports:
            if not self.alive(port):
                continue
            with self.client(port) as node:
                info = node.execute_command("CLUSTER", "INFO")
                if "cluster_state:ok" not in info:
                    return f"node {port}: not cluster_state:ok"
                views.add(tuple(sorted(self._primaries_seen_by(node))))
                role = node.info("replication")
                if role["role"] == "slave" and role.get("master_link_status") != "up":
                    return f"replica {port}: link to its primary is {role.get('master_link_status')}"
        if len(views) != 1:
            return f"the nodes disagree on the primaries: {views}"
        (primaries,) = views
        if len(primaries) != self.primary_count:
            return f"{len(primaries)} primaries serve slots, not {self.primary_count}"
        return ""

    @staticmethod
    def _primaries_seen_by(node: Any) -> list[int]:
        """The ports of the primaries that hold slots and are not failed, as one node sees them."""
        ports = []
        for line in node.execute_command("CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "master" in fields[2].split(",") and "fail" not in fields[2] and len(fields) > 8:
                ports.append(int(fields[1].split("@")[0].rsplit(":", 1)[1]))
        return ports

    def primaries(self) -> list[int]:
        """The ports of the primaries now serving slots, as the first running node sees them."""
        port = next(port for port in self.ports if self.alive(port))
        with self.client(port) as node:
            return sorted(self._primaries_seen_by(node))

    def replica_of(self, primary: int) -> int:
        """The port of ``primary``'s replica."""
        with self.client(primary) as node:
            replicas = node.info("replication")
        return int(replicas["slave0"]["port"])

    def owner(self, key: str) -> int:
        """The port of the primary serving ``key``'s slot now."""
        port = next(port for port in self.ports if self.alive(port))
        with self.client(port) as node:
            slot = int(node.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, primary, *_ in node.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return int(primary[1])
        raise AssertionError(f"no node serves slot {slot}")

    def keys(self, pattern: str) -> dict[int, list[str]]:
        """Keys matching ``pattern`` on each running primary, by port."""
        found = {}
        for port in self.primaries():
            with self.client(port) as node:
                found[port] = list(node.scan_iter(match=pattern, count=1000))
        return found

    def delete(self, pattern: str) -> None:
        """Deletes the keys matching ``pattern`` on every primary (one slot's keys at a time: no CROSSSLOT)."""
        for port, keys in self.keys(pattern).items():
            with self.client(port) as node:
                for key in keys:
                    node.delete(key)

    def kill(self, port: int) -> None:
        """SIGKILL: the node dies with whatever it has not yet sent its replica."""
        process = self.processes[port]
        process.kill()
        process.wait(10)

    def freeze(self, port: int) -> None:
        """SIGSTOP: the node keeps its connections but answers nothing, as a hung or partitioned host."""
        self.processes[port].send_signal(signal.SIGSTOP)
        self.frozen.add(port)

    def thaw(self, port: int) -> None:
        self.processes[port].send_signal(signal.SIGCONT)
        self.frozen.discard(port)

    def stop(self) -> None:
        for port in list(self.frozen):
            self.thaw(port)
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(5)
            except Exception:
                process.kill()
                process.wait(5)
        self.processes = {}


def wait_answers(port: int, process: Any, deadline: float, log: Any = lambda: "") -> None:
    """Polls PING until the redis-server on ``port`` answers; raises ClusterUnavailable (with ``log()``) once
    ``process`` exits or the deadline passes."""
    import redis

    while True:
        if process.poll() is not None:
            raise ClusterUnavailable(f"redis-server on port {port} exited with {process.returncode}: {log()}")
        try:
            with redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1) as client:
                client.ping()
            return
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise ClusterUnavailable(f"redis-server on port {port} did not answer: {log()}") from None
            time.sleep(0.02)
