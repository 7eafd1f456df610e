"""A real TLS server and client for weft's TLS metadata tests (Python's ssl,
on the system's OpenSSL).

server ADDRESS PORT CERT KEY [CLIENT_CA]
    Serves TLS 1.2 and 1.3 with ALPN h2 and http/1.1; on each connection,
    after the handshake, reads one message and answers "pong". Failed
    handshakes (a client refusing the certificate) are ignored. With
    CLIENT_CA, mutual TLS: clients must present a certificate it signed.

client ADDRESS PORT CA SNI MAX_VERSION ALPN COUNT [CERT KEY]
    Makes COUNT connections one after the other, each: the handshake with
    server name SNI, verifying against CA, at most MAX_VERSION (1.2 or
    1.3), offering the comma-separated ALPN list, presenting CERT if
    given; then "ping", the answer, and close. Prints one line per
    connection: "ok ALPN" or "failed WHY".
"""
import socket
import ssl
import sys
import threading

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def serve(address, port, cert, key, client_ca=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    listener = socket.create_server((address, port))

    def one(conn):
        conn.settimeout(10)
        tls = ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        try:
            tls.do_handshake()
        except (ssl.SSLError, OSError):
            refuse(tls)
            return
        try:
            if tls.recv(1024):
                tls.sendall(b"pong")
        except (ssl.SSLError, OSError):
            pass
        finally:
            tls.close()

    def refuse(tls):
        # The alert is sent: end the stream after it (FIN) and read what
        # the client still sends (a TLS 1.3 client sends its data before
        # it reads the refusal) until it closes. Closed with those bytes
        # unread, the socket would send a reset instead, which can
        # overtake the alert, and the client would see the connection
        # fail without the reason.
        try:
            socket.socket.shutdown(tls, socket.SHUT_WR)
            while socket.socket.recv(tls, 4096):
                pass
        except OSError:
            pass
        finally:
            tls.close()

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=one, args=(conn,), daemon=True).start()


def connect(address, port, ca, sni, max_version, alpn, count, cert=None, key=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    ctx.maximum_version = VERSIONS[max_version]
    ctx.set_alpn_protocols(alpn.split(","))
    for _ in range(int(count)):
        conn = socket.create_connection((address, int(port)), timeout=10)
        try:
            with ctx.wrap_socket(conn, server_hostname=sni) as tls:
                tls.sendall(b"ping")
                tls.recv(1024)
                print("ok", tls.selected_alpn_protocol(), flush=True)
        except ssl.SSLError as e:
            conn.close()
            print("failed", e.reason, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(sys.argv[2], int(sys.argv[3]), *sys.argv[4:7])
    else:
        connect(*sys.argv[2:11])
