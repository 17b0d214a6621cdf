"""How large a parsed YAML value is, found without expanding it.

YAML aliases let a few kilobytes of manifest name one value millions of times over ("billion laughs"); a
walk, a ``repr`` or a JSON dump of such a value takes minutes and gigabytes. ``fits`` stops as soon as its
budget is spent, so it costs at most the budget whatever the value would expand to.
"""

from __future__ import annotations

from typing import Any


def fits(value: Any, budget: int) -> bool:
    """Whether ``value`` written as JSON would take about ``budget`` bytes or fewer."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            budget -= len(item) + 2
        elif isinstance(item, dict):
            budget -= 2 + 2 * len(item)
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            budget -= 2 + len(item)
            stack.extend(item)
        else:
            budget -= 8
        if budget < 0:
            return False
    return True
