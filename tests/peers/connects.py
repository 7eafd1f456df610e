"""Opens COUNT TCP connections to HOST:PORT one after another, each with
a TIMEOUT in seconds, and prints one JSON line per attempt:
{"errno": 0 on success, "ms": time the connect took}.

usage: connects.py HOST PORT COUNT TIMEOUT
"""

import json
import socket
import sys
import time

host, port, count, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
for _ in range(count):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    start = time.monotonic()
    try:
        s.connect((host, port))
        errno = 0
    except socket.timeout:
        errno = -1
    except OSError as e:
        errno = e.errno
    ms = (time.monotonic() - start) * 1000
    s.close()
    print(json.dumps({"errno": errno, "ms": round(ms, 3)}), flush=True)
