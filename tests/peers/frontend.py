"""A thread-per-request HTTP/1.1 frontend with no tracing code, for weft's
traces tests: for each GET it calls a backend HTTP server (a new
connection per request) and Redis (one connection per handler thread,
raw RESP), then answers. Each inbound connection is served by its own
thread (ThreadingHTTPServer), which reads the request, makes both calls
and writes the answer.

Usage: frontend.py ADDRESS PORT BACKEND_HOST:PORT REDIS_HOST:PORT
"""
import http.client
import http.server
import socket
import sys
import threading

BACKEND = None
REDIS = None
local = threading.local()


def redis_get(key):
    """GET key over the thread's own Redis connection; the reply's bytes."""
    conn = getattr(local, "redis", None)
    if conn is None:
        conn = socket.create_connection(REDIS)
        local.redis = conn
    k = key.encode()
    conn.sendall(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(k), k))
    reply = conn.recv(65536)
    # A nil bulk string ($-1) or a value: either ends with CRLF.
    while not reply.endswith(b"\r\n"):
        more = conn.recv(65536)
        if not more:
            raise ConnectionError("redis closed the connection")
        reply += more
    return reply


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        backend = http.client.HTTPConnection(*BACKEND, timeout=10)
        backend.request("GET", "/backend" + self.path)
        answer = backend.getresponse()
        answer.read()
        backend.close()
        redis_get("weft:" + self.path)
        body = b"frontend: backend said %d\n" % answer.status
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def host_port(s):
    host, port = s.rsplit(":", 1)
    return host, int(port)


if __name__ == "__main__":
    addr, port = sys.argv[1], int(sys.argv[2])
    BACKEND = host_port(sys.argv[3])
    REDIS = host_port(sys.argv[4])
    http.server.ThreadingHTTPServer((addr, port), Handler).serve_forever()
