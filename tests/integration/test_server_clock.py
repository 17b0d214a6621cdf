"""A server's clock (``TenantgateServer(clock=...)``) reaches what it builds: the registry store it opens
(scheduled key rotation) and the quota engine (the memory backend's buckets and leases). Max staleness on the
same clock: ``test_registry_faults.test_max_staleness_fails_closed``."""

from __future__ import annotations

import time
from collections.abc import Callable

from tenantgate.clock import FakeClock
from tenantgate.keywrap import MasterKey, tenant_key_factory
from tenantgate.registry.backends import open_store
from tenantgate.v1 import decision_pb2 as pb
from tests.conftest import RunningServer, manifests, tenant_doc

# Years ahead of the system clock, so that a part left on the system clock finds nothing due and nothing refilled.
START = 2_000_000_000.0
STORAGE = (("x-tenantgate-caller", "service:storage"),)
KEYS = {"purposes": ["data"], "readers": ["service:storage"], "rotate_every": "30d"}
QUOTAS = {"api": {"rate": "1/minute"}, "conc": {"concurrency": 1, "lease_ttl": "30s"}}


def primary_version(server: RunningServer) -> int:
    key = server.stub.GetTenantKey(pb.GetTenantKeyRequest(tenant_id="acme", purpose="data"), metadata=STORAGE)
    return int(key.version)


def test_scheduled_rotation_runs_on_the_servers_clock(registry_url: str, master_key: MasterKey,
                                                      start_server: Callable[..., RunningServer]) -> None:
    clock = FakeClock(START)
    created = open_store(registry_url, clock=clock)
    created.apply(manifests({"acme": tenant_doc("acme", keys=KEYS)}), key_factory=tenant_key_factory(master_key))
    created.close()
    server = start_server(master_key, clock=clock, registry_url=registry_url, key_rotation_interval=0.02)
    server.wait_synced(1)
    assert primary_version(server) == 1
    clock.advance(30 * 86400)
    deadline = time.monotonic() + 5
    while primary_version(server) != 2:  # the schedule looks every 20 ms
        assert time.monotonic() < deadline, "the key due on the server's clock was not rotated"
        time.sleep(0.02)


def test_memory_quotas_count_on_the_servers_clock(registry_url: str,
                                                   start_server: Callable[..., RunningServer]) -> None:
    created = open_store(registry_url)
    created.apply(manifests({"acme": tenant_doc("acme", quotas=QUOTAS)}))
    created.close()
    clock = FakeClock(START)
    server = start_server(clock=clock, registry_url=registry_url)
    server.wait_synced(1)

    def consume(quota: str) -> bool:
        request = pb.ConsumeQuotaRequest(tenant_id="acme", items=[pb.QuotaItem(quota=quota, amount=1)])
        return bool(server.stub.ConsumeQuota(request).allowed)

    assert consume("api") and not consume("api")
    clock.advance(60)  # one token a minute
    assert consume("api")
    assert consume("conc") and not consume("conc")
    clock.advance(30)  # lease_ttl 30s: a holder that never released its lease loses it
    assert consume("conc")
