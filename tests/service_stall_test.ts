/**
 * A protocol service that stops reading its channel (a receiver that never
 * reads, or a process paused with SIGSTOP): the channel is found stalled
 * within the route's wait and no client is sent there after that; the
 * others go to the healthy instance. Real daemon, real Python services,
 * real client sockets, with the express lane on and off.
 *
 * The clients sent before the stall was found are counted (the log must
 * name exactly them) and, when the channel is closed past the limit, cut:
 * each ends then, while its service still lives and never reads.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { type LogLine, startDaemon, type TestDaemon } from "./helpers/daemon.ts";
import { enc, writeAll } from "./helpers/client.ts";
import { startPythonService } from "./helpers/python_service.ts";

const WAIT_MS = 300;
const CLIENTS = 200;
const PACE_MS = 10; // one new client every 10 ms: 2 s of arrivals

function config(sockets: string[], express: boolean): string {
  return `
listen: [{ address: 127.0.0.1, port: 0 }]
preread: { express: ${express} }
limits: { max_per_source: 10000 }
tls: { self_signed: true }
services: { svc: { socket: ${JSON.stringify(sockets)} } }
routes:
  - { name: web, match: { protocol: tls }, action: https }
  - name: private
    match: { prefix: PRIV }
    action: handoff
    service: svc
    wait_ms: ${WAIT_MS}
    fallback: close
`;
}

/** A client that sends "PRIV i" and reads until its echo, or the end. */
class Client {
  port = 0;
  /** When it was answered or closed (ms after it connected); null: not yet. */
  doneMs: number | null = null;
  outcome: "echoed" | "closed" | null = null;
  readonly finished: Promise<void>;
  #conn: Deno.TcpConn | null = null;

  constructor(readonly i: number, daemonPort: number) {
    this.finished = this.#run(daemonPort);
  }

  async #run(daemonPort: number): Promise<void> {
    const conn = this.#conn = await Deno.connect({ hostname: "127.0.0.1", port: daemonPort });
    this.port = conn.localAddr.port;
    const started = performance.now();
    const text = `PRIV ${this.i}`;
    const want = `ECHO:${text}`;
    let got = "";
    try {
      await writeAll(conn, enc.encode(text));
      const buf = new Uint8Array(1024);
      while (got.length < want.length) {
        const n = await conn.read(buf);
        if (n === null) break;
        got += new TextDecoder().decode(buf.subarray(0, n));
      }
    } catch { /* reset: closed */ }
    this.outcome = got === want ? "echoed" : "closed";
    this.doneMs = performance.now() - started;
    this.abandon();
  }

  /** Gives up on it (a client stuck in a service that never reads). */
  abandon(): void {
    try {
      this.#conn?.close();
    } catch { /* closed */ }
  }
}

/** CLIENTS clients, one every PACE_MS, all kept running. */
async function sendClients(port: number, count = CLIENTS): Promise<Client[]> {
  const clients: Client[] = [];
  for (let i = 0; i < count; i++) {
    clients.push(new Client(i, port));
    await new Promise((r) => setTimeout(r, PACE_MS));
  }
  return clients;
}

/** The connection lines by client port, once every client has its own. */
async function allLogged(d: TestDaemon, clients: Client[]): Promise<Map<number, LogLine>> {
  const byPort = () =>
    new Map(
      d.logs.filter((l) => l.event === "connection")
        .map((l) => [Number(String(l.client).split(":")[1]), l]),
    );
  await d.waitFor(() => {
    const lines = byPort();
    return clients.every((c) => c.port !== 0 && lines.has(c.port));
  }, 20_000);
  return byPort();
}

async function stalledReceiver(express: boolean): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "portmux-stall-" });
  const healthy = await startPythonService(join(dir, "healthy.sock"));
  const deaf = await startPythonService(join(dir, "deaf.sock"), "--deaf");
  const d = await startDaemon({
    dataDir: dir,
    config: config([healthy.socket, deaf.socket], express),
  });
  let clients: Client[] = [];
  try {
    clients = await sendClients(d.port);
    const stalled = await d.waitFor((l) => l.event === "service-stalled", 10_000);
    assert.equal(stalled.level, "warn");
    assert.equal(stalled.socket, deaf.socket);
    const byPort = await allLogged(d, clients);

    // The clients handed to the deaf instance: sent before the stall was
    // found, and exactly as many as the log says are queued there.
    const toDeaf = clients.filter((c) => byPort.get(c.port)!.socket === deaf.socket);
    assert.ok(toDeaf.length > 0, "the deaf instance got some before it was found");
    assert.ok(
      toDeaf.length <= 60,
      `${toDeaf.length} clients stranded: the stall must be found within the wait ` +
        `(unchecked, about half of ${CLIENTS} go there)`,
    );
    assert.equal(stalled.clients_queued, toDeaf.length, JSON.stringify(stalled));

    // Every other client was served, or closed, promptly.
    const others = clients.filter((c) => !toDeaf.includes(c));
    await Promise.all(others.map((c) => c.finished));
    for (const c of others) {
      assert.ok(c.doneMs! < 3000, `client ${c.i} took ${Math.round(c.doneMs!)} ms`);
      const line = byPort.get(c.port)!;
      if (c.outcome === "echoed") assert.equal(line.socket, healthy.socket);
      else assert.equal(line.fallback, "close", JSON.stringify(line));
    }
    assert.ok(others.filter((c) => c.outcome === "echoed").length >= CLIENTS / 2);

    // Stalled past the limit (5 x 300 ms, at least 2 s): closed, said once.
    const closed = await d.waitFor((l) => l.event === "service-stalled-closed", 10_000);
    assert.equal(closed.level, "error");
    assert.equal(closed.socket, deaf.socket);
    assert.equal(closed.clients_closed, toDeaf.length, JSON.stringify(closed));
    assert.ok(Number(closed.stalled_ms) >= 2000, JSON.stringify(closed));
    assert.equal(stalled.close_after_ms, 2000);

    // The stranded clients end with the close, though their service lives
    // on and never reads: none waits much past the close limit.
    const ended = await Promise.race([
      Promise.all(toDeaf.map((c) => c.finished)).then(() => true),
      new Promise<false>((r) => setTimeout(() => r(false), 1000)),
    ]);
    assert.ok(ended, "the stranded clients end at the close");
    assert.ok(toDeaf.every((c) => c.outcome === "closed"), "none was answered");
    for (const c of toDeaf) {
      assert.ok(c.doneMs! < 6000, `stranded client ${c.i} waited ${Math.round(c.doneMs!)} ms`);
    }

    const stalls = d.logs.filter((l) => l.event === "service-stalled");
    assert.equal(stalls.length, 1, "one stall, said once");
  } finally {
    clients.forEach((c) => c.abandon());
    await d.stop();
    await healthy.stop();
    await deaf.stop();
  }
}

Deno.test("a service instance that never reads its channel (express lane on): found stalled within the wait, the rest served by the other; closed after the limit", async () => {
  await stalledReceiver(true);
});

Deno.test("a service instance that never reads its channel (express lane off): found stalled within the wait, the rest served by the other; closed after the limit", async () => {
  await stalledReceiver(false);
});

Deno.test("a stalled service that dies: the clients it never read end with it, not at the stall-close", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-stall-dies-" });
  const deaf = await startPythonService(join(dir, "deaf.sock"), "--deaf");
  const d = await startDaemon({ dataDir: dir, config: config([deaf.socket], false) });
  let clients: Client[] = [];
  try {
    clients = await sendClients(d.port, 5);
    const stalled = await d.waitFor((l) => l.event === "service-stalled", 10_000);
    assert.equal(stalled.clients_queued, 5, JSON.stringify(stalled));
    await deaf.stop(); // its socket goes, and the kernel ends the clients in it
    const ended = await Promise.race([
      Promise.all(clients.map((c) => c.finished)).then(() => true),
      new Promise<false>((r) => setTimeout(() => r(false), 1000)),
    ]);
    assert.ok(ended, "the clients end with their service (the daemon holds no copy of them)");
    assert.ok(clients.every((c) => c.outcome === "closed"));
  } finally {
    clients.forEach((c) => c.abandon());
    await d.stop();
    await deaf.stop();
  }
});

Deno.test("a service paused (SIGSTOP) then continued: stalled, then resumed; its queued clients are served and it takes clients again", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-pause-" });
  const a = await startPythonService(join(dir, "a.sock"));
  const b = await startPythonService(join(dir, "b.sock"));
  const d = await startDaemon({ dataDir: dir, config: config([a.socket, b.socket], true) });
  let clients: Client[] = [];
  try {
    // Warm both channels up, then pause b.
    await Promise.all((await sendClients(d.port, 10)).map((c) => c.finished));
    Deno.kill(b.pid, "SIGSTOP");
    clients = await sendClients(d.port, 60);
    const stalled = await d.waitFor((l) => l.event === "service-stalled", 10_000);
    assert.equal(stalled.socket, b.socket);
    Deno.kill(b.pid, "SIGCONT");
    const resumed = await d.waitFor((l) => l.event === "service-resumed", 10_000);
    assert.equal(resumed.socket, b.socket);
    // Everyone is served: those queued in b once it reads again.
    await Promise.all(clients.map((c) => c.finished));
    assert.ok(clients.every((c) => c.outcome === "echoed"));
    // And b takes new clients again.
    const later = await sendClients(d.port, 20);
    await Promise.all(later.map((c) => c.finished));
    const byPort = await allLogged(d, [...clients, ...later]);
    assert.ok(later.some((c) => byPort.get(c.port)!.socket === b.socket));
    assert.equal(d.logs.filter((l) => l.event === "service-stalled-closed").length, 0);
  } finally {
    clients.forEach((c) => c.abandon());
    try {
      Deno.kill(b.pid, "SIGCONT");
    } catch { /* gone */ }
    await d.stop();
    await a.stop();
    await b.stop();
  }
});
