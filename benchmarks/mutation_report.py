"""Summarises the last `mutmut run` (make mutate): kill rate per module and overall, and each surviving mutant's
place in the source and its change. Prints the summary and writes benchmarks/results/mutation.json.

A mutant is killed when a test fails with it in place; a timeout counts as killed (the mutant made the code hang,
which a test noticed). "No tests" means no selected test runs the mutated function: it counts as surviving."""

from __future__ import annotations

import ast
import json
import sys
from collections import Counter
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from mutmut.configuration import config
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code
from mutmut.utils.format_utils import orig_function_and_class_names_from_key

RESULTS = Path(__file__).resolve().parent / "results" / "mutation.json"
CAUGHT = ("killed", "timeout", "caught by type check")
UNTESTED = ("not checked", "skipped", "check was interrupted by user")


def _function_lines(source: str) -> dict[str, tuple[int, int]]:
    """(first, last) line of each top-level function and method, as ``name`` or ``Class.name``."""
    lines: dict[str, tuple[int, int]] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines[node.name] = (node.lineno, node.end_lineno or node.lineno)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines[f"{node.name}.{item.name}"] = (item.lineno, item.end_lineno or item.lineno)
    return lines


def _survivor(path: Path, mutant: str, source_lines: list[str],
              functions: dict[str, tuple[int, int]]) -> dict[str, str]:
    function, cls = orig_function_and_class_names_from_key(mutant)
    qualified = f"{cls}.{function}" if cls else function
    first, last = functions.get(qualified, (1, len(source_lines)))
    diff = get_diff_for_mutant(mutant, path=path).splitlines()
    removed = [line[1:] for line in diff if line.startswith("-") and not line.startswith("---")]
    added = [line[1:] for line in diff if line.startswith("+") and not line.startswith("+++")]
    line = first
    if removed:
        wanted = removed[0].strip()
        line = next((number for number in range(first, last + 1) if source_lines[number - 1].strip() == wanted),
                    first)
    return {"mutant": mutant, "location": f"{path}:{line}", "function": qualified,
            "from": " / ".join(text.strip() for text in removed), "to": " / ".join(text.strip() for text in added)}


def _rate(counts: Counter[str]) -> float | None:
    tested = sum(count for status, count in counts.items() if status not in UNTESTED)
    return round(100 * sum(counts[status] for status in CAUGHT) / tested, 1) if tested else None


def main() -> int:
    modules: dict[str, dict[str, object]] = {}
    survivors: list[dict[str, str]] = []
    totals: Counter[str] = Counter()
    for path in sorted(Path(p) for p in _mutated_files()):
        meta = Path("mutants") / f"{path}.meta"
        if not meta.exists():
            continue
        exit_codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
        statuses = {mutant: status_by_exit_code[code] for mutant, code in exit_codes.items()}
        if not statuses:
            continue
        counts = Counter(statuses.values())
        totals.update(counts)
        modules[str(path)] = {"mutants": len(statuses), **dict(sorted(counts.items())), "kill_rate": _rate(counts)}
        source = path.read_text()
        functions = _function_lines(source)
        for mutant, status in sorted(statuses.items(), key=lambda item: _mutant_order(item[0])):
            if status in ("survived", "no tests", "suspicious"):
                survivors.append({**_survivor(path, mutant, source.splitlines(), functions), "status": status})
    if not modules:
        print("no mutation results under mutants/: run `make mutate` first", file=sys.stderr)
        return 1
    report = {
        "tool": f"mutmut {version('mutmut')}",
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "tests": config().pytest_add_cli_args_test_selection,
        "kill_rate_percent": _rate(totals),
        "totals": {"mutants": sum(totals.values()), **dict(sorted(totals.items()))},
        "modules": modules,
        "survivors": survivors,
    }
    RESULTS.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    for module, figures in modules.items():
        outcomes = ", ".join(f"{status} {figures[status]}" for status in sorted(figures)
                             if status not in ("mutants", "kill_rate"))
        rate = "not run" if figures["kill_rate"] is None else f"{figures['kill_rate']}% killed"
        print(f"{module}: {figures['mutants']} mutants, {rate} ({outcomes})")
    print(f"kill rate: {report['kill_rate_percent']}% ({dict(sorted(totals.items()))}); "
          f"{len(survivors)} survivors listed in {RESULTS.relative_to(Path.cwd())}")
    return 0


def _mutated_files() -> list[str]:
    cfg = config()
    return [str(path) for root in cfg.source_paths for path in Path(root).rglob("*.py") if cfg.should_mutate(path)]


def _mutant_order(mutant: str) -> tuple[str, int]:
    name, _, number = mutant.rpartition("__mutmut_")
    return name, int(number) if number.isdigit() else 0


if __name__ == "__main__":
    sys.exit(main())
