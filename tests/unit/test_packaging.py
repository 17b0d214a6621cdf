"""The package installs whole: every source package is declared, generated code included."""

from __future__ import annotations

import tomllib

from tests.conftest import REPO


def test_every_package_is_declared_in_pyproject() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(config["packages"])
    on_disk = {".".join(init.parent.relative_to(REPO / "src").parts) for init in (REPO / "src").rglob("__init__.py")}
    assert on_disk | {"tenantgate.v1"} == declared
    assert config["package-dir"]["tenantgate.v1"] == "generated/tenantgate/v1"
    assert (REPO / "generated/tenantgate/v1/__init__.py").exists()
