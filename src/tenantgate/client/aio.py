"""The asyncio client: ``_calls`` awaited on a ``grpc.aio.Channel``. Make it, use it and close it on one
event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

import grpc

import tenantgate.client._calls as calls
from tenantgate.client._calls import Call
from tenantgate.client._channels import ChannelPlan, plan_channel
from tenantgate.client._config import ClientConfig
from tenantgate.client._core import ClientBase, as_config, describe_method, every_tenant_of
from tenantgate.client._errors import error_from_rpc
from tenantgate.client._results import TenantAccess
from tenantgate.v1 import decision_pb2_grpc

P = ParamSpec("P")
T = TypeVar("T")


def _awaiting(build: Callable[P, Call[T]]) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]]:
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._run(build(*args, **kwargs))

    describe_method(method, build, "AsyncClient")
    return method


class AsyncClient(ClientBase):
    """An asyncio tenantgate client over one channel to every replica: ``Client``'s calls, awaited.

    ``async with AsyncClient(["10.0.0.1:50051", "10.0.0.2:50051"]) as client: decision = await
    client.check_access(...)``. ``interceptors``: ``grpc.aio`` client interceptors."""

    def __init__(self, config: str | Sequence[str] | ClientConfig, *,
                 interceptors: Sequence[grpc.aio.ClientInterceptor] = (), _plan: ChannelPlan | None = None) -> None:
        super().__init__(config, _plan)
        plan = self._plan
        self._channel = (
            grpc.aio.insecure_channel(plan.target, options=plan.options, interceptors=interceptors or None)
            if plan.credentials is None
            else grpc.aio.secure_channel(plan.target, plan.credentials, options=plan.options,
                                         interceptors=interceptors or None))
        self._stub = decision_pb2_grpc.DecisionServiceStub(self._channel)

    @classmethod
    async def open(cls, config: str | Sequence[str] | ClientConfig, *,
                   interceptors: Sequence[grpc.aio.ClientInterceptor] = ()) -> AsyncClient:
        """An ``AsyncClient`` made without blocking the event loop: several replicas' names are resolved, and TLS
        files read, on a worker thread (the constructor does both where it is called)."""
        config = as_config(config)
        plan = await asyncio.to_thread(plan_channel, config)
        return cls(config, interceptors=interceptors, _plan=plan)

    async def _run(self, call: Call[T]) -> T:
        try:
            answer = await getattr(self._stub, call.method)(call.request, **self._call_options(call))
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
        return call.read(answer)

    async def every_subject_tenant(self, subject: str = "", subject_tenant_id: str = "", *, token: str = "",
                                   **options: Any) -> AsyncIterator[TenantAccess]:
        """Every tenant ``list_subject_tenants`` lists (same arguments but ``page_token``), page after page. A token
        that does not verify raises ``Unauthenticated``."""
        page_token = ""
        while True:
            page = await self.list_subject_tenants(subject, subject_tenant_id, token=token, page_token=page_token,
                                                   **options)
            for tenant in every_tenant_of(page):
                yield tenant
            page_token = page.next_page_token
            if not page_token:
                return

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.close()

    check_access = _awaiting(calls.check_access)
    check_access_batch = _awaiting(calls.check_access_batch)
    consume_quota = _awaiting(calls.consume_quota)
    get_tenant_key = _awaiting(calls.get_tenant_key)
    get_tenant_key_metadata = _awaiting(calls.get_tenant_key_metadata)
    get_data_key = _awaiting(calls.get_data_key)
    decrypt_data_key = _awaiting(calls.decrypt_data_key)
    validate_token = _awaiting(calls.validate_token)
    resolve_tenant = _awaiting(calls.resolve_tenant)
    list_subject_tenants = _awaiting(calls.list_subject_tenants)
    check_tenant_access = _awaiting(calls.check_tenant_access)
