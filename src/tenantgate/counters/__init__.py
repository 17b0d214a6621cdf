"""Quota counter backends, chosen by URL scheme."""

from __future__ import annotations

from collections.abc import Callable

from tenantgate.engines.quota import CounterStore
from tenantgate.errors import ConfigurationError


def open_counter_store(url: str, *, prefix: str = "tg:", on_availability: Callable[[bool], None] | None = None,
                       idempotency_cache_size: int = 100_000) -> CounterStore:
    """The one place a quota backend URL becomes a counter store. ``idempotency_cache_size`` bounds the
    idempotency answers kept in memory (Redis keeps each for its TTL instead)."""
    scheme, _, _ = url.partition("://")
    if scheme == "memory":
        from tenantgate.counters.memory import MemoryCounterStore

        return MemoryCounterStore(max_idempotency_keys=idempotency_cache_size)
    if scheme in ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"):
        from tenantgate.counters.redis import RedisCounterStore

        return RedisCounterStore(url, prefix=prefix, on_availability=on_availability)
    raise ConfigurationError(f"unsupported quota backend {url!r}; supported: memory://, redis://host:6379/0, "
                             "redis+cluster://host:port[,host:port...]")
