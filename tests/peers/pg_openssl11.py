"""A PostgreSQL client on OpenSSL 1.1.1, for the TLS plaintext test of
that version: psycopg2-binary 2.9.5, whose wheel bundles libpq and
OpenSSL 1.1.1 under auditwheel's names (psycopg2_binary.libs/
libssl-3a880ada.so.1.1). Run with the Python of the virtual environment
`cargo xtask setup` makes for it.

    pg_openssl11.py HOST PORT READY GO STATEMENT...

Imports psycopg2 (which maps the bundled libssl), prints the OpenSSL
version that libssl reports, creates the file READY, waits (60 s at most)
for the file GO, then connects with sslmode=require and runs each
statement in autocommit, printing per statement its row count or its
SQLSTATE, then `done`.
"""

import ctypes
import glob
import os
import sys
import time

import psycopg2


def openssl_version():
    libs = os.path.join(os.path.dirname(psycopg2.__file__), "..", "psycopg2_binary.libs")
    (lib,) = glob.glob(os.path.join(libs, "libssl-*.so.1.1"))
    ssl = ctypes.CDLL(lib)
    ssl.OpenSSL_version.restype = ctypes.c_char_p
    return ssl.OpenSSL_version(0).decode()


def main():
    host, port, ready, go = sys.argv[1:5]
    print(openssl_version(), flush=True)
    open(ready, "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            sys.exit("no go signal")
        time.sleep(0.05)
    conn = psycopg2.connect(
        host=host, port=int(port), user="postgres", dbname="postgres", sslmode="require"
    )
    conn.autocommit = True
    cur = conn.cursor()
    for statement in sys.argv[5:]:
        try:
            cur.execute(statement)
            print(cur.rowcount, flush=True)
        except psycopg2.Error as e:
            print(e.pgcode, flush=True)
    conn.close()
    print("done", flush=True)


if __name__ == "__main__":
    main()
