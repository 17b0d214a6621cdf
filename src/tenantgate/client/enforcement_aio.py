"""Drop-in enforcement on a ``grpc.aio`` server: ``enforcement``'s policy, flow and answers, each call's
questions awaited on an ``AsyncClient`` in the call's own task.

    client = AsyncClient("tenantgate:50051")  # made on the server's event loop
    server = grpc.aio.server(interceptors=[AsyncEnforcementInterceptor(client, EnforcementPolicy(...))])
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from tenantgate.client._admission import (
    Admitted,
    Question,
    Refused,
    admission,
    release_surviving_cancellation,
    run_awaiting,
)
from tenantgate.client.aio import AsyncClient
from tenantgate.client.enforcement import Behavior, EnforcementPolicy, as_tenant, guarded, refusal_status


class AsyncEnforcementInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Enforcement on a ``grpc.aio.server``: each call of a method that is not public is decided through
    ``client`` as ``policy`` reads it. The handlers it guards must be coroutines or async generators: grpc.aio
    runs any other on a thread of its own, where its tenant could not be set, so it is refused loudly."""

    def __init__(self, client: AsyncClient, policy: EnforcementPolicy | None = None) -> None:
        self._client = client
        self._policy = policy or EnforcementPolicy()
        self._releases: set[asyncio.Future[None]] = set()

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: Any) -> Any:
        handler = await continuation(details)
        access = self._policy.access_for(details.method)
        if handler is None or access is None:
            return handler
        question = self._policy.question(access, tuple(details.invocation_metadata or ()))
        return guarded(handler, lambda behavior: self._unary(behavior, question),
                       lambda behavior: self._streaming(behavior, question))

    async def _admit(self, question: Question | Refused, context: grpc.aio.ServicerContext) -> Admitted:
        question = self._policy.untrusted_subject(question, context) or question
        verdict = (question if isinstance(question, Refused)
                   else await run_awaiting(self._client, admission(question, fail_open=self._policy.fail_open),
                                           context.time_remaining))
        if isinstance(verdict, Admitted):
            return verdict
        status, details, trailers = refusal_status(verdict)
        await context.abort(status, details, trailers)  # raises: the handler never runs
        raise RuntimeError("grpc's abort() returned")

    async def _leave(self, admitted: Admitted) -> None:
        """Give the leases back, even when the call was cancelled (its caller gone): the release runs as a task
        of its own, which a cancellation of this one does not stop."""
        await release_surviving_cancellation(self._client, admitted, self._releases)

    def _unary(self, behavior: Behavior, question: Question | Refused) -> Behavior:
        if not inspect.iscoroutinefunction(behavior):
            raise TypeError(f"AsyncEnforcementInterceptor guards coroutine and async generator handlers only, "
                            f"not {behavior!r}")

        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            admitted = await self._admit(question, context)
            try:
                with as_tenant(admitted.tenant):
                    return await behavior(request, context)
            finally:
                await self._leave(admitted)

        return run

    def _streaming(self, behavior: Behavior, question: Question | Refused) -> Behavior:
        if not inspect.isasyncgenfunction(behavior):
            return self._unary(behavior, question)  # a coroutine writing its responses with context.write()

        # grpc.aio iterates the responses in the call's own task, start to end: the tenant set there stays
        # with this call only.
        async def run(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            admitted = await self._admit(question, context)
            try:
                with as_tenant(admitted.tenant):
                    async for response in behavior(request, context):
                        yield response
            finally:
                await self._leave(admitted)

        return run
