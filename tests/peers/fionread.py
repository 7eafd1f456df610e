"""What FIONREAD answers on a client socket that connected while weft's
traceparent injection runs (the socket is in its socket map): a byte is
sent to it, and once it can be read, FIONREAD is asked.

Prints one JSON object: {"waiting": N} (N from FIONREAD, 1 when right).
"""
import fcntl
import json
import select
import socket
import struct
import termios

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1)
client = socket.create_connection(listener.getsockname(), timeout=5)
server, _ = listener.accept()
server.sendall(b"x")
readable, _, _ = select.select([client], [], [], 5)
assert readable, "the byte did not arrive"
raw = fcntl.ioctl(client.fileno(), termios.FIONREAD, b"\0\0\0\0")
print(json.dumps({"waiting": struct.unpack("i", raw)[0]}))
