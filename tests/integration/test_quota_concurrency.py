from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc

from tenantgate.registry.records import RegistryStore
from tenantgate.v1 import decision_pb2 as pb
from tenantgate.v1 import decision_pb2_grpc
from tests.conftest import RunningServer, manifests, tenant_doc


def test_200_concurrent_consumes_against_a_limit_of_50_admit_exactly_50(
        store: RegistryStore, quota_backend: tuple[str, str], start_server: Callable[..., RunningServer]) -> None:
    store.apply(manifests({"acme": tenant_doc("acme", quotas={"jobs": {"limit": 50, "period": "day"},
                                                    "seats": {"allocation": 50}})}))
    url, prefix = quota_backend  # memory, one Redis, a Redis Cluster
    server = start_server(quota_backend=url, quota_prefix=prefix)
    server.wait_synced(1)

    async def hammer(quota: str) -> list[bool]:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = decision_pb2_grpc.DecisionServiceStub(channel)
            request = pb.ConsumeQuotaRequest(tenant_id="acme", items=[pb.QuotaItem(quota=quota, amount=1)])
            responses = await asyncio.gather(*(stub.ConsumeQuota(request, timeout=30) for _ in range(200)))
        return [response.allowed for response in responses]

    for quota in ("jobs", "seats"):
        admitted = asyncio.run(hammer(quota))
        assert admitted.count(True) == 50, quota
