"""Keep-alive POSTs with bodies, then pipelined ones, to http_server.py's
/received: checks that each request arrived byte-exact and reports the
traceparent the server received. weft's injection tests run it.

Prints one JSON object: {"requests": [{"traceparent": ..., "ok": bool}],
"pipelined": [status, ...], "pipelined_traceparents": [...]}.

Usage: inject_client.py ADDRESS PORT REQUESTS
"""
import hashlib
import http.client
import json
import random
import socket
import sys


def keep_alive(addr, port, n):
    rng = random.Random(7)
    conn = http.client.HTTPConnection(addr, port, timeout=10)
    out = []
    for i in range(n):
        # Sizes from empty to several segments (Python writes the body
        # apart from the head).
        size = rng.choice([0, 1, 100, 1500, 20000, rng.randrange(0, 70000)])
        body = rng.randbytes(size)
        conn.request("POST", f"/received/{i}", body=body)
        resp = conn.getresponse()
        echo = json.loads(resp.read())
        ok = (
            resp.status == 200
            and echo["length"] == len(body)
            and echo["sha256"] == hashlib.sha256(body).hexdigest()
        )
        out.append({"traceparent": echo["traceparent"], "ok": ok})
    conn.close()
    return out


def read_response(sock, buf):
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("closed before a whole response")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, value = line.split(":", 1)
        if name.strip().lower() == "content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("closed inside a body")
        rest += chunk
    return status, json.loads(rest[:length]), rest[length:]


def pipelined(addr, port):
    sock = socket.create_connection((addr, port), timeout=10)
    bodies = [b"one", b"", b"three" * 100]
    wire = b"".join(
        f"POST /received/pipelined/{k} HTTP/1.1\r\nHost: {addr}\r\n"
        f"Content-Length: {len(b)}\r\n\r\n".encode() + b
        for k, b in enumerate(bodies)
    )
    sock.sendall(wire)
    statuses, parents, buf = [], [], b""
    for body in bodies:
        status, echo, buf = read_response(sock, buf)
        exact = echo["length"] == len(body) and echo["sha256"] == hashlib.sha256(body).hexdigest()
        statuses.append(status if exact else -status)
        parents.append(echo["traceparent"])
    sock.close()
    return statuses, parents


if __name__ == "__main__":
    addr, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    requests = keep_alive(addr, port, n)
    statuses, parents = pipelined(addr, port)
    print(json.dumps({"requests": requests, "pipelined": statuses, "pipelined_traceparents": parents}))
