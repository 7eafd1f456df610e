"""A paced gRPC client (grpcio) for weft's soak.

    soak_grpc.py ADDR PORT SECONDS RATE

Calls the `weft.test.Greeter` service of grpc_peer.py RATE times a second
for SECONDS on one channel (one HTTP/2 connection): four SayHello (OK) to
one Lookup (NOT_FOUND). Prints each call's status code on a line of its
own as it comes back.
"""
import sys
import time

import grpc

from grpc_peer import SERVICE


def main(addr, port, seconds, rate):
    deadline = time.monotonic() + seconds
    interval = 1.0 / rate
    with grpc.insecure_channel(f"{addr}:{port}") as channel:
        hello = channel.unary_unary(f"/{SERVICE}/SayHello")
        lookup = channel.unary_unary(f"/{SERVICE}/Lookup")
        n = 0
        next_call = time.monotonic()
        while time.monotonic() < deadline:
            stub = lookup if n % 5 == 4 else hello
            try:
                stub(b"soak %d" % n, timeout=10)
                print("OK", flush=True)
            except grpc.RpcError as e:
                print(e.code().name, flush=True)
            n += 1
            next_call += interval
            delay = next_call - time.monotonic()
            if delay > 0:
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            elif delay < -1:
                # Fell behind (a stalled machine): a steady rate, no burst.
                next_call = time.monotonic()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))
