"""Serving configuration: parsed once at start into frozen data, validated with one message per problem."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass

from tenantgate.errors import ConfigurationError
from tenantgate.keywrap import MasterKey

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_ADMIN_LISTEN = "127.0.0.1:50052"
DEFAULT_SNAPSHOT_FILE = ".tenantgate/last-known-good.json"
DEFAULT_REGISTRY = "sqlite://.tenantgate/registry.db"


@dataclass(frozen=True)
class ServeConfig:
    registry_url: str = DEFAULT_REGISTRY
    listen: str = DEFAULT_LISTEN
    # The Admin API's own listener; empty: not served by this process.
    admin_listen: str = DEFAULT_ADMIN_LISTEN
    # Prometheus metrics over HTTP; empty: not served.
    metrics_listen: str = ""
    # The last-known-good copy of the registry for a cold start while it is down; empty: none.
    snapshot_file: str = DEFAULT_SNAPSHOT_FILE
    # Fail closed (UNAVAILABLE) once the registry has not been read for this many seconds; 0: never.
    max_staleness: float = 0.0
    quota_backend: str = "memory://"
    # Prefix of every Redis key this server writes (several deployments can share one Redis).
    quota_prefix: str = "tg:"
    # What ConsumeQuota answers for quotas without their own on_backend_error when the backend fails.
    quota_on_backend_error: str = "deny"
    # Worker processes sharing the listen ports (SO_REUSEPORT); more than one needs a shared quota backend.
    workers: int = 1
    master_key_file: str = ""
    # How often the syncer asks the registry for its revision, in seconds.
    sync_interval: float = 0.2
    # In-flight calls beyond this are refused with RESOURCE_EXHAUSTED instead of queueing.
    max_concurrent_rpcs: int = 1000
    max_message_bytes: int = 4 * 1024 * 1024
    token_cache_size: int = 100_000
    # Seconds in-flight calls get to finish on shutdown.
    grace_period: float = 5.0
    # TLS: the server's certificate chain and key (PEM files); with client_ca, callers must present a
    # certificate signed by it (mutual TLS), and that certificate names them.
    tls_cert: str = ""
    tls_key: str = ""
    client_ca: str = ""
    # Take the caller's identity from x-tenantgate-caller metadata: only behind a proxy or mesh that sets
    # it and strips it from outside callers.
    trust_caller_metadata: bool = False
    # Listen on non-loopback addresses without TLS (refused unless asked for explicitly).
    insecure_listen: bool = False
    # Identities allowed to use the Admin API.
    admins: tuple[str, ...] = ()
    # How often to rotate the keys that keys.rotate_every says are due (needs the master key); 0: never.
    key_rotation_interval: float = 60.0

    def __post_init__(self) -> None:
        problems = [f"{name} address {address!r} is not HOST:PORT"
                    for name, address in (("listen", self.listen), ("admin listen", self.admin_listen),
                                          ("metrics listen", self.metrics_listen))
                    if (address or name == "listen") and not _host_port(address)]
        if bool(self.tls_cert) != bool(self.tls_key):
            problems.append("TLS needs both a certificate (--tls-cert) and its key (--tls-key)")
        if self.client_ca and not self.tls_cert:
            problems.append("client certificates (--client-ca) need TLS (--tls-cert and --tls-key)")
        if not self.tls_cert and not self.insecure_listen:
            problems.extend(f"{name} address {address!r} is not loopback: without TLS the server listens on "
                            "loopback only (give --tls-cert/--tls-key, or --insecure-listen if a proxy in front "
                            "of it terminates TLS)"
                            for name, address in (("listen", self.listen), ("admin listen", self.admin_listen))
                            if address and _host_port(address) and not _loopback(address))
        if self.quota_on_backend_error not in ("deny", "allow"):
            problems.append(f"quota on-backend-error policy must be deny or allow, got {self.quota_on_backend_error!r}")
        if self.workers < 1:
            problems.append(f"workers must be at least 1, got {self.workers}")
        elif self.workers > 1 and self.quota_backend.startswith("memory:"):
            problems.append(f"{self.workers} workers with the memory quota backend would each count on their own and "
                            f"admit up to {self.workers} times every limit; share the counters with "
                            "--quota-backend redis://HOST:6379/0, or run one worker")
        if self.max_staleness < 0:
            problems.append(f"max staleness must not be negative, got {self.max_staleness}")
        if self.sync_interval <= 0:
            problems.append(f"sync interval must be positive, got {self.sync_interval}")
        if self.max_concurrent_rpcs <= 0:
            problems.append(f"max concurrent RPCs must be positive, got {self.max_concurrent_rpcs}")
        if problems:
            raise ConfigurationError("; ".join(problems))


def _host_port(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 <= int(port) <= 65535)


def _loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
