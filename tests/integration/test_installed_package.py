"""The package as users install it: every file it reads at run time is in the installed distribution."""

from __future__ import annotations

import subprocess
from importlib import metadata, resources
from pathlib import Path

import pytest

from tests.conftest import REPO, TENANTGATE, TESTING_INSTALLED

pytestmark = pytest.mark.skipif(not TESTING_INSTALLED, reason="checks an installed wheel: run by `make test`, "
                                                              "which sets TENANTGATE_TEST_INSTALLED=1")


def _source_data_files() -> set[str]:
    """Files under src/tenantgate that are not Python source: what package data must carry."""
    tracked = subprocess.run(["git", "ls-files", "src/tenantgate"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    return {str(Path(path).relative_to("src")) for path in tracked
            if not path.endswith((".py", ".pyi")) and not Path(path).name.startswith(".")}


def test_the_wheel_carries_every_file_the_package_reads() -> None:
    installed = {str(file) for file in metadata.files("tenantgate") or ()}
    missing = sorted(_source_data_files() - installed)
    assert not missing, f"the wheel lacks {missing}: declare them in [tool.setuptools.package-data]"
    generated = {str(path.relative_to(REPO / "generated")) for path in (REPO / "generated").rglob("*")
                 if path.is_file() and path.suffix in (".py", ".pyi") and "__pycache__" not in path.parts}
    assert not sorted(generated - installed), "generated code missing from the wheel"


def test_the_installed_package_is_not_the_source_tree() -> None:
    import tenantgate

    assert not Path(tenantgate.__file__).resolve().is_relative_to(REPO / "src")
    assert Path(TENANTGATE).exists(), "the tenantgate console script is not installed beside the interpreter"


def test_the_redis_scripts_load_from_the_installed_package() -> None:
    folder = resources.files("tenantgate.counters") / "lua"
    assert (folder / "consume.lua").read_text().strip()
    assert (folder / "window.lua").read_text().strip()
