"""The one place a registry URL becomes a store: a table of backends by URL scheme."""

from __future__ import annotations

from tenantgate.clock import Clock
from tenantgate.errors import ConfigurationError
from tenantgate.registry.records import RegistryStore


def open_store(url: str, *, create: bool = True, clock: Clock | None = None) -> RegistryStore:
    """The store at ``url``. ``create``: make the registry where there is none (what admin commands do). A
    server passes False: it never creates a registry, and takes a missing one (no SQLite file, an empty
    database) for one not reachable yet, until an admin creates it. ``clock``: what the store stamps writes
    with and measures retention and rotation by (the system clock unless a test gives its own)."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ConfigurationError(f"registry URL {url!r} has no scheme; expected sqlite:///path/registry.db or "
                                 "postgresql://user@host/db")
    if scheme == "sqlite":
        from tenantgate.registry.sqlite import open_sqlite

        return open_sqlite(url, create=create, clock=clock)
    if scheme in ("postgresql", "postgres"):
        from tenantgate.registry.postgres import open_postgres

        return open_postgres(url, create=create, clock=clock)
    if scheme == "grpc":
        raise ConfigurationError(f"{url!r} is an Admin API address; a server follows a registry store "
                                 "(sqlite:// or postgresql://)")
    raise ConfigurationError(f"unsupported registry URL scheme {scheme!r} in {url!r}; "
                             "supported: sqlite://, postgresql://, grpc:// (CLI only)")
