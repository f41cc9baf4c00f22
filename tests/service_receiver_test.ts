/**
 * The receiving SDK with the shim preloaded (c/handoff_receiver.c): the
 * service's own accept takes handed-off clients. Here this test is the
 * sender, so that it can split, merge, spoil and cut records as no daemon
 * would; tests/fixtures/receiver_service.ts is the service.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { Shim, type ShimError, shimPath } from "../ffi/shim.ts";
import { detach, internalFd } from "../src/accept/conn_fd.ts";
import { encodeRecord } from "../src/actions/handoff/record.ts";
import { connectedPair, enc, readAtLeast, seesEnd, writeAll } from "./helpers/client.ts";
import { $ } from "./helpers/daemon.ts";
import { readLines } from "./helpers/lines.ts";

const shim = new Shim();
const RECEIVER = new URL("./fixtures/receiver_service.ts", import.meta.url).pathname;
const me = { uid: Deno.uid() ?? -1, gid: Deno.gid() ?? -1, pid: -1 };

interface Service {
  readonly events: Record<string, unknown>[];
  readonly pid: number;
  readonly port: number | null;
  waitFor(pred: (e: Record<string, unknown>) => boolean, what: string): Promise<void>;
  /** TCP sockets it holds: its listener and its clients. */
  openFds(): number;
  stop(): Promise<void>;
}

/** How many TCP sockets (its listener and clients) process pid holds. */
function tcpSockets(pid: number): number {
  const tcp = new Set(
    ["/proc/net/tcp", "/proc/net/tcp6"].flatMap((f) =>
      Deno.readTextFileSync(f).split("\n").slice(1).map((l) => l.trim().split(/\s+/)[9])
    ),
  );
  return [...Deno.readDirSync(`/proc/${pid}/fd`)].filter((e) => {
    try {
      return tcp.has(
        /^socket:\[(\d+)\]$/.exec(Deno.readLinkSync(`/proc/${pid}/fd/${e.name}`))?.[1],
      );
    } catch {
      return false; // closed meanwhile
    }
  }).length;
}

async function startService(socket: string, ...args: string[]): Promise<Service> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      RECEIVER,
      socket,
      ...args,
    ],
    env: { LD_PRELOAD: shimPath() },
    stdout: "piped",
  }).spawn();
  const events: Record<string, unknown>[] = [];
  const reading = readLines(child.stdout, (line) => events.push(JSON.parse(line)));
  const waitFor = async (pred: (e: Record<string, unknown>) => boolean, what: string) => {
    const end = Date.now() + 10_000;
    while (!events.some(pred)) {
      if (Date.now() > end) throw new Error(`no ${what} in ${JSON.stringify(events)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  await waitFor((e) => e.event === "ready", "ready");
  return {
    events,
    pid: child.pid,
    port: events.find((e) => e.event === "ready")!.port as number | null,
    waitFor,
    openFds: () => tcpSockets(child.pid),
    async stop() {
      child.kill();
      await child.status;
      await reading;
    },
  };
}

/** A client connected to a listener of ours, and the fd of our side,
 * taken from Deno as the daemon takes it (send() gives it away). */
async function client(): Promise<{ client: Deno.TcpConn; fd: number; close(): void }> {
  const [c, conn] = await connectedPair();
  return {
    client: c,
    fd: detach(shim, conn, internalFd(conn)!),
    close() {
      try {
        c.close();
      } catch { /* closed already */ }
    },
  };
}

const recordFor = (c: Deno.TcpConn, route: string) =>
  encodeRecord({
    v: 1,
    route,
    service: "svc",
    client: { address: "127.0.0.1", port: c.localAddr.port },
    local: { address: "127.0.0.1", port: c.remoteAddr.port },
    peeked: 0,
  });

/** Sends all of bytes, the fd with the first of them; then our copy of
 * the fd is closed, as the daemon closes its own. */
function send(chan: number, fd: number, bytes: Uint8Array<ArrayBuffer>): void {
  assert.equal(shim.channels.send(chan, fd, bytes), bytes.length);
  if (fd >= 0) shim.fds.close(fd);
}

async function echoes(c: Deno.TcpConn, text: string): Promise<boolean> {
  await writeAll(c, enc.encode(text));
  return await readAtLeast(c, text.length) === text;
}

Deno.test("the preloaded receiver pairs each record with its own fd however it is split, drops what is spoilt with a reason, and leaks no fd", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-receiver-" });
  const path = join(dir, "svc.sock");
  const svc = await startService(path);
  const clients = await Promise.all(Array.from({ length: 6 }, client));
  try {
    assert.equal(typeof svc.port, "number", "the shim's accept path is in use");
    const chan = shim.channels.open(path, me);
    // A first connection, echoed and closed: what the runtime opens once
    // (on its first node:net socket) is in the baseline.
    const first = await client();
    send(chan, first.fd, recordFor(first.client, "first"));
    assert.ok(await echoes(first.client, "warm"));
    first.close();
    await svc.waitFor((e) => e.event === "connection", "first connection");
    await new Promise((r) => setTimeout(r, 300));
    const before = svc.openFds();
    const [whole, split, merged, spoilt, cut, last] = clients as [
      Awaited<ReturnType<typeof client>>,
      ...Awaited<ReturnType<typeof client>>[],
    ];
    send(chan, whole.fd, recordFor(whole.client, "whole"));
    // A record in three parts, its fd with the first byte.
    const parts = recordFor(split!.client, "split");
    send(chan, split!.fd, parts.slice(0, 1));
    await new Promise((r) => setTimeout(r, 50));
    send(chan, -1, parts.slice(1, 30));
    send(chan, -1, parts.slice(30));
    // Two records in one message with one fd: the second has none.
    const two = new Uint8Array([
      ...recordFor(merged!.client, "merged"),
      ...recordFor(last!.client, "orphan"),
    ]);
    send(chan, merged!.fd, two);
    send(chan, spoilt!.fd, enc.encode("this is not a record\n"));
    send(chan, last!.fd, recordFor(last!.client, "last"));
    for (const c of [whole, split!, merged!, last!]) assert.ok(await echoes(c.client, "ping"));
    assert.ok(await seesEnd(spoilt!.client), "the spoilt record's client is closed");
    // A record cut short by the channel's end: its client is closed too.
    send(chan, cut!.fd, recordFor(cut!.client, "cut").slice(0, 20));
    shim.channels.close(chan, false);
    assert.ok(await seesEnd(cut!.client), "the cut record's client is closed");
    await svc.waitFor((e) => String(e.message).includes("cut short"), "cut-short problem");

    const conns = svc.events.filter((e) => e.event === "connection");
    assert.deepEqual(
      conns.map((e) => (e.record as { route: string }).route).sort(),
      ["first", "last", "merged", "split", "whole"],
    );
    for (const e of conns) { // each fd with its own record
      assert.equal((e.record as { client: { port: number } }).client.port, e.remotePort);
    }
    const problems = svc.events.filter((e) => e.event === "problem").map((e) => e.message);
    assert.ok(
      problems.some((m) => /a record came without an fd/.test(String(m))),
      String(problems),
    );
    assert.ok(
      problems.some((m) => /not a portmux handoff record|JSON/.test(String(m))),
      String(problems),
    );
    clients.forEach((c) => c.close());
    const end = Date.now() + 5000;
    while (svc.openFds() > before && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
    assert.equal(svc.openFds(), before, "the service holds no client it did not hold before");
  } finally {
    clients.forEach((c) => c.close());
    await svc.stop();
  }
});

Deno.test("the preloaded receiver refuses a channel from another uid, and its private port refuses everyone", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-receiver-uid-" });
  const path = join(dir, "svc.sock");
  const svc = await startService(path, String((Deno.uid() ?? 0) + 4242));
  const c = await client();
  try {
    const chan = shim.channels.open(path, me);
    // The service closes the channel as soon as it sees who opened it: the
    // send fails, or the fd in flight is closed with the channel.
    try {
      send(chan, c.fd, recordFor(c.client, "foreign"));
    } catch (e) {
      assert.match((e as ShimError).code, /^(EPIPE|ECONNRESET)$/);
      shim.fds.close(c.fd);
    }
    assert.ok(await seesEnd(c.client), "the client is closed, never served");
    await svc.waitFor((e) => /refused a channel from uid/.test(String(e.message)), "refusal");
    assert.equal(svc.events.filter((e) => e.event === "connection").length, 0);
    shim.channels.close(chan, false);
    await assert.rejects(
      Deno.connect({ hostname: "127.0.0.1", port: svc.port! }),
      Deno.errors.ConnectionRefused,
    );
  } finally {
    c.close();
    await svc.stop();
  }
});

Deno.test("a receiver never takes the socket path of a running one, replaces a stale file, and removes its own on close", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-steal-" });
  const path = join(dir, "svc.sock");
  const first = await startService(path);
  try {
    const second = await $`${Deno.execPath()} run -A ${RECEIVER} ${path}`
      .env({ LD_PRELOAD: shimPath() });
    assert.notEqual(second.code, 0);
    assert.match(second.stderr, /another service is receiving there/);
    // The first still receives on its path.
    const chan = shim.channels.open(path, me);
    const c = await client();
    send(chan, c.fd, recordFor(c.client, "still"));
    await first.waitFor((e) => (e.record as { route?: string })?.route === "still", "its handoff");
    c.close();
    shim.channels.close(chan, false);
  } finally {
    await first.stop();
  }
  assert.throws(() => Deno.lstatSync(path), Deno.errors.NotFound, "close removed the socket file");
  // A socket file nobody listens on any more (a service killed with
  // SIGKILL leaves one): replaced.
  const bind = `import socket; s = socket.socket(socket.AF_UNIX); s.bind(${JSON.stringify(path)})`;
  assert.equal((await $`python3 -c ${bind}`).code, 0);
  assert.ok(Deno.lstatSync(path).isSocket);
  const third = await startService(path);
  await third.stop();
});
