#!/usr/bin/env python3
"""KV1, a line-based key-value service that receives its clients from
portmux (docs/handoff.md). Standard library only, Python 3.9+.

    python3 kv.py SOCKET_PATH [--sender-uid UID]

Any number of channels at once, a thread per channel and per client (a
slow client holds only its own thread). A channel is taken only from a
process of our own uid or root (--sender-uid: that uid only), checked with
SO_PEERCRED.
"""
import array
import collections
import json
import os
import signal
import socket
import stat
import struct
import sys
import threading
import time

MAX_FDS = 16  # room for fds in each read (the contract needs one)
MAX_RECORD = 64 * 1024  # a longer "record" is not portmux's
MAX_LINE = 4096  # a client's line, its newline included

store = {}  # one store for the whole process
store_lock = threading.Lock()


def log(message):
    sys.stderr.write(f"kv: {message}\n")  # one write: lines from threads do not mix
    sys.stderr.flush()


def answer(line, who):
    """The reply to one command line (bytes, without its newline)."""
    command, _, rest = line.partition(b" ")
    if command == b"SET":
        key, space, value = rest.partition(b" ")
        if key and space:
            with store_lock:
                store[key] = value
            return b"OK"
    elif command == b"GET":
        if rest and b" " not in rest:
            with store_lock:
                return store.get(rest, b"NOTFOUND")
    elif line == b"WHO":
        return who
    return b"ERR bad command"


def serve_client(client, who):
    """One client, from its very first byte: portmux only peeked."""
    client.setblocking(True)  # it arrives non-blocking
    with client, client.makefile("rb") as reader:
        greeted = False
        while True:
            try:
                line = reader.readline(MAX_LINE)
            except OSError:
                return  # reset by the client
            if not line.endswith(b"\n"):
                if len(line) == MAX_LINE:
                    reply(client, b"ERR line too long")
                return  # the client is done (or sent too long a line)
            line = line[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]  # a CRLF line, as nc -C or telnet send
            if not greeted:
                if line != b"KV1":
                    reply(client, b"ERR expected KV1")
                    return
                greeted = True
                continue
            if not reply(client, answer(line, who)):
                return


def reply(client, text):
    try:
        client.sendall(text + b"\n")
        return True
    except OSError:
        return False  # the client is gone


def take(line, fd):
    """One record and its fd (None: the fd was lost)."""
    if fd is None:
        log("a record whose fd was lost (MSG_CTRUNC): skipped")
        return
    try:
        record = json.loads(line)
        if record["v"] != 1:
            raise ValueError(f"version {record['v']}")
        who = f"{record['client']['address']} {int(record['client']['port'])}"
    except (ValueError, KeyError, TypeError) as e:
        log(f"not a portmux record ({e}): its client is closed")
        os.close(fd)
        return
    log(f"client {who}")
    try:
        client = socket.socket(fileno=fd)
    except OSError as e:  # not a socket after all
        log(f"client {who} dropped: {e}")
        os.close(fd)
        return
    try:
        threading.Thread(target=serve_client, args=(client, who.encode()), daemon=True).start()
    except RuntimeError as e:  # no thread to spare
        log(f"client {who} dropped: {e}")
        client.close()


def serve_channel(channel):
    """Reads records and fds until portmux closes the channel."""
    pending = b""
    fds = collections.deque()  # the fds of records not complete yet; None: lost
    control = socket.CMSG_SPACE(MAX_FDS * 4)
    try:
        while True:
            data, ancillary, flags, _ = channel.recvmsg(65536, control, socket.MSG_CMSG_CLOEXEC)
            got = array.array("i")
            for level, kind, fd_bytes in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    got.frombytes(fd_bytes[: len(fd_bytes) - len(fd_bytes) % got.itemsize])
            if flags & socket.MSG_CTRUNC and not got:
                fds.append(None)  # the kernel closed the fd of the record starting here
            fds.extend(got)
            if not data:
                break  # portmux closed the channel
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if fds:
                    take(line, fds.popleft())  # the i-th fd is the i-th record's
                else:
                    log("a record came without an fd: skipped")
            if len(pending) > MAX_RECORD:
                log("a record longer than 64 KiB: closing the channel")
                break
    except OSError as e:
        log(f"channel: {e}")
    finally:
        channel.close()
        for fd in fds:
            if fd is not None:
                os.close(fd)  # a record cut short: its client is closed


def listen(path):
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
                sys.exit(f"kv: {path}: another service is receiving there")
            except ConnectionRefusedError:
                os.unlink(path)  # a stale socket file: nobody answers on it
            finally:
                probe.close()
    except FileNotFoundError:
        pass
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(128)
    return server


def main():
    args = sys.argv[1:]
    if len(args) == 1 and not args[0].startswith("-"):
        senders = {os.getuid(), 0}
    elif len(args) == 3 and args[1] == "--sender-uid" and args[2].isdigit():
        senders = {int(args[2])}
    else:
        print("usage: kv.py SOCKET_PATH [--sender-uid UID]", file=sys.stderr)
        sys.exit(2)
    path = args[0]
    server = listen(path)
    ours = os.lstat(path).st_ino
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    log(f"listening on {path}")
    try:
        while True:
            try:
                channel, _ = server.accept()
            except OSError as e:  # out of fds, say: the channel waits in the backlog
                log(f"accept: {e}")
                time.sleep(0.1)
                continue
            creds = channel.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, _gid = struct.unpack("3i", creds)
            if uid not in senders:
                log(f"refused a channel from uid {uid} (pid {pid})")
                channel.close()
                continue
            threading.Thread(target=serve_channel, args=(channel,), daemon=True).start()
    finally:
        server.close()
        try:
            if os.lstat(path).st_ino == ours:
                os.unlink(path)
        except FileNotFoundError:
            pass


if __name__ == "__main__":
    main()
