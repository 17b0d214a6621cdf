"""Quota counter backends, chosen by URL scheme."""

from __future__ import annotations

from tenantgate.engines.quota import CounterStore
from tenantgate.errors import ConfigurationError


def open_counter_store(url: str) -> CounterStore:
    """The one place a quota backend URL becomes a counter store."""
    scheme, _, _ = url.partition("://")
    if scheme == "memory":
        from tenantgate.counters.memory import MemoryCounterStore

        return MemoryCounterStore()
    raise ConfigurationError(f"unsupported quota backend {url!r}; supported: memory://")
