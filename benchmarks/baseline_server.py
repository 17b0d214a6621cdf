"""The ceiling: a grpc.aio server on the same method paths whose handlers return a constant response of
the same size as tenantgate's, without decoding the request. Every figure of grpc_bench.py is a ratio to
this server, measured in the same run.

Usage: python benchmarks/baseline_server.py --port PORT --responses FILE (JSON: method -> hex response)
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import grpc


async def serve(port: int, responses: dict[str, bytes]) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)], maximum_concurrent_rpcs=1000)

    def constant(response: bytes) -> grpc.RpcMethodHandler:
        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return response

        return grpc.unary_unary_rpc_method_handler(handle)

    handlers = {method: constant(response) for method, response in responses.items()}
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
