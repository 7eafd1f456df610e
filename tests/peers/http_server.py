"""A real HTTP/1.1 server for weft's L7 tests.

POST /received answers with the request's traceparent header and its body's
length and SHA-256 (JSON). GET /slow sleeps 100 ms before answering; /status/N answers with status N;
anything else answers 200 with a small body, or with the status given as
the third argument (a server that fails every request). Keep-alive
(HTTP/1.1) so that several requests share one connection.

With --tls CERT KEY it serves HTTPS (Python's ssl, on the system's
OpenSSL).

Usage: http_server.py ADDRESS PORT [STATUS] [--tls CERT KEY]
"""
import hashlib
import http.server
import json
import sys
import time


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path.startswith("/slow"):
            time.sleep(0.1)
        status = EVERY_STATUS
        if path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
        body = b"hello from weft's test server\n"
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        received = self.rfile.read(length)
        if self.path.startswith("/received"):
            # What arrived: the traceparent header and the body's size and
            # digest, for tests that check what the path did to a request.
            body = json.dumps(
                {
                    "traceparent": self.headers.get("traceparent"),
                    "length": len(received),
                    "sha256": hashlib.sha256(received).hexdigest(),
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        body = b"created\n"
        self.send_response(201)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


EVERY_STATUS = 200

if __name__ == "__main__":
    args = sys.argv[1:]
    tls = None
    if "--tls" in args:
        at = args.index("--tls")
        tls = args[at + 1 : at + 3]
        del args[at : at + 3]
    addr, port = args[0], int(args[1])
    if len(args) > 2:
        EVERY_STATUS = int(args[2])
    server = http.server.ThreadingHTTPServer((addr, port), Handler)
    if tls:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*tls)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.serve_forever()
