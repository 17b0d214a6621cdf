"""The blocking client: ``_calls`` run on a ``grpc.Channel``. Safe to share between threads."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

import grpc

import tenantgate.client._calls as calls
from tenantgate.client._calls import Call
from tenantgate.client._config import ClientConfig
from tenantgate.client._core import ClientBase, describe_method, every_tenant_of
from tenantgate.client._errors import error_from_rpc
from tenantgate.client._results import TenantAccess
from tenantgate.v1 import decision_pb2_grpc

P = ParamSpec("P")
T = TypeVar("T")


def _blocking(build: Callable[P, Call[T]]) -> Callable[Concatenate[Client, P], T]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(build(*args, **kwargs))

    describe_method(method, build, "Client")
    return method


class Client(ClientBase):
    """A blocking tenantgate client over one channel to every replica.

    ``Client("127.0.0.1:50051")``, ``Client(["10.0.0.1:50051", "10.0.0.2:50051"])``, or
    ``Client(ClientConfig(...))`` for deadlines, TLS, the caller's name and retries. Calls answer typed
    values (``Decision``, ``QuotaResult``...) and raise ``CallError`` subclasses (``NotFound``,
    ``Unavailable``...). ``interceptors``: gRPC client interceptors, outermost first. Use it as a context
    manager, or ``close()`` it."""

    def __init__(self, config: str | Sequence[str] | ClientConfig, *,
                 interceptors: Sequence[grpc.UnaryUnaryClientInterceptor] = ()) -> None:
        super().__init__(config)
        plan = self._plan
        channel = (grpc.insecure_channel(plan.target, options=plan.options) if plan.credentials is None
                   else grpc.secure_channel(plan.target, plan.credentials, options=plan.options))
        self._channel: grpc.Channel = grpc.intercept_channel(channel, *interceptors) if interceptors else channel
        self._stub = decision_pb2_grpc.DecisionServiceStub(self._channel)

    def _run(self, call: Call[T]) -> T:
        try:
            answer = getattr(self._stub, call.method)(call.request, **self._call_options(call))
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
        return call.read(answer)

    def every_subject_tenant(self, subject: str = "", subject_tenant_id: str = "", *, token: str = "",
                             **options: Any) -> Iterator[TenantAccess]:
        """Every tenant ``list_subject_tenants`` lists (same arguments but ``page_token``), page after page. A token
        that does not verify raises ``Unauthenticated``."""
        page_token = ""
        while True:
            page = self.list_subject_tenants(subject, subject_tenant_id, token=token, page_token=page_token,
                                             **options)
            yield from every_tenant_of(page)
            page_token = page.next_page_token
            if not page_token:
                return

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    check_access = _blocking(calls.check_access)
    check_access_batch = _blocking(calls.check_access_batch)
    consume_quota = _blocking(calls.consume_quota)
    get_tenant_key = _blocking(calls.get_tenant_key)
    get_tenant_key_metadata = _blocking(calls.get_tenant_key_metadata)
    get_data_key = _blocking(calls.get_data_key)
    decrypt_data_key = _blocking(calls.decrypt_data_key)
    validate_token = _blocking(calls.validate_token)
    resolve_tenant = _blocking(calls.resolve_tenant)
    list_subject_tenants = _blocking(calls.list_subject_tenants)
    check_tenant_access = _blocking(calls.check_tenant_access)
