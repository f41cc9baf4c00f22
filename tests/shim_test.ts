/**
 * The C shim and the Deno internals it relies on, in-process. These pin
 * down docs/design.md R1 and R2: if a Deno upgrade changes them, these fail
 * first and say which fact broke.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { Shim, ShimError } from "../ffi/shim.ts";
import { connFd, detach, FD_SYMBOL_DESCRIPTION, internalFd } from "../src/accept/conn_fd.ts";
import { connectedPair, readAtLeast, seesEnd, writeAll } from "./helpers/client.ts";
import { runToEnd } from "./helpers/daemon.ts";

const shim = new Shim();
const ROOT_DIR = new URL("../", import.meta.url).pathname;
const enc = new TextEncoder();

/** A connected pair on loopback: our client end and the accepted conn. */
async function pair(): Promise<{ client: Deno.TcpConn; conn: Deno.TcpConn; close(): void }> {
  const [client, conn] = await connectedPair();
  return {
    client,
    conn,
    close() {
      for (const c of [client, conn]) {
        try {
          c.close();
        } catch { /* closed by the test */ }
      }
    },
  };
}

Deno.test("Deno exposes the fd of an accepted TcpConn under the symbol docs/design.md R1 names", async () => {
  const p = await pair();
  try {
    const fd = internalFd(p.conn);
    assert.ok(
      fd !== undefined,
      `Deno ${Deno.version.deno} no longer has an own symbol "${FD_SYMBOL_DESCRIPTION}" on ` +
        `accepted connections: docs/design.md R1 broke; only the slow fallback lookup is left`,
    );
    assert.ok(
      shim.fds.verify(fd, p.conn.localAddr, p.conn.remoteAddr),
      `the "${FD_SYMBOL_DESCRIPTION}" value ${fd} is not the connection's socket`,
    );
    assert.deepEqual(connFd(shim, p.conn), { fd, via: "symbol" });
  } finally {
    p.close();
  }
});

Deno.test("the fallback lookup by 4-tuple finds the same fd as the symbol", async () => {
  const p = await pair();
  const other = await pair(); // a second connection must not be confused with it
  try {
    assert.equal(shim.fds.find(p.conn.localAddr, p.conn.remoteAddr), internalFd(p.conn));
    assert.equal(
      shim.fds.find(other.conn.localAddr, other.conn.remoteAddr),
      internalFd(other.conn),
    );
  } finally {
    p.close();
    other.close();
  }
});

Deno.test("fds.verify refuses another connection's fd and the client side's fd", async () => {
  const p = await pair();
  const other = await pair();
  try {
    assert.equal(
      shim.fds.verify(internalFd(other.conn)!, p.conn.localAddr, p.conn.remoteAddr),
      false,
    );
    // The client end has the same addresses, swapped: it must not pass.
    const clientFd = shim.fds.find(p.client.localAddr, p.client.remoteAddr);
    assert.equal(shim.fds.verify(clientFd, p.conn.localAddr, p.conn.remoteAddr), false);
    assert.throws(
      () => shim.fds.find({ hostname: "127.0.0.1", port: 1 }, { hostname: "127.0.0.1", port: 2 }),
      (e) => e instanceof ShimError && e.code === "ENOENT",
    );
  } finally {
    p.close();
    other.close();
  }
});

Deno.test("peek shows the client's bytes without consuming them, and null before any", async () => {
  const p = await pair();
  try {
    const fd = internalFd(p.conn)!;
    const buf = new Uint8Array(64);
    assert.equal(shim.fds.peek(fd, buf), null);
    await writeAll(p.client, enc.encode("PRIV-peeked"));
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(new TextDecoder().decode(shim.fds.peek(fd, buf)!), "PRIV-peeked");
    assert.equal(new TextDecoder().decode(shim.fds.peek(fd, buf)!), "PRIV-peeked");
    assert.equal(await readAtLeast(p.conn, 11), "PRIV-peeked"); // still all there
    p.client.closeWrite();
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(shim.fds.peek(fd, buf)?.length, 0); // end of stream
  } finally {
    p.close();
  }
});

Deno.test("closing a conn whose fd was dup'ed still sends FIN (docs/design.md R2: why release exists)", async () => {
  const p = await pair();
  const fd = internalFd(p.conn)!;
  const copy = shim.fds.dup(fd);
  try {
    p.conn.close(); // no release: the runtime's shutdown(SHUT_WR) reaches the socket
    assert.ok(await seesEnd(p.client, 2000), "expected the client to see EOF");
  } finally {
    shim.fds.close(copy);
    p.close();
  }
});

Deno.test("detach (dup + release + close) leaves the connection alive in the new owner's hands", async () => {
  const p = await pair();
  const owned = detach(shim, p.conn, internalFd(p.conn)!);
  try {
    shim.fds.setNonBlocking(owned, false);
    await writeAll(p.client, enc.encode("to the new owner"));
    const buf = new Uint8Array(64);
    const n = await shim.fds.read(owned, buf);
    assert.equal(new TextDecoder().decode(buf.subarray(0, n)), "to the new owner");
    await shim.fds.write(owned, enc.encode("still here"));
    assert.equal(await readAtLeast(p.client, 10), "still here");
  } finally {
    shim.fds.close(owned);
  }
  assert.ok(await seesEnd(p.client), "closing the owned fd ends the connection");
  p.close();
});

Deno.test("shim errors are named: missing socket, refused, foreign listener, unreadable library", async () => {
  const dir = await Deno.makeTempDir();
  const anyone = { uid: -1, gid: -1, pid: -1 };
  assert.throws(
    () => shim.channels.open(join(dir, "none.sock"), anyone),
    (e) => e instanceof ShimError && e.code === "ENOENT" && e.message === "channel_open: ENOENT",
  );
  // A socket file nobody listens on any more.
  shim.fds.close(shim.channels.listen(join(dir, "x.sock")));
  assert.throws(
    () => shim.channels.open(join(dir, "x.sock"), anyone),
    (e) => e instanceof ShimError && e.code === "ECONNREFUSED",
  );
  // A listener of another uid than the one expected gets no channel.
  const listener = shim.channels.listen(join(dir, "y.sock"));
  assert.throws(
    () => shim.channels.open(join(dir, "y.sock"), { ...anyone, uid: (Deno.uid() ?? 0) + 1 }),
    (e) => e instanceof ShimError && e.code === "EPERM",
  );
  shim.fds.close(listener);
  assert.throws(() => new Shim(join(dir, "missing.so")), /cannot load the portmux shim/);
});

Deno.test("fds sent on a channel arrive with their records, in order, through channels.recv", async () => {
  const dir = await Deno.makeTempDir();
  const path = join(dir, "svc.sock");
  const listener = shim.channels.listen(path);
  const pairs = [await pair(), await pair(), await pair()];
  try {
    const accepting = shim.channels.accept(listener);
    const me = { uid: Deno.uid() ?? -1, gid: Deno.gid() ?? -1, pid: -1 };
    const chan = shim.channels.open(path, me);
    const channel = await accepting;
    assert.equal(shim.channels.peerCred(channel).uid, Deno.uid());
    assert.equal(shim.channels.peerCred(channel).pid, Deno.pid);
    for (const [i, p] of pairs.entries()) {
      const record = enc.encode(`record ${i}\n`);
      assert.equal(shim.channels.send(chan, internalFd(p.conn)!, record), record.length);
    }
    const buf = new Uint8Array(64);
    const fds = new Int32Array(8);
    const received: [string, number[]][] = [];
    while (received.length < 3) {
      if (!(await shim.fds.waitReadable(channel, 1000))) break;
      const got = shim.channels.recv(channel, buf, fds);
      if (got) received.push([new TextDecoder().decode(buf.subarray(0, got.count)), got.fds]);
    }
    // One recvmsg never returns two records' fds: each comes with its record.
    assert.deepEqual(received.map(([text]) => text), ["record 0\n", "record 1\n", "record 2\n"]);
    for (const [i, [, got]] of received.entries()) {
      assert.equal(got.length, 1);
      assert.ok(shim.fds.verify(got[0]!, pairs[i]!.conn.localAddr, pairs[i]!.conn.remoteAddr));
      shim.fds.close(got[0]!);
    }
    assert.equal(shim.channels.recv(channel, buf, fds), null); // nothing more: no wait
    shim.channels.close(chan, false);
    assert.equal(shim.channels.recv(channel, buf, fds)?.count, 0); // end of stream
    shim.fds.close(channel);
  } finally {
    shim.fds.close(listener);
    pairs.forEach((p) => p.close());
  }
});

Deno.test("listeners.acceptBatch takes every waiting connection of a listener, with both addresses, IPv4 and IPv6", async () => {
  for (const hostname of ["127.0.0.1", "::1"]) {
    const listener = Deno.listen({ hostname, port: 0 });
    try {
      const lfd = shim.listeners.find(listener.addr);
      assert.deepEqual(
        shim.listeners.acceptBatch(lfd, 8),
        [],
        "nothing waiting: nothing taken, no wait",
      );
      const clients = [];
      for (let i = 0; i < 3; i++) {
        clients.push(await Deno.connect({ hostname, port: listener.addr.port }));
      }
      const got = shim.listeners.acceptBatch(lfd, 2); // at most 2, then the third
      got.push(...shim.listeners.acceptBatch(lfd, 8));
      assert.equal(got.length, 3);
      for (const [i, a] of got.entries()) {
        assert.deepEqual(a.remote, { hostname, port: clients[i]!.localAddr.port });
        assert.deepEqual(a.local, { hostname, port: listener.addr.port });
        await writeAll(clients[i]!, new TextEncoder().encode(`hi ${i}`));
        const buf = new Uint8Array(16);
        await new Promise((r) => setTimeout(r, 20));
        assert.equal(
          new TextDecoder().decode(shim.fds.peek(a.fd, buf) ?? new Uint8Array()),
          `hi ${i}`,
        );
        shim.fds.close(a.fd);
        assert.ok(await seesEnd(clients[i]!), "closing the fd ends the client's connection");
      }
    } finally {
      listener.close();
    }
  }
  assert.throws(() => shim.listeners.find({ hostname: "127.0.0.1", port: 1 }), /ENOENT/);
});

/** Runs a fixture with the shim preloaded; returns the JSON it printed. */
async function runPreloaded(fixture: string): Promise<Record<string, unknown>> {
  const r = await runToEnd(Deno.execPath(), ["run", "-A", join(ROOT_DIR, fixture)], {
    LD_PRELOAD: shim.path,
  });
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout);
}

Deno.test("injected sockets wake the listener through a doorbell (an eventfd under the listener's epoll token), not a loopback connection", async () => {
  const got = await runPreloaded("tests/fixtures/inject_doorbell.ts");
  assert.equal(got.interposer, true);
  assert.equal(got.doorbells, 1, "registering adds one eventfd");
  assert.equal(got.afterUnregister, 0, "unregistering closes it");
  assert.deepEqual(
    got.acceptedPorts,
    got.clientPorts,
    "each injected socket is accepted, in order",
  );
  assert.equal(got.reused, true, "the closed listener's number went to a new socket");
  assert.equal(got.stalePush, "ENOENT", "nothing is queued for a listener that is gone");
  assert.equal(got.pushToNewer, "queued", "a late unregister leaves a newer registration alone");
});

Deno.test("with an HTTPS site, the runtime's own accept takes the public listener's connections (no thread between); the lane steps in when nothing accepts, and takes the listener back when the site goes", async () => {
  type Watch = { set: number; data: string }[];
  type Seen = { client: number; accepted: number; events?: { outcome: string; port: number }[] };
  const got = await runPreloaded("tests/fixtures/runtime_accept.ts") as unknown as {
    placedWithSite: { public: Watch; site: Watch };
    placedAfterSiteGone: Watch;
    placedWithoutSite: Watch;
    first: Seen;
    second: Seen;
    third: Seen;
  };
  const { placedWithSite, placedAfterSiteGone, placedWithoutSite, first, second, third } = got;
  assert.ok(placedWithSite.site.length > 0, "the site's listener is in the runtime's set");
  assert.deepEqual(
    placedWithSite.public,
    placedWithSite.site,
    "the public listener: only there, under the site's token",
  );
  assert.equal(first.accepted, first.client);
  assert.deepEqual(first.events, [{ outcome: "https", port: first.client }]);
  assert.equal(
    second.accepted,
    second.client,
    "the site gets the connection the lane accepted for it",
  );
  assert.deepEqual(second.events, [{ outcome: "https", port: second.client }]);
  const runtimeSets = new Set(placedWithSite.site.map((w) => w.set));
  for (const placed of [placedAfterSiteGone, placedWithoutSite]) {
    assert.equal(placed.length, 1);
    assert.ok(!runtimeSets.has(placed[0]!.set), "back in the lane's own set");
  }
  assert.equal(third.accepted, third.client, "served from there");
});

Deno.test("listeners.refuseNew keeps new clients out of a listening socket while the queued ones can still be taken (a stop loses none it accepted)", async () => {
  const fd = shim.listeners.open("127.0.0.1", 0);
  const port = shim.listeners.address(fd)!.port;
  try {
    const queued = await Deno.connect({ hostname: "127.0.0.1", port }); // handshake done
    shim.listeners.refuseNew(fd);
    // A new client's SYN goes unanswered: its connect does not complete.
    const late = Deno.connect({ hostname: "127.0.0.1", port });
    const outcome = await Promise.race([
      late.then((c) => (c.close(), "connected"), () => "failed"),
      new Promise((r) => setTimeout(() => r("waiting"), 500)),
    ]);
    assert.equal(outcome, "waiting");
    // The one queued before is still there to take.
    const taken = shim.listeners.acceptBatch(fd, 8);
    assert.equal(taken.length, 1);
    assert.equal(taken[0]!.remote.port, queued.localAddr.port);
    shim.fds.close(taken[0]!.fd);
    queued.close();
    shim.fds.close(fd);
    // Closed, the port refuses the late client when its SYN comes again.
    assert.equal(await late.then((c) => (c.close(), "connected"), () => "refused"), "refused");
  } catch (e) {
    try {
      shim.fds.close(fd);
    } catch { /* closed */ }
    throw e;
  }
});
