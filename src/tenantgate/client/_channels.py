"""A ``ClientConfig`` as a gRPC channel: the target, the service config (round-robin, health checks, retries)
and the TLS credentials, the same for the sync and the asyncio channel.

Balancing and retries are gRPC's own, not a loop of ours: one channel holds a subchannel per replica, its
``round_robin`` policy picks a READY one for each call (and each retry), and subchannels that lose their
connection, or whose health turns NOT_SERVING, are left out until they come back."""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from tenantgate.client._config import ClientConfig, RetryPolicy
from tenantgate.errors import ConfigurationError
from tenantgate.v1 import decision_pb2

DECISION_SERVICE = decision_pb2.DESCRIPTOR.services_by_name["DecisionService"].full_name

# (host, port) -> the IP addresses it resolves to; socket.getaddrinfo in use, a table in unit tests.
Resolver = Callable[[str, int], Sequence[str]]


@dataclass(frozen=True)
class ChannelPlan:
    target: str
    options: tuple[tuple[str, str | int], ...]
    credentials: grpc.ChannelCredentials | None


def plan_channel(config: ClientConfig, resolve: Resolver | None = None) -> ChannelPlan:
    target, authority = channel_target(config.addresses, resolve or _resolve)
    options: list[tuple[str, str | int]] = [("grpc.service_config", json.dumps(service_config(config))),
                                            ("grpc.enable_retries", 1),
                                            # A replica back from a restart is used again within a second or two:
                                            # gRPC's default backoff (1 s, growing to 120 s) left restarted
                                            # replicas idle for seconds (measured in the rolling-restart test).
                                            ("grpc.initial_reconnect_backoff_ms", 100),
                                            ("grpc.max_reconnect_backoff_ms", 2000)]
    if config.server_name:
        options.append(("grpc.ssl_target_name_override", config.server_name))
    if authority:
        # A list's own authority would be "ipv4:a,b": name the first replica, as TLS checks its certificate
        # against this name.
        options.append(("grpc.default_authority", authority))
    options.extend(config.channel_options)
    return ChannelPlan(target, tuple(options), config.security.credentials())


def service_config(config: ClientConfig) -> dict[str, Any]:
    """gRPC's service config (https://github.com/grpc/grpc/blob/master/doc/service_config.md)."""
    method: dict[str, Any] = {"name": [{"service": DECISION_SERVICE}]}
    if config.retry.max_attempts > 1:
        method["retryPolicy"] = retry_policy(config.retry)
    settings: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}], "methodConfig": [method]}
    if config.health_check:
        # The server reports DecisionService NOT_SERVING until its first snapshot and while it drains.
        settings["healthCheckConfig"] = {"serviceName": DECISION_SERVICE}
    return settings


def retry_policy(policy: RetryPolicy) -> dict[str, Any]:
    return {"maxAttempts": policy.max_attempts, "initialBackoff": _duration(policy.initial_backoff),
            "maxBackoff": _duration(policy.max_backoff), "backoffMultiplier": policy.backoff_multiplier,
            "retryableStatusCodes": ["UNAVAILABLE"]}


def _duration(seconds: float) -> str:
    return f"{seconds:.9f}s"  # protobuf's JSON Duration: at most nine fractional digits


def channel_target(addresses: Sequence[str], resolve: Resolver) -> tuple[str, str]:
    """(gRPC target, default authority or ""). One address is gRPC's to resolve; several become one
    ``ipv4:``/``ipv6:`` target listing every replica, which is what lets gRPC's balancer see them all."""
    if len(addresses) == 1:
        return addresses[0], ""
    hosts = [_host_port(address) for address in addresses]
    # Per family, each replica's addresses in it; a family serves only if every replica has one there.
    by_family: dict[str, list[list[str]]] = {"ipv4": [], "ipv6": []}
    for host, port in hosts:
        ips = [host] if _is_ip(host) else list(resolve(host, port))
        for family, replicas in by_family.items():
            replicas.append([_join(ip, port) for ip in ips if _family(ip) == family])
    for family, replicas in by_family.items():
        if all(replicas):
            listed = dict.fromkeys(address for replica in replicas for address in replica)
            first_host, first_port = hosts[0]
            return f"{family}:{','.join(listed)}", _join(first_host, first_port)
    raise ConfigurationError(f"the replicas {', '.join(addresses)} share no address family (IPv4 or IPv6): "
                             "one channel balances over one family")


def _host_port(address: str) -> tuple[str, int]:
    host, colon, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(f"replica address {address!r} is not host:port")
    return host, int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _family(ip: str) -> str:
    return f"ipv{ipaddress.ip_address(ip).version}"


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if _is_ip(host) and _family(host) == "ipv6" else f"{host}:{port}"


def _resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigurationError(f"cannot resolve replica {host}: {exc}") from None
    return [str(info[4][0]) for info in infos]
