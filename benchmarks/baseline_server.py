"""The ceiling: a grpc.aio server on the same method paths, decoding each request into its protobuf
message as tenantgate does, and answering a constant response of the same size as tenantgate's. Every
figure of grpc_bench.py is a ratio to this server, measured in the same run.

Usage: python benchmarks/baseline_server.py --port PORT --responses FILE (JSON: method -> hex response)
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import grpc
from google.protobuf import message_factory

from tenantgate.v1 import decision_pb2


async def serve(port: int, responses: dict[str, bytes]) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)], maximum_concurrent_rpcs=1000)

    service = decision_pb2.DESCRIPTOR.services_by_name["DecisionService"]

    def constant(method: str, response: bytes) -> grpc.RpcMethodHandler:
        descriptor = service.methods_by_name[method]
        request_class = message_factory.GetMessageClass(descriptor.input_type)
        answer = message_factory.GetMessageClass(descriptor.output_type).FromString(response)

        async def handle(request: object, context: grpc.aio.ServicerContext) -> object:
            return answer

        return grpc.unary_unary_rpc_method_handler(handle, request_deserializer=request_class.FromString,
                                                   response_serializer=type(answer).SerializeToString)

    handlers = {method: constant(method, response) for method, response in responses.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("tenantgate.v1.DecisionService",
                                                                          handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--responses", required=True)
    args = parser.parse_args()
    responses = {method: bytes.fromhex(text) for method, text in json.loads(Path(args.responses).read_text()).items()}
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.port, responses))


if __name__ == "__main__":
    main()
