"""A real HTTP/1.1 server for weft's L7 tests.

GET /slow sleeps 100 ms before answering; /status/N answers with status N;
anything else answers 200 with a small body, or with the status given as
the third argument (a server that fails every request). Keep-alive
(HTTP/1.1) so that several requests share one connection.

Usage: http_server.py ADDRESS PORT [STATUS]
"""
import http.server
import sys
import time


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(0.1)
        status = EVERY_STATUS
        if self.path.startswith("/status/"):
            status = int(self.path.rsplit("/", 1)[1])
        body = b"hello from weft's test server\n"
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        body = b"created\n"
        self.send_response(201)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


EVERY_STATUS = 200

if __name__ == "__main__":
    addr, port = sys.argv[1], int(sys.argv[2])
    if len(sys.argv) > 3:
        EVERY_STATUS = int(sys.argv[3])
    http.server.ThreadingHTTPServer((addr, port), Handler).serve_forever()
