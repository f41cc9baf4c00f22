/**
 * `deno task bench:preread`: the wait for first bytes under load.
 *
 * A. portmux alone: memory per idle preread connection (RSS with 10,000
 *    silent clients held, against none), and the time to classify a
 *    well-behaved client while they are held, against the same with none
 *    (the daemon's decide_ms, and the client's connect-to-echo time).
 * B. slowloris side by side: 2,000 silent + 200 slow-drip clients held
 *    against portmux, sslh-select and HAProxy (Debian packages), each in
 *    front of the same TLS backend; then 100 legitimate HTTPS clients each:
 *    how many get an answer within 5 s, and how fast.
 *
 * The attackers run in their own process (tests/services/load_clients.py).
 * Writes the "preread" section of bench/RESULTS.md.
 */
import { join } from "node:path";
import { $, freePort, startDaemon, type TestDaemon } from "../tests/helpers/daemon.ts";
import { readAtLeast, writeAll } from "../tests/helpers/client.ts";
import { waitForPort } from "../tests/helpers/peers.ts";
import { median, ROOT, spawnQuiet, stopChild } from "./load.ts";
import { machineLine, writeSection } from "./results.ts";

const LOAD = join(ROOT, "tests/services/load_clients.py");
const IDLE = Number(Deno.env.get("BENCH_IDLE") ?? 10_000);
const enc = new TextEncoder();

function rssMiB(pid: number): number {
  return Number(/VmRSS:\s+(\d+) kB/.exec(Deno.readTextFileSync(`/proc/${pid}/status`))![1]) / 1024;
}

/** Holds silent and dripping clients from a process of their own. */
async function holdClients(port: number, silent: number, drip: number) {
  const child = new Deno.Command("python3", {
    args: [LOAD, "hold", String(port), String(silent), String(drip)],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const first = await reader.read();
  if (!first.value?.includes('"held"')) throw new Error(`load_clients.py: ${first.value}`);
  const held = JSON.parse(first.value);
  return {
    refused: held.refused as number,
    async release() {
      await stopChild(child, "SIGKILL"); // it may have ended: the server closed them all
      await reader.cancel().catch(() => {});
    },
  };
}

/** n handoff round trips, one after another; the client's times in ms. */
async function handoffTimes(port: number, n: number): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    const c = await Deno.connect({ hostname: "127.0.0.1", port });
    await writeAll(c, enc.encode("PRIV ping"));
    await readAtLeast(c, 9);
    times.push(performance.now() - t0);
    c.close();
  }
  return times;
}

function decideTimes(d: TestDaemon, since: number): number[] {
  return d.logs.slice(since).filter((l) => l.event === "connection" && l.route === "private")
    .map((l) => Number(l.decide_ms));
}

async function partA(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "portmux-bench-preread-" });
  const d = await startDaemon({
    dataDir: dir,
    config: `
listen: [{ address: 127.0.0.1, port: 0 }]
preread: { timeout_ms: 120000 }
limits: { max_per_source: 100000, max_preread: 100000, max_connections: 100000 }
tls: { self_signed: true }
services: { echo: { builtin: echo } }
routes:
  - { name: private, match: { prefix: PRIV }, action: handoff, service: echo }
  - { name: web, match: { protocol: tls }, action: https }
`,
  });
  try {
    await handoffTimes(d.port, 300); // warm up
    let mark = d.logs.length;
    const quietClient = await handoffTimes(d.port, 500);
    const quietDecide = decideTimes(d, mark);
    const rssBefore = rssMiB(d.pid);

    console.error(`holding ${IDLE} idle clients...`);
    const idle = await holdClients(d.port, IDLE, 0);
    while (d.fdCount() < IDLE) await new Promise((r) => setTimeout(r, 100));
    await new Promise((r) => setTimeout(r, 1000));
    const rssHeld = rssMiB(d.pid);
    mark = d.logs.length;
    const busyClient = await handoffTimes(d.port, 500);
    const busyDecide = decideTimes(d, mark);
    const https = await legitimateClients(
      d.port,
      await Deno.readTextFile(join(dir, "self-signed-cert.pem")),
    );
    await idle.release();

    const perConn = ((rssHeld - rssBefore) * 2 ** 20) / IDLE;
    const row = (what: string, quiet: number, busy: number) =>
      `| ${what} | ${quiet.toFixed(3)} ms | ${busy.toFixed(3)} ms | ${
        (busy / quiet).toFixed(2)
      }x |`;
    return [
      `Memory: daemon RSS ${rssBefore.toFixed(1)} MiB before, ${rssHeld.toFixed(1)} MiB with ` +
      `${IDLE} silent clients waiting in preread: **${Math.round(perConn)} bytes per idle ` +
      `connection** (they wait in the express lane: an epoll entry and its few bytes of state ` +
      `each; with the lane off, each is a Deno connection, its epoll registrations, a timer ` +
      `and a closure).`,
      "",
      `Classifying a well-behaved client (500 handoffs one after another, median) with ${IDLE} ` +
      `idle clients held, against none held (target: within 2x):`,
      "",
      "| measure | none held | " + `${IDLE} held | ratio |`,
      "| --- | --- | --- | --- |",
      row("daemon: accept to decision (decide_ms)", median(quietDecide), median(busyDecide)),
      row("client: connect to first echo byte", median(quietClient), median(busyClient)),
      "",
      `HTTPS beside the ${IDLE} idle clients: ${https.ok}/100 legitimate clients served ` +
      `(10 at a time, median ${https.median.toFixed(1)} ms).`,
    ].join("\n");
  } finally {
    await d.stop();
  }
}

interface Contender {
  name: string;
  port: number;
  stop(): Promise<void>;
}

async function startContenders(backendPort: number, dir: string): Promise<Contender[]> {
  const contenders: Contender[] = [];
  const pm = await startDaemon({
    dataDir: dir,
    config: `
listen: [{ address: 127.0.0.1, port: 0 }]
preread: { timeout_ms: 5000 }
limits: { max_per_source: 100000 }
tls: { self_signed: true }
https: { handler: ${JSON.stringify(join(ROOT, "bench/hello_handler.ts"))} }
routes: [{ name: web, match: { protocol: tls }, action: https }]
`,
  });
  contenders.push({
    name: "portmux (in-process HTTPS)",
    port: pm.port,
    stop: async () => void await pm.stop(),
  });

  const sslhVersion = (await $`dpkg-query -W -f '\${Version}' sslh`).stdout;
  for (const binary of ["sslh-select", "sslh"]) {
    const port = freePort();
    const sslh = spawnQuiet(binary, [
      "-f",
      "-t",
      "5",
      "-p",
      `127.0.0.1:${port}`,
      "--tls",
      `127.0.0.1:${backendPort}`,
      "--on-timeout",
      `127.0.0.1:${backendPort}`,
    ]);
    await waitForPort(port);
    contenders.push({
      name: `${binary} ${sslhVersion}${binary === "sslh" ? " (a process per connection)" : ""}`,
      port,
      stop: () => stopChild(sslh),
    });
  }

  const haPort = freePort();
  const cfg = join(dir, "haproxy.cfg");
  await Deno.writeTextFile(
    cfg,
    [
      "global",
      "  maxconn 9000", // two fds a connection: within the 20,000 hard limit here
      "defaults",
      "  mode tcp",
      "  maxconn 9000", // two fds a connection: within the 20,000 hard limit here
      "  timeout connect 5s",
      "  timeout client 30s",
      "  timeout server 30s",
      "frontend front",
      `  bind 127.0.0.1:${haPort}`,
      "  tcp-request inspect-delay 5s",
      "  tcp-request content accept if { req.ssl_hello_type 1 }",
      "  default_backend tls",
      "backend tls",
      `  server b 127.0.0.1:${backendPort}`,
      "",
    ].join("\n"),
  );
  const ha = spawnQuiet("haproxy", ["-db", "-f", cfg]);
  await waitForPort(haPort);
  contenders.push({
    name: `HAProxy ${(await $`haproxy -v`).stdout.split(" ")[2]}`,
    port: haPort,
    stop: () => stopChild(ha),
  });
  return contenders;
}

/** 100 HTTPS clients, 10 at a time, each with 5 s to get its answer. */
async function legitimateClients(port: number, caCert: string) {
  const times: number[] = [];
  let ok = 0;
  const one = async () => {
    const t0 = performance.now();
    let conn: Deno.TlsConn | null = null;
    const timer = setTimeout(() => conn?.close(), 5000);
    try {
      conn = await Deno.connectTls({ hostname: "localhost", port, caCerts: [caCert] });
      await writeAll(
        conn,
        enc.encode("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
      );
      if ((await readAtLeast(conn, 12, 5000)).startsWith("HTTP/1.1 200")) {
        ok++;
        times.push(performance.now() - t0);
      }
    } catch {
      /* counted as not served */
    } finally {
      clearTimeout(timer);
      try {
        conn?.close();
      } catch { /* closed */ }
    }
  };
  for (let i = 0; i < 100; i += 10) await Promise.all(Array.from({ length: 10 }, one));
  return { ok, median: median(times) };
}

async function partB(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "portmux-bench-slowloris-" });
  const { selfSignedCertIn } = await import("../src/actions/https/self_signed_cert.ts");
  const { cert } = await selfSignedCertIn(dir);
  const backendPort = freePort();
  const backend = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      join(ROOT, "bench/https_direct.ts"),
      "--port",
      String(backendPort),
      "--cert",
      join(dir, "self-signed-cert.pem"),
      "--key",
      join(dir, "self-signed-key.pem"),
    ],
    stdout: "null",
  }).spawn();
  await waitForPort(backendPort);
  const rows: string[] = [];
  const contenders = await startContenders(backendPort, dir);
  try {
    for (const c of contenders) {
      console.error(`slowloris against ${c.name}...`);
      const calm = await legitimateClients(c.port, cert);
      const attack = await holdClients(c.port, 2000, 200);
      await new Promise((r) => setTimeout(r, 500));
      const under = await legitimateClients(c.port, cert);
      await attack.release();
      const refused = attack.refused ? ` (refused ${attack.refused} of the 2,200 attackers)` : "";
      const alive = await Deno.connect({ hostname: "127.0.0.1", port: c.port }).then(
        (conn) => (conn.close(), ""),
        () => "; **not listening any more**",
      );
      const served = (r: { ok: number; median: number }) =>
        r.ok ? `${r.ok}/100, ${r.median.toFixed(1)} ms` : "0/100";
      rows.push(`| ${c.name} | ${served(calm)} | ${served(under)}${refused}${alive} |`);
    }
  } finally {
    for (const c of contenders) await c.stop();
    backend.kill();
    await backend.status;
  }
  return [
    "Slowloris side by side: 2,000 silent and 200 slow-drip clients (a TLS record header " +
    "declaring a 512-byte hello, one byte per second) held against each, then 100 legitimate " +
    "HTTPS clients, 10 at a time, each with 5 s to get its `200` (served / median time):",
    "",
    "| in front of the same TLS backend | no attack | under attack |",
    "| --- | --- | --- |",
    ...rows,
    "",
    "portmux serves HTTPS in-process; sslh and HAProxy forward to the `Deno.serve` backend " +
    "(bench/https_direct.ts) with the same certificate and handler. sslh-select waits with " +
    "select(), which cannot watch fds past 1024 (FD_SETSIZE): it stops accepting, then exits.",
  ].join("\n");
}

const a = await partA();
const b = await partB();
const text = `${machineLine()}\n\n${a}\n\n${b}`;
console.log(text);
await writeSection("preread", text);
