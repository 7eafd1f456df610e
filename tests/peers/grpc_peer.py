"""A real gRPC server and client (grpcio) for weft's L7 tests.

No generated code: the service `weft.test.Greeter` is registered with a
generic handler over raw bytes (gRPC does not care what the messages are).

    grpc_peer.py serve ADDR PORT
    grpc_peer.py call ADDR PORT

`SayHello` answers OK, `Lookup` fails with NOT_FOUND, `Slow` answers OK
after 100 ms. The client makes SayHello, SayHello, Lookup, Slow on one
channel (one HTTP/2 connection) and prints each call's status code.
"""
import os
import sys
import time
from concurrent import futures

import grpc

SERVICE = "weft.test.Greeter"


def say_hello(request, context):
    return b"hello " + request


def lookup(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such key")


def slow(request, context):
    time.sleep(0.1)
    return request


def serve(addr, port):
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(fn)
        for name, fn in [("SayHello", say_hello), ("Lookup", lookup), ("Slow", slow)]
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"{addr}:{port}")
    server.start()
    server.wait_for_termination()


def call(addr, port):
    # W3C trace context to send as metadata with every call, if given.
    metadata = [
        (key, os.environ[var])
        for key, var in [("traceparent", "WEFT_TEST_TRACEPARENT"), ("tracestate", "WEFT_TEST_TRACESTATE")]
        if os.environ.get(var)
    ]
    with grpc.insecure_channel(f"{addr}:{port}") as channel:
        for method in ["SayHello", "SayHello", "Lookup", "Slow"]:
            stub = channel.unary_unary(f"/{SERVICE}/{method}")
            try:
                stub(b"weft", timeout=10, metadata=metadata or None)
                print(method, "OK")
            except grpc.RpcError as e:
                print(method, e.code().name)


if __name__ == "__main__":
    mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "serve":
        serve(addr, port)
    else:
        call(addr, port)
