"""Method handlers built from the service descriptors, with request decoding that cannot fail the call:
a request that is not valid protobuf (invalid UTF-8 in a string field, truncated bytes) reaches the
handler as ``Undecodable`` and is answered INVALID_ARGUMENT instead of the INTERNAL that gRPC would send."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message


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


def service_handler(servicer: object, service: ServiceDescriptor) -> grpc.GenericRpcHandler:
    handlers = {}
    for method in service.methods:
        request = _tolerant(message_factory.GetMessageClass(method.input_type))
        response = message_factory.GetMessageClass(method.output_type).SerializeToString
        behaviour = getattr(servicer, method.name)
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                behaviour, request_deserializer=request, response_serializer=response)
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                behaviour, request_deserializer=request, response_serializer=response)
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
