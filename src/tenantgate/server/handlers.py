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
