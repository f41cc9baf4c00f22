#!/usr/bin/env python3
"""A protocol service written in another language than portmux: it takes
handed-off connections with socket.recv_fds (docs/handoff.md) and answers
every chunk a client sends with b"ECHO:" + chunk. Each record received is
printed as one JSON line, so a test can check it.

    python3 recv_fds_service.py SOCKET_PATH
"""
import json
import os
import socket
import sys
import threading

path = sys.argv[1]
if os.path.exists(path):
    os.unlink(path)
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
server.listen(128)
print(json.dumps({"event": "ready"}), flush=True)


def serve_client(fd):
    client = socket.socket(fileno=fd)
    client.setblocking(True)  # a received fd keeps the sender's O_NONBLOCK
    with client:
        while True:
            data = client.recv(65536)
            if not data:
                break
            client.sendall(b"ECHO:" + data)


def serve_channel(channel):
    pending, fds = b"", []
    with channel:
        while True:
            data, new_fds, _flags, _addr = socket.recv_fds(channel, 65536, 16)
            fds.extend(new_fds)
            if not data:
                break
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                record = json.loads(line)
                fd = fds.pop(0)  # the i-th fd belongs to the i-th record
                print(json.dumps({"event": "record", "record": record}), flush=True)
                threading.Thread(target=serve_client, args=(fd,), daemon=True).start()
    for fd in fds:
        os.close(fd)


while True:
    channel, _ = server.accept()
    threading.Thread(target=serve_channel, args=(channel,), daemon=True).start()
