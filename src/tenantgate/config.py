"""Serving configuration: parsed once at start into frozen data, validated with one message per problem."""

from __future__ import annotations

import dataclasses
import importlib.util
import ipaddress
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tenantgate.errors import ConfigurationError
from tenantgate.keywrap import MasterKey

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_ADMIN_LISTEN = "127.0.0.1:50052"
DEFAULT_SNAPSHOT_FILE = ".tenantgate/last-known-good.json"
DEFAULT_REGISTRY = "sqlite://.tenantgate/registry.db"


@dataclass(frozen=True)
class ServeConfig:
    # The registry URL: sqlite://, postgresql:// (flag --registry, variable TENANTGATE_REGISTRY).
    registry: str = DEFAULT_REGISTRY
    listen: str = DEFAULT_LISTEN
    # The Admin API's own listener; empty: not served by this process.
    admin_listen: str = DEFAULT_ADMIN_LISTEN
    # Prometheus metrics over HTTP; empty: not served.
    metrics_listen: str = ""
    # A plaintext listener serving grpc.health.v1 only, for probes that cannot present a client certificate
    # (Kubernetes gRPC probes); allowed on any address without TLS, as it answers nothing but health.
    # Empty: not served.
    health_listen: str = ""
    # The last-known-good copy of the registry for a cold start while it is down; empty: none.
    snapshot_file: str = DEFAULT_SNAPSHOT_FILE
    # Let the registry replace a snapshot file that holds another registry or a later revision (after moving
    # to a new registry, or restoring one from a backup); otherwise such a file is kept and the server says so.
    replace_snapshot_file: bool = False
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
    # Idempotency answers the memory quota backend keeps, the least recently used forgotten first (Redis
    # keeps each for its TTL): what bounds the memory a flood of distinct idempotency keys can take.
    idempotency_cache_size: int = 100_000
    # On SIGTERM: seconds the server keeps answering while it reports NOT_SERVING, so that load balancers
    # (Kubernetes endpoints, client-side balancers) stop sending it calls before it refuses any.
    drain_delay: float = 5.0
    # Seconds in-flight calls get to finish on shutdown, once new calls are refused.
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
    log_level: str = "INFO"
    log_format: str = "json"  # json | text
    # The decision log: a file (rotated), "-" for stdout, or "" for none; every deny and this share of allows.
    decision_log: str = ""
    decision_log_sample: float = 0.0
    # OpenTelemetry: a server span per call, continuing the caller's trace, with the tenant and the decision as
    # attributes, sent to the tracer provider the process runs with (opentelemetry-instrument). Needs the otel
    # extra; off, the server imports none of it.
    otel: bool = False

    def __post_init__(self) -> None:
        problems = [f"{name} address {address!r} is not HOST:PORT"
                    for name, address in (("listen", self.listen), ("admin listen", self.admin_listen),
                                          ("metrics listen", self.metrics_listen),
                                          ("health listen", self.health_listen))
                    if (address or name == "listen") and not _host_port(address)]
        problems.extend(_shared_port_problems(self))
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
        if self.drain_delay < 0:
            problems.append(f"drain delay must not be negative, got {self.drain_delay}")
        if self.grace_period < 0:
            problems.append(f"grace period must not be negative, got {self.grace_period}")
        if self.sync_interval <= 0:
            problems.append(f"sync interval must be positive, got {self.sync_interval}")
        if self.idempotency_cache_size <= 0:
            problems.append(f"idempotency cache size must be positive, got {self.idempotency_cache_size}")
        if self.max_concurrent_rpcs <= 0:
            problems.append(f"max concurrent RPCs must be positive, got {self.max_concurrent_rpcs}")
        if self.log_format not in ("json", "text"):
            problems.append(f"log format must be json or text, got {self.log_format!r}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            problems.append(f"log level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL; got {self.log_level!r}")
        if not 0.0 <= self.decision_log_sample <= 1.0:
            problems.append(f"decision log sample must be between 0 and 1, got {self.decision_log_sample}")
        if self.otel and not _installed("opentelemetry.instrumentation.grpc"):
            problems.append("otel needs OpenTelemetry's gRPC instrumentation: pip install 'tenantgate[otel]'")
        if problems:
            raise ConfigurationError("invalid configuration:\n  " + "\n  ".join(problems))


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (its parent packages are)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def _shared_port_problems(config: ServeConfig) -> list[str]:
    """The health listener on the port of a gRPC listener would, with --workers (SO_REUSEPORT), share it and
    split its connections between two servers instead of failing to bind."""
    if not config.health_listen or not _host_port(config.health_listen):
        return []
    port = int(config.health_listen.rpartition(":")[2])
    return [f"health listen address {config.health_listen!r} uses the port of the {name} address {address!r}; "
            "give it a port of its own"
            for name, address in (("listen", config.listen), ("admin listen", config.admin_listen))
            if port != 0 and address and _host_port(address) and int(address.rpartition(":")[2]) == port]


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


# Settings a configuration file may still name by an older name: refused with the name to use, so that a
# file never sets one setting under two names.
RENAMED = {"registry_url": "registry"}
_SECRET_QUERY = re.compile(r"(password=)[^&\s]+", re.IGNORECASE)


def env_name(field: str) -> str:
    return f"TENANTGATE_{field.upper()}"


def _convert(field: str, kind: Any, value: Any, source: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{source}: {field} must be true or false, got {value!r}")
    if kind in (int, float):
        if isinstance(value, bool):
            raise ValueError(f"{source}: {field} must be a number, got {value!r}")
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"{source}: {field} must be a{'n integer' if kind is int else ' number'}, "
                             f"got {value!r}") from None
    if kind == tuple[str, ...]:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return tuple(value)
        raise ValueError(f"{source}: {field} must be a list of strings, got {value!r}")
    if not isinstance(value, str):
        raise ValueError(f"{source}: {field} must be a string, got {value!r}")
    return value


def load_serve_config(file: str = "", environ: Mapping[str, str] | None = None,
                      flags: Mapping[str, Any] | None = None) -> ServeConfig:
    """The serving configuration from a YAML file, then TENANTGATE_* variables, then flags (each overriding
    the one before), validated at once: every problem is reported, one per line."""
    env = os.environ if environ is None else environ
    kinds = typing.get_type_hints(ServeConfig)
    names = {f.name for f in dataclasses.fields(ServeConfig)}
    values: dict[str, Any] = {}
    problems: list[str] = []
    if file:
        try:
            loaded = yaml.safe_load(Path(file).read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ConfigurationError(f"cannot read the configuration file {file}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigurationError(f"{file}: expected a mapping of settings")
        for key, value in loaded.items():
            field = str(key).replace("-", "_")
            if field in RENAMED:
                problems.append(f"{file}: setting {key!r} is now called {RENAMED[field]!r}; rename it")
                continue
            if field not in names:
                problems.append(f"{file}: unknown setting {key!r}")
                continue
            try:
                values[field] = _convert(field, kinds[field], value, file)
            except ValueError as exc:
                problems.append(str(exc))
    for field in names:
        name = env_name(field)
        if name in env:
            try:
                values[field] = _convert(field, kinds[field], env[name], name)
            except ValueError as exc:
                problems.append(str(exc))
    values.update({key: value for key, value in (flags or {}).items() if value is not None})
    try:
        config = ServeConfig(**values)
    except ConfigurationError as exc:
        problems.extend(line.strip() for line in exc.message.splitlines()[1:])
        config = None
    if problems or config is None:
        raise ConfigurationError("invalid configuration:\n  " + "\n  ".join(problems))
    return config


def describe(config: ServeConfig) -> dict[str, Any]:
    """The effective configuration for display, secrets masked (passwords in URLs)."""
    shown: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, str):
            value = _SECRET_QUERY.sub(r"\1***", re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", value))
        shown[field.name] = list(value) if isinstance(value, tuple) else value
    shown["master_key"] = "set (TENANTGATE_MASTER_KEY, masked)" if os.environ.get("TENANTGATE_MASTER_KEY") else \
        "from master_key_file" if config.master_key_file or os.environ.get("TENANTGATE_MASTER_KEY_FILE") else "none"
    return shown
