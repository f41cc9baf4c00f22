"""The bench's minimal receiver: the same echo as bench/echo_service.ts, in
Python with a thread per connection, reachable two ways (a TCP port, and
a Unix socket that takes handed-off connections: socket.recv_fds). It
shows what the daemon adds with a receiver that does nothing but recvmsg.

    python3 bench/echo_service.py TCP_PORT SOCKET_PATH
"""
import os
import socket
import sys
import threading


def echo(c):
    c.setblocking(True)  # a received fd is non-blocking (docs/design.md R6)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with c:
        while True:
            data = c.recv(65536)
            if not data:
                break
            c.sendall(data)


def serve_tcp(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(1024)
    while True:
        c, _ = s.accept()
        threading.Thread(target=echo, args=(c,), daemon=True).start()


def serve_channel(ch):
    # One record and its fd per message, as the daemon sends them.
    while True:
        data, fds, _, _ = socket.recv_fds(ch, 65536, 16)
        if not data and not fds:
            return
        for fd in fds:
            threading.Thread(target=echo, args=(socket.socket(fileno=fd),), daemon=True).start()


def main():
    port, path = int(sys.argv[1]), sys.argv[2]
    if os.path.exists(path):
        os.unlink(path)
    u = socket.socket(socket.AF_UNIX)
    u.bind(path)
    u.listen(16)
    threading.Thread(target=serve_tcp, args=(port,), daemon=True).start()
    print("ready", flush=True)
    while True:
        ch, _ = u.accept()
        threading.Thread(target=serve_channel, args=(ch,), daemon=True).start()


main()
