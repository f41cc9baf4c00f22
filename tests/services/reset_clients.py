"""Clients that reset after their ClientHello: opens COUNT connections to
127.0.0.1:PORT, sends each the hello in HELLO_FILE (whole, or with "split"
its first 10 bytes and the rest 50 ms later), then closes them all with
SO_LINGER {1, 0}, which sends a reset instead of a FIN."""
import socket
import struct
import sys
import time

port, count, mode, hello_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
hello = open(hello_file, "rb").read()
socks = []
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    socks.append(s)
first = hello[:10] if mode == "split" else hello
for s in socks:
    s.sendall(first)
if mode == "split":
    time.sleep(0.05)
    for s in socks:
        s.sendall(hello[10:])
for s in socks:
    s.close()
print(count)
