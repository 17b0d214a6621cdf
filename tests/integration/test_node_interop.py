"""The contract is language-neutral: a Node.js client built from protos/ at run time (@grpc/grpc-js and
@grpc/proto-loader from npm, examples/node/) calls every DecisionService RPC of the installed `tenantgate serve`
on the example registry and gets the answers it expects."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tenantgate.v1 import decision_pb2
from tests.conftest import EXAMPLES, REPO, REQUIRE_SERVICES, TENANTGATE
from tests.integration.test_workers import free_port, wait_serving

NODE_EXAMPLE = REPO / "examples" / "node"
DECISION_RPCS = [method.name for method in decision_pb2.DESCRIPTOR.services_by_name["DecisionService"].methods]
NPM_CI_TIMEOUT = 100
INTEROP_TIMEOUT = 45


def _cannot_run(reason: str) -> NoReturn:
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason}; TENANTGATE_REQUIRE_SERVICES=1 forbids skipping")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def node_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/node with its locked dependencies installed by `npm ci`, in a copy that keeps the repository's
    layout (client.js finds ../../protos, interop.js ../demo-idp), so no test writes node_modules into the tree."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _cannot_run("the Node.js interop test needs node and npm (Node.js 20 or later) on PATH")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 20:
        _cannot_run(f"the Node.js interop test needs Node.js 20 or later, found {version}")
    root = tmp_path_factory.mktemp("node-interop")
    shutil.copytree(REPO / "protos", root / "protos")
    shutil.copytree(REPO / "examples" / "demo-idp", root / "examples" / "demo-idp")
    shutil.copytree(NODE_EXAMPLE, root / "examples" / "node", ignore=shutil.ignore_patterns("node_modules"))
    example = root / "examples" / "node"
    try:
        installed = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=example, capture_output=True,
                                   text=True, timeout=NPM_CI_TIMEOUT)
    except subprocess.TimeoutExpired:
        _cannot_run(f"npm ci in examples/node took over {NPM_CI_TIMEOUT} s (is the npm registry reachable?)")
    if installed.returncode != 0:
        _cannot_run(f"npm ci in examples/node failed (is the npm registry reachable?):\n{installed.stderr[-2000:]}")
    return example


@pytest.fixture
def serving_examples(tmp_path: Path, registry_path: Path, master_key_file: Path) -> Iterator[str]:
    """`tenantgate serve` on loopback with examples/manifests applied, naming callers by x-tenantgate-caller
    as `make run` does; its address."""
    registry = ["--registry", f"sqlite://{registry_path}", "--master-key-file", str(master_key_file)]
    applied = subprocess.run([TENANTGATE, "apply", "-f", str(EXAMPLES), *registry], capture_output=True, text=True,
                             timeout=60)
    assert applied.returncode == 0, applied.stderr
    target = f"127.0.0.1:{free_port()}"
    environment = {name: value for name, value in os.environ.items() if not name.startswith("TENANTGATE_")}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [TENANTGATE, "serve", *registry, "--listen", target, "--admin-listen", "", "--snapshot-file", "",
             "--trust-caller-metadata", "--drain-delay", "0"],
            stdout=out, stderr=subprocess.STDOUT, env=environment, start_new_session=True)
    try:
        wait_serving(target)
        yield target
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def test_node_calls_every_decision_rpc_and_gets_the_expected_answers(node_example: Path,
                                                                      serving_examples: str) -> None:
    result = subprocess.run(["node", "interop.js", serving_examples], cwd=node_example, capture_output=True,
                            text=True, timeout=INTEROP_TIMEOUT)
    output = result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert result.returncode == 0, output
    assert not [line for line in lines if line.startswith("FAIL")], output
    passed = [line for line in lines if line.startswith("ok ")]
    answered = {line.split()[1].rstrip(":") for line in passed}
    assert set(DECISION_RPCS) <= answered, f"RPCs without a passing check: {set(DECISION_RPCS) - answered}\n{output}"
    # The error case (status code checked) and the deadline.
    assert any("INVALID_ARGUMENT" in line for line in passed), output
    assert any(re.search(r"FAILED_PRECONDITION inside a \d+ ms deadline", line) for line in passed), output
    assert lines[-1] == f"{len(passed)} of {len(passed)} checks passed", output
