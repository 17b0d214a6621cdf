"""How a client's configuration becomes one gRPC channel: the target that lists every replica, the service
config (round-robin, health checks, retries), and the settings refused before anything is dialled."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from tenantgate.client import NO_RETRIES, ChannelSecurity, ClientConfig, RetryPolicy
from tenantgate.client._channels import channel_target, plan_channel, service_config
from tenantgate.errors import ConfigurationError
from tenantgate.v1 import decision_pb2

DECISION_SERVICE = decision_pb2.DESCRIPTOR.services_by_name["DecisionService"].full_name
NAMES = {"a.example": ["10.0.0.1", "fd00::1"], "b.example": ["10.0.0.2"], "c.example": ["10.0.0.1"],
         "v6only.example": ["fd00::2"]}


def table(host: str, port: int) -> Sequence[str]:
    """A resolver answering from NAMES, so that these tests need no DNS."""
    return NAMES[host]


def target(*addresses: str) -> tuple[str, str]:
    return channel_target(ClientConfig(addresses).addresses, table)


def test_one_address_is_left_to_grpc_which_resolves_and_balances_it() -> None:
    assert target("tenantgate.default.svc:50051") == ("tenantgate.default.svc:50051", "")
    assert target("dns:///tenantgate-headless:50051") == ("dns:///tenantgate-headless:50051", "")
    # A gRPC target is kept whole, commas included.
    assert ClientConfig("ipv4:10.0.0.1:1,10.0.0.2:1").addresses == ("ipv4:10.0.0.1:1,10.0.0.2:1",)


def test_several_addresses_become_one_target_listing_every_replica() -> None:
    assert ClientConfig(" 10.0.0.1:1, 10.0.0.2:2 ").addresses == ("10.0.0.1:1", "10.0.0.2:2")
    assert target("10.0.0.1:1", "10.0.0.2:2") == ("ipv4:10.0.0.1:1,10.0.0.2:2", "10.0.0.1:1")
    assert target("[::1]:1", "[fd00::2]:2") == ("ipv6:[::1]:1,[fd00::2]:2", "[::1]:1")
    # Host names are resolved once; the first one names the replicas to TLS.
    assert target("a.example:1", "b.example:2") == ("ipv4:10.0.0.1:1,10.0.0.2:2", "a.example:1")
    assert target("a.example:1", "c.example:1", "b.example:1") == ("ipv4:10.0.0.1:1,10.0.0.2:1", "a.example:1")
    assert target("a.example:1", "v6only.example:2") == ("ipv6:[fd00::1]:1,[fd00::2]:2", "a.example:1")


def test_host_names_resolve_with_the_system_resolver() -> None:
    plan = plan_channel(ClientConfig(["localhost:1", "localhost:2"]))
    assert plan.target in ("ipv4:127.0.0.1:1,127.0.0.1:2", "ipv6:[::1]:1,[::1]:2")
    assert ("grpc.default_authority", "localhost:1") in plan.options


@pytest.mark.parametrize(("addresses", "problem"), [
    ((), "at least one server address"),
    (("10.0.0.1:1", "dns:///x:1"), "cannot be part of a list"),
    (("10.0.0.1:1", "10.0.0.2"), "is not host:port"),
    (("10.0.0.1:1", "10.0.0.2:http"), "is not host:port"),
    (("10.0.0.1:1", "10.0.0.2:70000"), "is not host:port"),
    (("10.0.0.1:1", "[fd00::1]:1"), "share no address family"),
    (("b.example:1", "v6only.example:1"), "share no address family"),
])
def test_addresses_that_cannot_work_are_refused(addresses: tuple[str, ...], problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        channel_target(ClientConfig(addresses).addresses, table)


def test_the_service_config_balances_checks_health_and_retries_unavailable() -> None:
    config = service_config(ClientConfig("10.0.0.1:1,10.0.0.2:1"))
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["healthCheckConfig"] == {"serviceName": DECISION_SERVICE}
    assert config["methodConfig"] == [{"name": [{"service": DECISION_SERVICE}], "retryPolicy": {
        "maxAttempts": 5, "initialBackoff": "0.050000000s", "maxBackoff": "1.000000000s", "backoffMultiplier": 2.0,
        "retryableStatusCodes": ["UNAVAILABLE"]}}]
    # gRPC refuses a retry policy of one attempt: none is written.
    assert "retryPolicy" not in service_config(ClientConfig("x:1", retry=NO_RETRIES))["methodConfig"][0]
    assert "healthCheckConfig" not in service_config(ClientConfig("x:1", health_check=False))


def test_channel_options() -> None:
    plan = plan_channel(ClientConfig("10.0.0.1:1", server_name="tenantgate.internal",
                                     channel_options=[("grpc.keepalive_time_ms", 30000)]))
    options = dict(plan.options)
    assert json.loads(str(options["grpc.service_config"])) == service_config(ClientConfig("10.0.0.1:1"))
    assert options["grpc.enable_retries"] == 1 and options["grpc.keepalive_time_ms"] == 30000
    assert options["grpc.ssl_target_name_override"] == "tenantgate.internal"
    assert "grpc.default_authority" not in options and plan.credentials is None


@pytest.mark.parametrize("settings", [{"max_attempts": 0}, {"max_attempts": 6}, {"initial_backoff": 0},
                                      {"initial_backoff": 2.0, "max_backoff": 1.0}, {"backoff_multiplier": 0}])
def test_retry_policies_grpc_would_reject_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(**settings)  # type: ignore[arg-type]


def test_deadlines_are_positive() -> None:
    with pytest.raises(ConfigurationError, match="deadline must be positive"):
        ClientConfig("x:1", timeout=0)
    assert ClientConfig("x:1", timeout=None).timeout is None  # no deadline, when asked for


def test_tls_settings_that_cannot_work_are_refused_and_keys_never_printed() -> None:
    with pytest.raises(ConfigurationError, match="needs TLS"):
        ChannelSecurity(cert_pem=b"cert", key_pem=b"key").credentials()  # never plaintext with a certificate
    with pytest.raises(ConfigurationError, match="both a client certificate and its private key"):
        ChannelSecurity(ca_pem=b"ca", cert_pem=b"cert").credentials()
    with pytest.raises(ConfigurationError, match="cannot read a TLS file"):
        ChannelSecurity(ca_file="/nonexistent/ca.pem").credentials()
    assert "PRIVATE" not in repr(ChannelSecurity(ca_pem=b"ca", cert_pem=b"cert", key_pem=b"-----BEGIN PRIVATE KEY"))
    assert ChannelSecurity().credentials() is None
