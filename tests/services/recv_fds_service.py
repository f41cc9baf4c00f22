#!/usr/bin/env python3
"""A protocol service written in another language than portmux: it takes
handed-off connections with socket.recv_fds (docs/handoff.md) and answers
every chunk a client sends with b"ECHO:" + chunk, and closes the client
after a chunk that ends in b"BYE". Each record received is
printed as one JSON line, so a test can check it.

    python3 recv_fds_service.py SOCKET_PATH [--deaf] [--listen-as-uid UID] [--slow-reader MS]

--slow-reader MS reads its channels 64 bytes at a time, MS ms apart: a
backlog stays queued in the channel for a while.
"""
import json
import os
import socket
import sys
import threading
import time

args = sys.argv[1:]
path = args[0]
deaf = "--deaf" in args  # accepts channels but never reads them
as_uid = int(args[args.index("--listen-as-uid") + 1]) if "--listen-as-uid" in args else None
slow_ms = int(args[args.index("--slow-reader") + 1]) if "--slow-reader" in args else None
if os.path.exists(path):
    os.unlink(path)
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
if as_uid is not None:
    # Bound as root, listening as another user: SO_PEERCRED reports the
    # credentials of listen()'s caller, like a foreign process on the path.
    os.chmod(path, 0o666)
    os.setgid(as_uid)
    os.setuid(as_uid)
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
            if data.endswith(b"BYE"):
                break


def serve_channel(channel):
    pending, fds = b"", []
    with channel:
        while True:
            if slow_ms is not None:
                time.sleep(slow_ms / 1000)
            data, new_fds, _flags, _addr = socket.recv_fds(channel, 64 if slow_ms else 65536, 16)
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


channels = []
while True:
    channel, _ = server.accept()
    if deaf:
        channels.append(channel)  # held open, never read
        continue
    threading.Thread(target=serve_channel, args=(channel,), daemon=True).start()
