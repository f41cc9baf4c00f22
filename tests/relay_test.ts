/**
 * The shim's relay (c/relay.c through src/actions/proxy/relay.ts), in-process: two real
 * loopback connections, x to a and b to y; a and b are taken out of Deno's
 * hands and relayed, and the test talks through x and y.
 */
import assert from "node:assert/strict";
import { Shim } from "../ffi/shim.ts";
import { detachConn, relay, relayToLoopback } from "../src/actions/proxy/relay.ts";
import { connectedPair, readAtLeast, seesEnd, writeAll } from "./helpers/client.ts";

const shim = new Shim();
const enc = new TextEncoder();

/** x and y talk through a relay. */
async function relayed() {
  const [x, a] = await connectedPair();
  const [y, b] = await connectedPair();
  const ended = relay(shim, detachConn(shim, a), detachConn(shim, b));
  return { x, y, ended };
}

/** Byte i of a stream: a pattern that shows any loss, repeat or reorder. */
const patternByte = (i: number, seed: number) => (i * 7 + (i >> 16) + seed) & 0xff;

async function sendPattern(conn: Deno.Conn, total: number, seed: number): Promise<void> {
  const chunk = new Uint8Array(256 * 1024);
  for (let sent = 0; sent < total;) {
    const n = Math.min(chunk.length, total - sent);
    for (let i = 0; i < n; i++) chunk[i] = patternByte(sent + i, seed);
    await writeAll(conn, chunk.subarray(0, n));
    sent += n;
  }
}

/** Reads to the end of the stream; throws at the first byte out of pattern. */
async function receivePattern(conn: Deno.Conn, seed: number): Promise<number> {
  const buf = new Uint8Array(64 * 1024);
  let at = 0;
  for (;;) {
    const n = await conn.read(buf);
    if (n === null) return at;
    for (let i = 0; i < n; i++) {
      if (buf[i] !== patternByte(at + i, seed)) throw new Error(`byte ${at + i} is wrong`);
    }
    at += n;
  }
}

Deno.test("relay: both ways at once, in order, past a reader that waits (the relay holds, then goes on), and reports the bytes", async () => {
  const { x, y, ended } = await relayed();
  const down = 48 * 1024 * 1024, up = 8 * 1024 * 1024;
  // y starts reading late: by then every buffer on the way is full and
  // the relay holds what b did not take.
  const xSends = sendPattern(x, down, 1).then(() => x.closeWrite());
  const ySends = sendPattern(y, up, 2).then(() => y.closeWrite());
  const xReceives = receivePattern(x, 2);
  await new Promise((r) => setTimeout(r, 300));
  const yReceived = await receivePattern(y, 1);
  await Promise.all([xSends, ySends]);
  assert.equal(yReceived, down);
  assert.equal(await xReceives, up);
  const end = await ended;
  assert.deepEqual({ error: end.error, aToB: end.aToB, bToA: end.bToA }, {
    error: null,
    aToB: down,
    bToA: up,
  });
  x.close();
  y.close();
});

Deno.test("relay: a half-close goes through, and the other direction goes on", async () => {
  const { x, y, ended } = await relayed();
  await writeAll(x, enc.encode("last words"));
  await x.closeWrite();
  assert.equal(await readAtLeast(y, 10), "last words");
  assert.ok(await seesEnd(y), "y sees x's end");
  await writeAll(y, enc.encode("a reply after that"));
  assert.equal(await readAtLeast(x, 18), "a reply after that");
  y.close();
  assert.ok(await seesEnd(x), "y's end reaches x");
  assert.equal((await ended).error, null);
  x.close();
});

Deno.test("relay: a reset on one side ends both, with the reason", async () => {
  const { x, y, ended } = await relayed();
  await writeAll(y, enc.encode("never read"));
  await new Promise((r) => setTimeout(r, 100)); // in x's receive buffer
  x.close(); // with unread data: the kernel resets the connection
  // Deno's close half-closes first: a is in CLOSE_WAIT when the reset
  // comes, which Linux reports as EPIPE (ECONNRESET in other states).
  const end = await ended;
  assert.ok(end.error === "ECONNRESET" || end.error === "EPIPE", `ended by ${end.error}`);
  assert.ok(await seesEnd(y), "y's connection is closed");
  y.close();
});

Deno.test("relay: 300 relays opened and ended leave no fd behind", async () => {
  // Exact, not a count of the process's fds (Deno opens and closes its own
  // as it likes): the sockets the relay was given, by inode, must have no
  // fd left in this process once their relays ended.
  const inodeOf = (fd: number) => Deno.readLinkSync(`/proc/self/fd/${fd}`);
  const openInodes = () =>
    new Set([...Deno.readDirSync("/proc/self/fd")].map((e) => {
      try {
        return inodeOf(Number(e.name));
      } catch {
        return ""; // closed since the listing
      }
    }));
  const given: string[] = [];
  const one = async () => {
    const [x, a] = await connectedPair();
    const [y, b] = await connectedPair();
    const fdA = detachConn(shim, a), fdB = detachConn(shim, b);
    given.push(inodeOf(fdA), inodeOf(fdB));
    const ended = relay(shim, fdA, fdB);
    await writeAll(x, enc.encode("ping"));
    assert.equal(await readAtLeast(y, 4), "ping");
    x.close();
    y.close();
    return (await ended).error;
  };
  for (let round = 0; round < 10; round++) {
    const errors = await Promise.all(Array.from({ length: 30 }, one));
    // A close races the relay's copy: the end may come as a reset.
    for (const e of errors) assert.ok(e === null || e === "ECONNRESET" || e === "EPIPE", `${e}`);
  }
  assert.equal(given.length, 600);
  assert.ok(given.every((inode) => inode.startsWith("socket:[")), "the relay was given sockets");
  const open = openInodes();
  const left = given.filter((inode) => open.has(inode));
  assert.deepEqual(left, [], `${left.length} relayed sockets still open`);
});

Deno.test("relayToLoopback: the shim connects to the port; the server sees the reported local port; a refusal ends the relay", async () => {
  const server = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const [x, a] = await connectedPair();
  await writeAll(x, enc.encode("early bytes")); // sent before the connection to the server is made
  const bridge = relayToLoopback(shim, detachConn(shim, a), server.addr.port);
  const inside = await server.accept();
  assert.equal(inside.remoteAddr.port, bridge.localPort);
  assert.equal(await readAtLeast(inside, 11), "early bytes");
  await writeAll(inside, enc.encode("answer"));
  assert.equal(await readAtLeast(x, 6), "answer");
  inside.close();
  x.close();
  assert.equal((await bridge.ended).error, null);
  server.close();

  const [x2, a2] = await connectedPair();
  const refused = relayToLoopback(shim, detachConn(shim, a2), server.addr.port); // closed now
  // Refused; or reset, should a parallel test's listener take the port and
  // close it while the connection waits in its queue.
  assert.match(String((await refused.ended).error), /^(ECONNREFUSED|ECONNRESET)$/);
  assert.ok(await seesEnd(x2), "the client is closed");
  x2.close();
});
