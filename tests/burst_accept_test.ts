/**
 * Bursts: when connections are already waiting as the daemon accepts one,
 * the shim accepts the rest at once (src/accept/client_socket.ts). Those sockets
 * never were Deno connections, so every action is checked on them: HTTPS
 * injection, handoff, the proxy action (which makes them Deno connections
 * after all), close, and the limits. The daemon is paused (SIGSTOP) while
 * the clients connect, so the burst is certain.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { startDaemon, type TestDaemon } from "./helpers/daemon.ts";
import { startProxyHeaderEcho } from "./helpers/peers.ts";
import { enc, readAtLeast, roundTrip, seesEnd, writeAll } from "./helpers/client.ts";

/** Runs connect while the daemon is paused: the kernel completes the
 * handshakes and queues the connections; the daemon sees them all at once
 * when it resumes. */
async function whilePaused<T>(d: TestDaemon, connect: () => Promise<T>): Promise<T> {
  Deno.kill(d.pid, "SIGSTOP");
  try {
    const result = await connect();
    await new Promise((r) => setTimeout(r, 300)); // first bytes in the kernel's buffers
    return result;
  } finally {
    Deno.kill(d.pid, "SIGCONT");
  }
}

/** A burst: one PRIV client first (Deno's own accept takes it), then n of
 * each kind (HTTPS, PRIV, PROX, garbage), all connected while the daemon
 * is paused; checks what each gets. */
async function burstOfEach(d: TestDaemon, caCert: string, n: number): Promise<void> {
  const addr = { hostname: "127.0.0.1", port: d.port };
  const httpsReplies: Promise<string>[] = [];
  const { first, privs, proxies, garbage } = await whilePaused(d, async () => {
    const first = await Deno.connect(addr);
    await writeAll(first, enc.encode("PRIV first\n"));
    const privs = [], proxies = [], garbage = [];
    for (let i = 0; i < n; i++) {
      const tls = await Deno.connectTls({ ...addr, caCerts: [caCert] });
      httpsReplies.push(
        writeAll(tls, enc.encode("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"))
          .then(() => readAtLeast(tls, Infinity))
          .finally(() => tls.close()),
      );
      const p = await Deno.connect(addr);
      await writeAll(p, enc.encode(`PRIV ping ${i}\n`));
      privs.push(p);
      const x = await Deno.connect(addr);
      await writeAll(x, enc.encode(`PROX hello ${i}\n`));
      proxies.push(x);
      const g = await Deno.connect(addr);
      await writeAll(g, enc.encode(`junk ${i}\n`));
      garbage.push(g);
    }
    return { first, privs, proxies, garbage };
  });
  assert.equal(await readAtLeast(first, 11), "PRIV first\n");
  first.close();
  for (const [i, p] of privs.entries()) {
    assert.equal(await readAtLeast(p, 11), `PRIV ping ${i}\n`, "the echo service got it whole");
    assert.equal(await roundTrip(p, "again\n", 6), "again\n", "and keeps talking");
    p.close();
  }
  for (const [i, x] of proxies.entries()) {
    assert.equal(await readAtLeast(x, 25), `client=none PROX hello ${i}\n`);
    assert.equal(await roundTrip(x, "more\n", 5), "more\n");
    x.close();
  }
  for (const g of garbage) assert.ok(await seesEnd(g), "garbage is closed");
  for (const reply of httpsReplies) assert.match(await reply, /^HTTP\/1\.1 200 OK/);
}

const connectionLines = (d: TestDaemon) => d.logs.filter((l) => l.event === "connection");

Deno.test("a burst accepted by the shim: HTTPS, handoff, proxy and close all work on those sockets, and no fd is left", async () => {
  const upstream = startProxyHeaderEcho(); // no PROXY header comes: it answers client=none
  const dir = await Deno.makeTempDir({ prefix: "portmux-burst-" });
  const d = await startDaemon({
    dataDir: dir,
    config: `
listen: [{ address: 127.0.0.1, port: 0 }]
preread: { express: false } # the express lane would take these bursts
tls: { self_signed: true }
services: { echo: { builtin: echo } }
routes:
  - { name: web, match: { protocol: tls }, action: https }
  - { name: private, match: { prefix: PRIV }, action: handoff, service: echo }
  - { name: relay, match: { prefix: PROX }, action: proxy, upstream: "127.0.0.1:${upstream.port}" }
default: close
`,
  });
  try {
    const caCert = await Deno.readTextFile(join(dir, "self-signed-cert.pem"));
    // One burst of each kind warms every path up (the echo channel, the
    // release placeholder, the adopter's listener); then the fd baseline.
    await burstOfEach(d, caCert, 1);
    await new Promise((r) => setTimeout(r, 300));
    const baseline = d.fdCount();
    const before = connectionLines(d).length;

    await burstOfEach(d, caCert, 3);
    await d.waitFor(() => connectionLines(d).length === before + 13);
    const burst = connectionLines(d).slice(before);
    const byShim = burst.filter((l) => l.accepted_by === "shim");
    assert.equal(byShim.length, 12, "all but the first were taken by the shim");
    const outcomes = (route: string) =>
      byShim.filter((l) => l.route === route).map((l) => l.outcome);
    assert.deepEqual(outcomes("web"), ["https", "https", "https"]);
    assert.deepEqual(outcomes("private"), ["handed-off", "handed-off", "handed-off"]);
    assert.deepEqual(outcomes("relay"), ["proxied", "proxied", "proxied"]);
    assert.deepEqual(outcomes("default"), ["closed", "closed", "closed"]);
    assert.equal(burst.find((l) => l.accepted_by !== "shim")?.route, "private");

    const fds = await d.settleFds(baseline);
    assert.ok(fds <= baseline, `fds ${fds} back to the baseline ${baseline}`);
  } finally {
    await d.stop();
    await upstream.stop();
  }
});

Deno.test("limits apply to sockets the shim accepted: the newest over the limit are closed and counted", async () => {
  const d = await startDaemon({
    config: `
listen: [{ address: 127.0.0.1, port: 0 }]
preread: { express: false, defer_accept: false } # the silent clients must be accepted
limits: { max_per_source: 3 }
services: { echo: { builtin: echo } }
routes:
  - { name: private, match: { prefix: PRIV }, action: handoff, service: echo }
`,
  });
  try {
    const addr = { hostname: "127.0.0.1", port: d.port };
    const conns = await whilePaused(d, async () => {
      const conns = [];
      for (let i = 0; i < 6; i++) conns.push(await Deno.connect(addr)); // silent: held in preread
      return conns;
    });
    for (const c of conns.slice(3)) assert.ok(await seesEnd(c, 3000), "the 3 newest are closed");
    for (const [i, c] of conns.slice(0, 3).entries()) {
      assert.equal(await roundTrip(c, `PRIV ok ${i}`, 9), `PRIV ok ${i}`, "the others are served");
    }
    const limit = await d.waitFor((l) => l.event === "limit");
    assert.equal(limit.limit, "max_per_source");
    for (const c of conns) c.close();
  } finally {
    await d.stop();
  }
  const stats = d.logs.find((l) => l.event === "stats")!;
  assert.equal(stats['portmux_limit_hits_total{limit="max_per_source"}'], 3);
  const handed = d.logs.filter((l) => l.event === "connection" && l.outcome === "handed-off");
  assert.equal(handed.filter((l) => l.accepted_by === "shim").length, 2);
});
