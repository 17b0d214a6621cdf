"""Method handlers built from the service descriptors, with request decoding that cannot fail the call:
a request that is not valid protobuf (invalid UTF-8 in a string field, truncated bytes) reaches the
handler as ``Undecodable`` and is answered INVALID_ARGUMENT instead of the INTERNAL that gRPC would send.
Every unary call passes through ``Admission``, which counts the calls being handled and refuses new ones
while the server shuts down."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Container
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

SHUTTING_DOWN = "the server is shutting down; retry on another replica"


@dataclass(frozen=True, slots=True)
class Undecodable:
    message: str
    problem: str


def _tolerant(message_class: type[Message]) -> Callable[[bytes], Any]:
    name = message_class.DESCRIPTOR.full_name

    def decode(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except (DecodeError, ValueError) as exc:
            return Undecodable(name, str(exc) or "not a valid message")

    return decode


class Admission:
    """Whether unary calls are taken, and how many are being handled: what a shutdown waits for.

    Once ``refuse()`` is called, a call that reaches its handler is answered UNAVAILABLE before it does any
    work, so its caller can safely retry it on another replica. A call counts from its handler's first step,
    before its first ``await``: when ``in_flight`` is 0 after ``refuse()``, no call is working or can start.
    Server-streaming calls (WatchChanges) are neither counted nor refused: they end with the process and
    their callers resume from the last revision they saw."""

    __slots__ = ("in_flight", "refusing")

    def __init__(self) -> None:
        self.in_flight = 0
        self.refusing = False

    def refuse(self) -> None:
        self.refusing = True


def _admitted(behaviour: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
              admission: Admission) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    # What serving pays per call: one test, one increment and decrement, one more coroutine frame (callgrind:
    # about 1,600 instructions, under 0.5% of a CheckAccess).
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if admission.refusing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        admission.in_flight += 1
        try:
            return await behaviour(request, context)
        finally:
            admission.in_flight -= 1

    return handle


def service_handler(servicer: object, service: ServiceDescriptor, admission: Admission,
                    serialized: Container[str] = ()) -> grpc.GenericRpcHandler:
    """``serialized``: the methods whose behaviour answers its response already serialized (bytes)."""
    handlers = {}
    for method in service.methods:
        request = _tolerant(message_factory.GetMessageClass(method.input_type))
        response = None if method.name in serialized else \
            message_factory.GetMessageClass(method.output_type).SerializeToString
        behaviour = getattr(servicer, method.name)
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                behaviour, request_deserializer=request, response_serializer=response)
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _admitted(behaviour, admission), request_deserializer=request, response_serializer=response)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


class GenericOnly:
    """A server as generated ``add_*_to_server`` functions see it, taking their generic handlers only.

    grpc.aio's accept loop keeps one pending future per pre-registered method and hands all of them to
    asyncio.wait again for every incoming call of any service: health's three methods and reflection's one
    cost CheckAccess 6% of its instructions (README, Benchmarks). The generic handlers that the same
    functions add serve the same methods without that."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service_name: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        """Dropped: the generic handler added beside them serves these methods."""
