"""The data flows one way (manifests -> store -> change feed -> syncer -> snapshot -> engines -> servicers), and
the package's imports say so: no module imports another that imports it back, and no layer imports one above it.
Read from the source, so that a new import that breaks the flow fails here, not in review."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "src"

# What each layer must never import (every import, a deferred one inside a function included).
FORBIDDEN = {
    "tenantgate.model": ("tenantgate.",),
    "tenantgate.registry": ("tenantgate.sync", "tenantgate.snapshot", "tenantgate.engines", "tenantgate.server",
                            "tenantgate.adminapi", "tenantgate.cli", "tenantgate.counters", "tenantgate.channels",
                            "tenantgate.v1", "grpc", "google.protobuf"),
    "tenantgate.sync": ("tenantgate.engines", "tenantgate.server", "tenantgate.adminapi", "tenantgate.cli",
                        "tenantgate.counters", "grpc"),
    "tenantgate.snapshot": ("tenantgate.registry", "tenantgate.sync", "tenantgate.engines", "tenantgate.server",
                            "grpc"),
    "tenantgate.membership": ("tenantgate.registry", "tenantgate.sync", "tenantgate.snapshot", "tenantgate.engines",
                              "tenantgate.server", "grpc"),
    "tenantgate.engines": ("tenantgate.registry", "tenantgate.sync", "tenantgate.server", "tenantgate.adminapi",
                           "tenantgate.cli", "grpc"),
    # Counter stores implement the quota engine's CounterStore: they import its interface, nothing above it.
    "tenantgate.counters": ("tenantgate.registry", "tenantgate.sync", "tenantgate.snapshot", "tenantgate.server",
                            "grpc"),
    "tenantgate.adminapi": ("tenantgate.server", "tenantgate.cli", "tenantgate.sync", "tenantgate.engines"),
    "tenantgate.server": ("tenantgate.cli",),
    # The exporter reads the registry's ledger (from the store or the Admin API) and the counters; it serves
    # nothing and decides nothing.
    "tenantgate.events": ("tenantgate.server", "tenantgate.sync", "tenantgate.snapshot", "tenantgate.cli",
                          "tenantgate.client"),
    # How a tenant's plan and its own fields merge: plain functions over the model.
    "tenantgate.plans": ("tenantgate.registry", "tenantgate.sync", "tenantgate.snapshot", "tenantgate.engines",
                         "tenantgate.server", "grpc"),
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in (SOURCE / "tenantgate").rglob("*.py"):
        if "v1" in path.relative_to(SOURCE / "tenantgate").parts:
            continue
        name = ".".join(path.relative_to(SOURCE).with_suffix("").parts).removesuffix(".__init__")
        found[name] = path
    return found


def _imports(path: Path, *, module_level: bool) -> set[str]:
    """Modules ``path`` imports; only those its import runs when ``module_level`` (not inside functions), never
    those under ``if TYPE_CHECKING:`` (names for annotations only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif not module_level or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    children = getattr(node, field, None)
                    if isinstance(children, list):
                        visit([child for child in children if isinstance(child, ast.stmt)]
                              + [stmt for handler in children if isinstance(handler, ast.ExceptHandler)
                                 for stmt in handler.body])
    visit(tree.body)
    return found


def test_no_module_imports_one_that_imports_it_back() -> None:
    modules = _modules()
    graph = {name: {dep for dep in _imports(path, module_level=True) if dep in modules and dep != name}
             for name, path in modules.items()}
    visiting: list[str] = []
    done: set[str] = set()

    def walk(name: str) -> None:
        if name in done:
            return
        assert name not in visiting, "import cycle: " + " -> ".join([*visiting[visiting.index(name):], name])
        visiting.append(name)
        for dep in sorted(graph[name]):
            walk(dep)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        walk(name)


def test_no_layer_imports_one_above_it() -> None:
    breaches = []
    for name, path in sorted(_modules().items()):
        for layer, forbidden in FORBIDDEN.items():
            if name != layer and not name.startswith(layer + "."):
                continue
            for imported in sorted(_imports(path, module_level=False)):
                if any(imported == f or imported.startswith(f if f.endswith(".") else f + ".") for f in forbidden) \
                        and not imported.startswith(layer):
                    breaches.append(f"{name} imports {imported}")
    assert breaches == []


def test_opening_a_sqlite_registry_loads_no_grpc(tmp_path: Path) -> None:
    script = ("import sys\nfrom tenantgate.registry.backends import open_store\n"
              f"open_store('sqlite:///{tmp_path}/registry.db').close()\n"
              "loaded = sorted(m for m in sys.modules if m == 'grpc' or m.startswith(('grpc.', 'tenantgate.v1')))\n"
              "print(loaded)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
