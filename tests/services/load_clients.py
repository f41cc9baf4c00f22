#!/usr/bin/env python3
"""Abusive and plain load against portmux, from a process of its own.

  load_clients.py hold PORT SILENT DRIP
      Opens SILENT connections that send nothing and DRIP connections that
      send a TLS record header declaring a 512-byte hello, one byte per
      second (slowloris against SNI routing). Prints {"event":"held"} once
      all are open, then {"event":"ended",...} when the server has closed
      every one (or 60 s passed): how many it closed, and the longest a
      connection was held.

  load_clients.py echo PORT COUNT CONCURRENCY [REPLY_PREFIX [TIMEOUT_S]]
      COUNT connections, CONCURRENCY at a time, each sending "PRIV" and a
      unique payload and checking the reply byte for byte. Prints
      {"event":"echoed","ok":...,"bad":...,"errors":...}.

  load_clients.py churn PORT COUNT CONCURRENCY SEED
      Opens COUNT connections, CONCURRENCY at a time, each sending a random
      part of a hello or a PRIV prefix (or nothing) and then resetting (RST),
      closing or half-closing at a random moment of the preread. Prints
      {"event":"churned","count":...}.
"""
import json
import random
import resource
import selectors
import socket
import struct
import sys
import time

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def out(**kw):
    print(json.dumps(kw), flush=True)


def connect(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


HELLO_START = bytes([0x16, 0x03, 0x01, 0x02, 0x04, 0x01, 0x00, 0x02, 0x00]) + bytes(600)


def hold(port, silent, drip):
    sel = selectors.DefaultSelector()
    opened = {}
    drips = []
    refused = 0
    for i in range(silent + drip):
        try:
            s = connect(port)
        except OSError:  # the server stopped accepting: count it, go on
            refused += 1
            continue
        s.setblocking(False)
        opened[s] = time.monotonic()
        sel.register(s, selectors.EVENT_READ)
        if i >= silent:
            drips.append([s, 0])
    out(event="held", silent=silent, drip=drip, refused=refused)
    closed, longest = 0, 0.0
    next_drip = time.monotonic()
    end = time.monotonic() + 60
    while opened and time.monotonic() < end:
        if time.monotonic() >= next_drip:
            for d in drips:
                s, at = d
                if s in opened:
                    try:
                        s.send(HELLO_START[at:at + 1])
                        d[1] += 1
                    except OSError:
                        pass
            next_drip += 1.0
        for key, _ in sel.select(timeout=0.1):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:  # the server closed (FIN or RST)
                longest = max(longest, time.monotonic() - opened.pop(s))
                closed += 1
                sel.unregister(s)
                s.close()
    out(event="ended", closed_by_server=closed, still_open=len(opened), longest_s=round(longest, 2))


def churn(port, count, concurrency, seed):
    rnd = random.Random(seed)
    payloads = [b"", HELLO_START[:rnd.randint(1, 40)], b"PRI", b"PRIV-partial", b"GET / HT", bytes(rnd.randrange(256) for _ in range(20))]
    done = 0
    live = []
    while done < count or live:
        while len(live) < concurrency and done + len(live) < count:
            try:
                s = connect(port)
            except OSError:
                time.sleep(0.01)
                continue
            payload = rnd.choice(payloads)
            if payload:
                s.send(payload[:rnd.randint(1, len(payload))])
            live.append((s, time.monotonic() + rnd.random() * 0.03, rnd.randrange(3)))
        now = time.monotonic()
        keep = []
        for s, when, how in live:
            if now < when:
                keep.append((s, when, how))
                continue
            if how == 0:  # reset
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif how == 1:  # half-close first
                try:
                    s.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            s.close()
            done += 1
        live = keep
        time.sleep(0.001)
    out(event="churned", count=done)


def echo(port, count, concurrency, reply_prefix, timeout):
    """count connections, concurrency at a time, each sending PRIV and a
    unique payload and checking that the reply is reply_prefix + payload,
    byte for byte."""
    import threading
    lock = threading.Lock()
    state = {"next": 0, "ok": 0, "bad": 0, "errors": 0, "first_error": ""}
    prefix = reply_prefix.encode()

    def worker():
        while True:
            with lock:
                i = state["next"]
                if i >= count:
                    return
                state["next"] += 1
            payload = b"PRIV %08d " % i + random.randbytes(40).hex().encode() + b"\n"
            want = prefix + payload
            try:
                s = connect(port)
                s.settimeout(timeout)
                s.sendall(payload)
                got = b""
                while len(got) < len(want):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += chunk
                s.close()
                with lock:
                    state["ok" if got == want else "bad"] += 1
            except OSError as e:
                with lock:
                    state["errors"] += 1
                    state["first_error"] = state["first_error"] or repr(e)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out(event="echoed", count=count, ok=state["ok"], bad=state["bad"], errors=state["errors"],
        first_error=state["first_error"])


if __name__ == "__main__":
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "hold":
        hold(port, int(sys.argv[3]), int(sys.argv[4]))
    elif mode == "churn":
        churn(port, int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    elif mode == "echo":
        echo(port, int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] if len(sys.argv) > 5 else "",
             float(sys.argv[6]) if len(sys.argv) > 6 else 20.0)
