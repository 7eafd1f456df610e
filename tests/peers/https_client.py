"""An HTTPS client for weft's TLS plaintext tests: Python's http.client on
Python's ssl (the system's OpenSSL), one keep-alive connection.

Usage: https_client.py ADDRESS PORT CA SNI PATH...
    Connects to ADDRESS:PORT with server name SNI, verifying against CA,
    sends GET PATH for each PATH in order on that one connection, and
    prints each response's status on a line of its own.
"""
import http.client
import socket
import ssl
import sys


def main(address, port, ca, sni, paths):
    ctx = ssl.create_default_context(cafile=ca)
    raw = socket.create_connection((address, int(port)), timeout=10)
    conn = http.client.HTTPSConnection(sni, int(port), context=ctx, timeout=10)
    # The connection goes to the lab's address; the certificate names SNI.
    conn.sock = ctx.wrap_socket(raw, server_hostname=sni)
    for path in paths:
        conn.request("GET", path, headers={"Host": sni})
        response = conn.getresponse()
        response.read()
        print(response.status, flush=True)
    conn.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
