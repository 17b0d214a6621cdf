"""Serving configuration: parsed once at start into frozen data, validated with one message per problem."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from tenantgate.errors import ConfigurationError
from tenantgate.keywrap import MasterKey

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_REGISTRY = "sqlite://.tenantgate/registry.db"


@dataclass(frozen=True)
class ServeConfig:
    registry_url: str = DEFAULT_REGISTRY
    listen: str = DEFAULT_LISTEN
    quota_backend: str = "memory://"
    master_key_file: str = ""
    # How often the syncer asks the registry for its revision, in seconds.
    sync_interval: float = 0.2
    # In-flight calls beyond this are refused with RESOURCE_EXHAUSTED instead of queueing.
    max_concurrent_rpcs: int = 1000
    max_message_bytes: int = 4 * 1024 * 1024
    token_cache_size: int = 100_000
    # Seconds in-flight calls get to finish on shutdown.
    grace_period: float = 5.0

    def __post_init__(self) -> None:
        problems = []
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            problems.append(f"listen address {self.listen!r} is not HOST:PORT")
        if self.sync_interval <= 0:
            problems.append(f"sync interval must be positive, got {self.sync_interval}")
        if self.max_concurrent_rpcs <= 0:
            problems.append(f"max concurrent RPCs must be positive, got {self.max_concurrent_rpcs}")
        if problems:
            raise ConfigurationError("; ".join(problems))


def master_key_from(path: str = "", environ: Mapping[str, str] | None = None) -> MasterKey | None:
    """The master key from ``path``, else ``TENANTGATE_MASTER_KEY_FILE``, else ``TENANTGATE_MASTER_KEY``
    (the base64 value itself); None when none is set."""
    env = os.environ if environ is None else environ
    path = path or env.get("TENANTGATE_MASTER_KEY_FILE", "")
    if path:
        return MasterKey.from_file(path)
    inline = env.get("TENANTGATE_MASTER_KEY", "")
    if inline:
        return MasterKey.from_base64(inline, source="TENANTGATE_MASTER_KEY")
    return None
