import socket, sys, time
port = int(sys.argv[1]); mode = sys.argv[2]
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
h = "Host: 127.0.0.1:18081\r\nUser-Agent: weft-fixture\r\n"
if mode == "pipelined":
    s.sendall(("GET /echo HTTP/1.1\r\n" + h + "\r\n"
               "HEAD /big.txt HTTP/1.1\r\n" + h + "\r\n"
               "GET /missing?session=s3cr3t HTTP/1.1\r\n" + h + "Connection: close\r\n\r\n").encode())
elif mode == "split":
    parts = ["GET /users/123/orders/9f1c2b3a4d5e6f708192a3b4c5d6e7f8?page=2 HT", "TP/1.1\r\nHost: 127.0.0.1:18081\r\nAuthorization: Bearer abc\r\n", "Accept: */*\r\nConnection: close\r\n\r\n"]
    for p in parts:
        s.sendall(p.encode()); time.sleep(0.05)
elif mode == "head-then-get":
    s.sendall(("HEAD /big.txt HTTP/1.1\r\n" + h + "\r\n").encode()); time.sleep(0.2)
    s.sendall(("GET /echo HTTP/1.1\r\n" + h + "Connection: close\r\n\r\n").encode())
while s.recv(65536):
    pass
