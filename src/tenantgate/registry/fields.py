"""Reading a manifest's fields: each reader checks one value's shape, and collects every problem with its
field path rather than stopping at the first (a manifest's problems are reported together)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from tenantgate.errors import InvalidArgument


class ManifestError(InvalidArgument):
    """One or more manifest problems; ``problems`` lists each as "where: path: what"."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid manifest:\n  " + "\n  ".join(problems))
        self.problems = problems


class Problems:
    def __init__(self, where: str) -> None:
        self.where = where
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{self.where}: {path}: {message}" if path else f"{self.where}: {message}")


def known_fields(value: Any, path: str, allowed: set[str], problems: Problems) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        problems.add(path, f"expected a mapping, got {kind(value)}")
        return None
    for key in value:
        if key not in allowed:
            problems.add(join(path, str(key)), f"unknown field (expected one of {', '.join(sorted(allowed))})")
    return value


def sequence(value: Any, path: str, problems: Problems) -> list[Any]:
    """A list field that may be absent; anything else is a problem and reads as empty."""
    if value is None:
        return []
    if not isinstance(value, list):
        problems.add(path, f"expected a list, got {kind(value)}")
        return []
    return value


def table(value: Any, path: str, problems: Problems) -> dict[Any, Any]:
    """A mapping field that may be absent; anything else is a problem and reads as empty."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.add(path, f"expected a mapping, got {kind(value)}")
        return {}
    return value


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def string(value: Any, path: str, problems: Problems, pattern: re.Pattern[str] | None = None,
            what: str = "") -> str:
    if not isinstance(value, str):
        problems.add(path, f"expected a string, got {kind(value)}")
        return ""
    if pattern is not None and not pattern.match(value):
        problems.add(path, f"{value!r} is not a valid {what}")
    return value


def strings(value: Any, path: str, problems: Problems, pattern: re.Pattern[str] | None = None,
             what: str = "") -> tuple[str, ...]:
    return tuple(string(item, f"{path}[{i}]", problems, pattern, what)
                 for i, item in enumerate(sequence(value, path, problems)))


def choice(value: Any, path: str, problems: Problems, choices: Iterable[str]) -> str:
    options = tuple(choices)
    text = string(value, path, problems)
    if text and text not in options:
        problems.add(path, f"{text!r} is not one of {', '.join(options)}")
    return text
