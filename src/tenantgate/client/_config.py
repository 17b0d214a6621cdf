"""What a client is configured with, checked once when it is made; ``_channels`` turns it into a channel."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from tenantgate.channels import ChannelSecurity
from tenantgate.errors import ConfigurationError

# The URI schemes gRPC resolves itself: an address starting with one is a whole target, passed through.
GRPC_SCHEMES = frozenset({"dns", "ipv4", "ipv6", "unix", "unix-abstract", "vsock", "xds", "google-c2p"})


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC's own retries (the channel's service config) of calls answered UNAVAILABLE: a replica that is down,
    draining, not yet loaded or failing closed. Each attempt is balanced anew, so it usually lands on another
    replica; attempts stop at the call's deadline. gRPC allows at most 5 attempts; 1 turns retries off.

    A ConsumeQuota is retried too: UNAVAILABLE from a server means it spent nothing, but a connection lost
    after the server spent and before the answer arrived looks the same; give ``idempotency_key`` where
    counting twice matters."""

    max_attempts: int = 5
    # Seconds: the first retry waits a random time up to initial_backoff, each next one up to multiplier times
    # longer, never more than max_backoff.
    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    backoff_multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 5:
            raise ConfigurationError(f"retry max_attempts must be 1 to 5 (gRPC's limit), got {self.max_attempts}")
        if self.initial_backoff <= 0 or self.max_backoff < self.initial_backoff or self.backoff_multiplier <= 0:
            raise ConfigurationError("retry backoffs must be positive, with max_backoff >= initial_backoff, "
                                     f"got {self}")


NO_RETRIES = RetryPolicy(max_attempts=1)


@dataclass(frozen=True)
class ClientConfig:
    """Everything a ``Client`` or ``AsyncClient`` is made with.

    ``addresses``: the replicas, as ``host:port`` strings (a sequence, or one string, commas between
    replicas). Calls are spread over them round-robin by gRPC's own balancer, on one channel:

    - one address is handed to gRPC as it is: a DNS name is re-resolved by gRPC and its every address used
      (a Kubernetes headless Service), and a gRPC target (``dns:///``, ``ipv4:``, ``unix:``...) is kept whole;
    - several addresses are IP addresses, or host names resolved once, when the client is made (a replica
      whose host name later points elsewhere is not followed: for replicas that change addresses, give one
      DNS name that resolves to them all).

    ``timeout`` is each call's deadline in seconds unless the call gives its own (None: no deadline).
    ``wait_for_ready`` lets a call wait, up to its deadline, for a replica to become reachable and serving
    instead of failing at once with UNAVAILABLE. ``caller`` names this service to the server
    (``x-tenantgate-caller`` metadata, honoured with ``--trust-caller-metadata``; under mutual TLS the client
    certificate names it instead). ``security``: TLS or mutual TLS. ``server_name``: the name the servers'
    certificates are checked against, when it is not the (first) address's host. ``health_check``: route
    only to replicas whose ``grpc.health.v1`` status for DecisionService is SERVING, so that a replica that
    drains or has not loaded the registry yet gets no calls. ``channel_options``: more gRPC channel
    arguments, e.g. ``(("grpc.keepalive_time_ms", 30000),)``."""

    addresses: Sequence[str]
    timeout: float | None = 5.0
    wait_for_ready: bool = False
    caller: str = ""
    security: ChannelSecurity = field(default_factory=ChannelSecurity)
    server_name: str = ""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    health_check: bool = True
    channel_options: Sequence[tuple[str, str | int]] = ()

    def __post_init__(self) -> None:
        addresses = _split(self.addresses)
        if not addresses:
            raise ConfigurationError("a client needs at least one server address")
        if len(addresses) > 1 and any(grpc_scheme(address) for address in addresses):
            raise ConfigurationError(f"a gRPC target ({', '.join(a for a in addresses if grpc_scheme(a))}) cannot be "
                                     "part of a list: give it alone, or give host:port addresses")
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigurationError(f"the default deadline must be positive (or None), got {self.timeout}")
        # Frozen: the normalised forms are set once, here.
        object.__setattr__(self, "addresses", addresses)
        object.__setattr__(self, "channel_options", tuple(self.channel_options))


def _split(addresses: str | Sequence[str]) -> tuple[str, ...]:
    """Addresses as a tuple; one string is split at its commas unless it is a gRPC target (``ipv4:a,b``)."""
    if isinstance(addresses, str):
        addresses = [addresses] if grpc_scheme(addresses) else addresses.split(",")
    return tuple(stripped for address in addresses if (stripped := address.strip()))


def grpc_scheme(address: str) -> str:
    scheme, colon, _ = address.partition(":")
    return scheme if colon and scheme.lower() in GRPC_SCHEMES else ""
