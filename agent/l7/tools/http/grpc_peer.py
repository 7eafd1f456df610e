"""gRPC peer for fixtures: `grpc_peer.py server PORT` or `grpc_peer.py client PORT`.
Generic handlers with raw bytes, so no generated code is needed."""
import sys
from concurrent import futures
import grpc

SERVICE = "weft.test.v1.Greeter"
ident = lambda b: b

def say_hello(request, context):
    return b"hello " + request

def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such user")

def stream(request, context):
    for i in range(3):
        yield b"part %d" % i

def server(port):
    handlers = {
        "SayHello": grpc.unary_unary_rpc_method_handler(say_hello, ident, ident),
        "Fail": grpc.unary_unary_rpc_method_handler(fail, ident, ident),
        "Stream": grpc.unary_stream_rpc_method_handler(stream, ident, ident),
    }
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    s.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    s.add_insecure_port(f"127.0.0.1:{port}")
    s.start()
    s.wait_for_termination()

def client(port):
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        hello = ch.unary_unary(f"/{SERVICE}/SayHello", ident, ident)
        print(hello(b"weft"))
        try:
            ch.unary_unary(f"/{SERVICE}/Fail", ident, ident)(b"x")
        except grpc.RpcError as e:
            print(e.code())
        print(list(ch.unary_stream(f"/{SERVICE}/Stream", ident, ident)(b"y")))
        print(hello(b"again"))

if __name__ == "__main__":
    (server if sys.argv[1] == "server" else client)(int(sys.argv[2]))
