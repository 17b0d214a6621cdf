"""The deployment examples in deploy/ and the Dockerfile are real: they parse, the image installs the wheel
built from this repository, the manifest runs the image that deploy/README.md builds, its probes reach a
port that answers without a client certificate, the pod outlives the drain, and the dashboard queries
metrics the server exports. (tests/integration/test_deployment.py runs the manifest's own arguments.)"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import tenantgate.metrics  # noqa: F401  (registers the metrics)
from tenantgate.cli import build_parser
from tenantgate.config import ServeConfig, load_serve_config
from tenantgate.counters.redis import persistence_problem
from tenantgate.errors import ConfigurationError
from tenantgate.server.app import LIVENESS_HEALTH
from tests.conftest import REPO

DEPLOY = REPO / "deploy"
# Seconds the pod keeps after the drain delay and the grace period, for the last stop and the exit.
TERMINATION_MARGIN = 5


def _documents() -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()))


def _pod_spec() -> dict[str, Any]:
    (deployment,) = [d for d in _documents() if d["kind"] == "Deployment"]
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def _container() -> dict[str, Any]:
    (container,) = _pod_spec()["containers"]
    return container


def _manifest_config() -> ServeConfig:
    """The configuration the container's arguments make, validated as `tenantgate serve` validates it."""
    args = build_parser().parse_args(_container()["args"])
    assert args.command == "serve"
    names = {name for name in ServeConfig.__dataclass_fields__}
    flags = {name: value for name, value in vars(args).items() if name in names and value is not None}
    flags["admins"] = tuple(flags.get("admins", ()))
    return load_serve_config(environ={}, flags=flags)


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


def test_kubernetes_probes_reach_the_plaintext_health_port_while_the_decision_port_requires_mtls() -> None:
    container = _container()
    config = _manifest_config()
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"grpc": _port(config.listen), "admin": _port(config.admin_listen),
                     "health": _port(config.health_listen), "metrics": _port(config.metrics_listen)}
    assert config.tls_cert and config.client_ca  # callers of the decision port need a client certificate...
    # ...which the kubelet's gRPC probe never presents: both probes go to the health-only plaintext port
    # (a gRPC probe takes a port number, not a port name).
    assert container["readinessProbe"]["grpc"] == {"port": ports["health"]}
    assert container["livenessProbe"]["grpc"] == {"port": ports["health"], "service": LIVENESS_HEALTH}


def test_the_pod_outlives_the_drain_delay_and_the_grace_period() -> None:
    config = _manifest_config()
    pod = _pod_spec()
    # A preStop hook would run before SIGTERM, inside the same termination period.
    pre_stop = _container().get("lifecycle", {}).get("preStop")
    pre_stop_seconds = pre_stop["sleep"]["seconds"] if pre_stop else 0
    needed = pre_stop_seconds + config.drain_delay + config.grace_period + TERMINATION_MARGIN
    assert pod["terminationGracePeriodSeconds"] >= needed


def test_the_systemd_unit_starts_the_server_and_outlives_its_drain() -> None:
    unit = (DEPLOY / "tenantgate.service").read_text()
    assert re.search(r"^ExecStart=\S+/tenantgate serve$", unit, re.M)
    assert "KillSignal=SIGTERM" in unit and "TENANTGATE_CONFIG=" in unit
    stop = re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M)
    assert stop, "the unit must bound the stop"
    defaults = ServeConfig()
    assert int(stop[1]) >= defaults.drain_delay + defaults.grace_period + TERMINATION_MARGIN


def test_the_dashboard_queries_only_metrics_the_server_exports() -> None:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exported = {metric.name for metric in REGISTRY.collect()}
    queried = {re.sub(r"_(total|bucket|sum|count)$", "", name) for panel in dashboard["panels"]
               for target in panel["targets"] for name in re.findall(r"tenantgate_[a-z_]+", target["expr"])}
    assert queried and queried <= exported, queried - exported


# The container image.

@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [argument for instruction, argument in self.instructions if instruction == keyword]


def _stages() -> list[Stage]:
    """The Dockerfile's build stages, ARG defaults substituted, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    arguments: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        keyword, _, argument = line.partition(" ")
        keyword, argument = keyword.upper(), re.sub(r"\$\{(\w+)\}", lambda m: arguments[m[1]], argument.strip())
        if keyword == "ARG" and not stages:
            name, _, default = argument.partition("=")
            arguments[name] = default
        elif keyword == "FROM":
            base, _, name = argument.partition(" AS ")
            stages.append(Stage(base.strip(), name.strip()))
        else:
            stages[-1].instructions.append((keyword, argument))
    return stages


def _wheel_build(stage: Stage) -> str:
    """Where the build stage writes the wheel it builds from the source tree (`pip wheel --no-deps .`)."""
    for command in stage.all("RUN"):
        words = shlex.split(command)
        if "wheel" in words and words[words.index("wheel") - 1] == "pip":
            assert "--no-deps" in words and words[-1] == ".", "the wheel of this repository only"
            return words[words.index("--wheel-dir") + 1].rstrip("/")
    raise AssertionError(f"stage {stage.name!r} builds no wheel")


def test_the_image_installs_the_wheel_built_from_this_repository_and_runs_tenantgate_unprivileged() -> None:
    *builders, image = _stages()
    (builder,) = [stage for stage in builders if stage.name]
    wheels = _wheel_build(builder)
    assert builder.all("COPY") == [". ."]  # the build context: the source tree, as .dockerignore leaves it

    # The image takes the built wheel from the build stage and nothing from the source tree.
    copies = image.all("COPY")
    assert copies and all(copy.startswith(f"--from={builder.name} ") for copy in copies), copies
    (copy,) = copies
    source, target = copy.split()[1:]
    assert source.rstrip("/") == wheels
    installs = [shlex.split(run) for run in image.all("RUN") if "pip install" in run]
    assert len(installs) == 1, "one pip install: the wheel"
    (install,) = installs
    packages = [word for word in install[install.index("install") + 1:install.index("&&")
                                         if "&&" in install else None] if not word.startswith("-")]
    assert packages == [f"{target.rstrip('/')}/tenantgate-*.whl"], packages

    base = re.fullmatch(r"python:3\.(\d+)-slim(-\w+)?", image.base)
    assert base, image.base
    required = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert int(base[1]) >= int(re.fullmatch(r">=3\.(\d+)", required)[1])  # type: ignore[index]

    (user,) = image.all("USER")
    uid = user.partition(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root user (Kubernetes' runAsNonRoot checks it)"
    assert any(f"--uid {uid}" in run for run in image.all("RUN")), "the user exists in the image"
    assert image.all("ENTRYPOINT") == ['["tenantgate"]'] and image.all("CMD") == ['["serve"]']

    pod = _pod_spec()
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == int(uid)
    (exposed,) = image.all("EXPOSE")
    assert {port["containerPort"] for port in _container()["ports"]} <= {int(port) for port in exposed.split()}


def test_the_manifest_runs_the_image_deploy_readme_builds_at_the_package_version() -> None:
    builds = re.findall(r"docker build -t (\S+) \.", (DEPLOY / "README.md").read_text())
    assert builds, "deploy/README.md says how to build the image"
    assert {_container()["image"]} == set(builds)
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert _container()["image"] == f"tenantgate:{version}"


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker reads it: `**` spans folders, `*` and `?` stay within one."""
    parts = re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/"))
    wild = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wild.get(part, re.escape(part)) for part in parts))


def _docker_context(destination: Path) -> None:
    """Copies what `docker build .` sends: the files .dockerignore leaves (the last matching pattern wins; a
    pattern that matches a folder matches what it holds)."""
    lines = [line for line in map(str.strip, (REPO / ".dockerignore").read_text().splitlines())
             if line and not line.startswith("#")]
    rules = [(line.startswith("!"), _dockerignore_regex(line.lstrip("!"))) for line in lines]
    exceptions = [line.lstrip("!") for line in lines if line.startswith("!")]

    def excluded(relative: str) -> bool:
        parts = relative.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        verdict = False
        for negated, regex in rules:
            if any(regex.fullmatch(prefix) for prefix in prefixes):
                verdict = not negated
        return verdict

    for folder, subfolders, files in os.walk(REPO):
        here = Path(folder).relative_to(REPO).as_posix().removeprefix(".")
        # A folder left out whole is not walked (.venv, build), unless an exception may reach inside it.
        subfolders[:] = [name for name in subfolders if not excluded(f"{here}/{name}".lstrip("/")) or any(
            "**" in exception or exception.startswith(f"{here}/{name}/".lstrip("/")) for exception in exceptions)]
        for name in files:
            relative = f"{here}/{name}".lstrip("/")
            if not excluded(relative):
                (destination / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / relative, destination / relative)


def _build_wheel(source: Path, out: Path) -> dict[str, str]:
    """The files of the wheel `pip wheel --no-deps` builds from ``source`` (offline: the installed
    setuptools), each with its digest."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(source)], check=True, timeout=300)
    (wheel,) = out.glob("tenantgate-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return {name: hashlib.sha256(archive.read(name)).hexdigest() for name in archive.namelist()
                if not name.endswith("RECORD")}


def test_the_docker_build_context_makes_the_same_wheel_as_the_repository(tmp_path: Path) -> None:
    """The wheel the image's build stage makes from the context Docker sends equals, file for file, the
    wheel built from the whole checkout (what `make test` installs and tests)."""
    context, checkout = tmp_path / "context", tmp_path / "checkout"
    _docker_context(context)
    assert not (context / ".venv").exists() and not (context / ".git").exists()
    assert not list(context.rglob("*.key")) and not (context / ".tenantgate").exists()
    shutil.copytree(REPO, checkout, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", ".tenantgate", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"))
    from_context = _build_wheel(context, tmp_path / "wheel-from-context")
    from_checkout = _build_wheel(checkout, tmp_path / "wheel-from-checkout")
    assert "tenantgate/cli/__init__.py" in from_context and "tenantgate/v1/decision_pb2.py" in from_context
    entry_points = next(name for name in from_context if name.endswith("entry_points.txt"))
    assert entry_points in from_checkout
    assert from_context == from_checkout


# The health listener's configuration.

def test_the_health_listener_is_off_by_default_and_plaintext_on_any_address() -> None:
    assert ServeConfig().health_listen == ""
    # Health only, so no TLS is needed, even on every interface and beside an mTLS decision port.
    config = load_serve_config(environ={"TENANTGATE_HEALTH_LISTEN": "0.0.0.0:50053"})
    assert config.health_listen == "0.0.0.0:50053"
    assert build_parser().parse_args(["serve", "--health-listen", "[::]:8081"]).health_listen == "[::]:8081"


@pytest.mark.parametrize(("health_listen", "problem"), [
    ("50053", "health listen address '50053' is not HOST:PORT"),
    ("0.0.0.0:50051", "uses the port of the listen address '127.0.0.1:50051'"),
    ("127.0.0.1:50052", "uses the port of the admin listen address '127.0.0.1:50052'"),
])
def test_a_health_listener_that_cannot_work_is_refused(health_listen: str, problem: str) -> None:
    # On the decision port with --workers (SO_REUSEPORT) it would silently split that port's connections.
    with pytest.raises(ConfigurationError, match=re.escape(problem)):
        ServeConfig(health_listen=health_listen)


# The Redis persistence warning's decision (the check itself runs against a real Redis in
# tests/integration/test_deployment.py).

@pytest.mark.parametrize(("settings", "info", "warned"), [
    ({b"appendonly": b"no", b"save": b""}, None, True),
    ({b"appendonly": b"yes", b"save": b""}, None, False),
    ({b"appendonly": b"no", b"save": b"3600 1 300 100"}, None, False),
    ({"appendonly": "no", "save": " "}, None, True),
    # CONFIG refused (managed Redis): INFO persistence shows AOF, and whether a snapshot was made.
    (None, {"aof_enabled": 0, "rdb_saves": 0, "rdb_last_bgsave_time_sec": -1}, True),
    (None, {"aof_enabled": 1, "rdb_saves": 0, "rdb_last_bgsave_time_sec": -1}, False),
    (None, {"aof_enabled": 0, "rdb_saves": 3, "rdb_last_bgsave_time_sec": 0}, False),
    (None, {"aof_enabled": 0, "rdb_last_bgsave_time_sec": 1}, False),  # before Redis 7: no rdb_saves
    (None, None, False),  # nothing known: no claim
])
def test_a_redis_that_keeps_nothing_on_disk_is_named(settings: dict[Any, Any] | None, info: dict[str, Any] | None,
                                                     warned: bool) -> None:
    problem = persistence_problem(settings, info)
    assert (problem is not None) == warned
    if problem:
        assert "forgets every counter" in problem and "Deploying" in problem
