"""Redis Cluster URLs: nodes, credentials and TLS settings, or one clear configuration error."""

from __future__ import annotations

import pytest

from tenantgate.counters import open_counter_store
from tenantgate.counters.redis_cluster import cluster_settings
from tenantgate.errors import ConfigurationError


def test_nodes_credentials_and_tls_settings() -> None:
    settings = cluster_settings("rediss+cluster://app:s3cret@10.0.0.1:7000,[::1]:7001/?ssl_ca_certs=/etc/ca.pem")
    assert [(node.host, node.port) for node in settings["startup_nodes"]] == [("10.0.0.1", 7000), ("::1", 7001)]
    assert (settings["ssl"], settings["username"], settings["password"], settings["ssl_ca_certs"]) == (
        True, "app", "s3cret", "/etc/ca.pem")
    plain = cluster_settings("redis+cluster://127.0.0.1:7000")
    assert plain["ssl"] is False and "password" not in plain
    encoded = cluster_settings("redis+cluster://app:p%40ss%3Aword@127.0.0.1:7000")
    assert encoded["password"] == "p@ss:word"


def test_errors_never_show_the_password() -> None:
    with pytest.raises(ConfigurationError) as raised:
        cluster_settings("redis+cluster://app:s3cret@127.0.0.1")
    assert "s3cret" not in str(raised.value) and "***" in str(raised.value)


@pytest.mark.parametrize(("url", "problem"), [
    ("redis+cluster://127.0.0.1", "is not HOST:PORT"),
    ("redis+cluster://127.0.0.1:7000,", "is not HOST:PORT"),
    ("redis+cluster://127.0.0.1:99999", "is not HOST:PORT"),
    ("redis+cluster://127.0.0.1:7000/2", "only database 0"),
    ("redis+cluster://127.0.0.1:7000?retries=3", "unknown Redis Cluster URL parameter 'retries'"),
])
def test_a_bad_url_is_one_clear_configuration_error(url: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        open_counter_store(url)


def test_other_schemes_are_named_in_the_error() -> None:
    with pytest.raises(ConfigurationError, match="redis\\+cluster://"):
        open_counter_store("memcached://127.0.0.1:11211")
