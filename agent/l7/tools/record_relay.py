#!/usr/bin/env python3
"""Loopback relay that records a real client/server conversation as a weft-l7
fixture.

Usage: record_relay.py tcp|udp LISTEN_PORT SERVER_PORT OUT.bin [--count N]

It listens on 127.0.0.1:LISTEN_PORT, forwards to 127.0.0.1:SERVER_PORT, and
writes every recv() it makes, in the order it made them, as one record:
  1 byte  direction: b'>' client to server, b'<' server to client
  4 bytes big-endian length
  data
so the fixture keeps the real segmentation of reads. TCP: records the first
--count connections (default 1) into one file each (OUT.bin, OUT-2.bin...).
UDP: records datagrams until --count queries were answered.
Only loopback addresses are used.
"""
import select
import socket
import struct
import sys


def record(out, direction, data):
    out.write(direction + struct.pack(">I", len(data)) + data)
    out.flush()


def tcp(listen_port, server_port, path, count):
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", listen_port))
    ls.listen(1)
    for n in range(count):
        client, _ = ls.accept()
        server = socket.create_connection(("127.0.0.1", server_port))
        name = path if n == 0 else path.replace(".bin", f"-{n + 1}.bin")
        with open(name, "wb") as out:
            peers = {client: (server, b">"), server: (client, b"<")}
            open_ = {client, server}
            while open_:
                ready, _, _ = select.select(list(open_), [], [], 30)
                if not ready:
                    break
                for s in ready:
                    data = s.recv(65536)
                    other, direction = peers[s]
                    if not data:
                        open_.discard(s)
                        try:
                            other.shutdown(socket.SHUT_WR)
                        except OSError:
                            pass
                        continue
                    record(out, direction, data)
                    other.sendall(data)
        client.close()
        server.close()


def udp(listen_port, server_port, path, count):
    ls = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ls.bind(("127.0.0.1", listen_port))
    up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    up.connect(("127.0.0.1", server_port))
    client_addr = None
    answered = 0
    with open(path, "wb") as out:
        while answered < count:
            ready, _, _ = select.select([ls, up], [], [], 30)
            if not ready:
                break
            for s in ready:
                if s is ls:
                    data, client_addr = ls.recvfrom(65536)
                    record(out, b">", data)
                    up.send(data)
                else:
                    data = up.recv(65536)
                    record(out, b"<", data)
                    ls.sendto(data, client_addr)
                    answered += 1


if __name__ == "__main__":
    mode, lp, sp, path = sys.argv[1:5]
    count = int(sys.argv[6]) if len(sys.argv) > 6 and sys.argv[5] == "--count" else 1
    (tcp if mode == "tcp" else udp)(int(lp), int(sp), path, count)
