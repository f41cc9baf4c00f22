/**
 * `deno task bench`: portmux against the same service reached directly,
 * measured side by side in one run and printed as ratios (these machines
 * are shared and noisy, so rounds alternate direct / portmux and the median
 * of each side is kept). Writes bench/RESULTS.md.
 *
 * - handoff: new connections/s, and connect-to-first-echo latency (median,
 *   p99), through portmux's handoff vs straight to the echo service's TCP port;
 * - bulk: throughput of one handed-off connection vs one direct connection;
 * - https: keep-alive requests/s through portmux (accept injection) vs the
 *   same handler in a Deno.serve of its own (wrk if installed, else a fetch
 *   loop).
 */
import { join } from "node:path";
import { readAtLeast, writeAll } from "../tests/helpers/client.ts";
import { freePort, run } from "../tests/helpers/daemon.ts";
import { machineLine, writeSection } from "./results.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const SECONDS = Number(Deno.env.get("BENCH_SECONDS") ?? 2);
const ROUNDS = Number(Deno.env.get("BENCH_ROUNDS") ?? 3);
const CONCURRENCY = 32;
const BULK_BYTES = 256 * 1024 * 1024;

/** Starts a helper process and waits for its "ready" line. */
async function spawnReady(script: string, args: string[]): Promise<Deno.ChildProcess> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", join(ROOT, script), ...args],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const first = await reader.read();
  if (first.value?.trim() !== "ready") throw new Error(`${script} did not start`);
  (async () => {
    while (!(await reader.read()).done) { /* drain */ }
  })();
  return child;
}

/** Starts portmux as `deno task start` does (shim preloaded), its log
 * (info level, one line per connection, as in production) to /dev/null so
 * that reading it costs this process nothing; waits until it answers. */
async function startPortmux(config: string): Promise<Deno.ChildProcess> {
  const file = join(dir, "portmux.yaml");
  await Deno.writeTextFile(file, config);
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", join(ROOT, "src/launch.ts"), "--parallel", "1", "--config", file],
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  const port = Number(/port: (\d+)/.exec(config)![1]);
  for (let i = 0; i < 300; i++) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      await new Promise((r) => setTimeout(r, 200)); // let its self-signed cert land
      return child;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new Error("portmux did not start");
}

const median = (xs: number[]) => percentile(xs, 50);
function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;
}

/** New connections, each: connect, send, read the echo, close. */
async function connectionLoad(port: number) {
  const payload = new TextEncoder().encode("PRIV ping");
  const latencies: number[] = [];
  const end = performance.now() + SECONDS * 1000;
  const worker = async () => {
    while (performance.now() < end) {
      const t0 = performance.now();
      const c = await Deno.connect({ hostname: "127.0.0.1", port });
      await writeAll(c, payload);
      const got = await readAtLeast(c, payload.length);
      if (got.length !== payload.length) throw new Error(`short echo: ${got}`);
      latencies.push(performance.now() - t0);
      c.close();
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  return {
    perSecond: latencies.length / SECONDS,
    p50: median(latencies),
    p99: percentile(latencies, 99),
  };
}

/** Connections one at a time (no queueing): connect-to-first-echo times. */
async function sequentialLatency(port: number): Promise<number> {
  const payload = new TextEncoder().encode("PRIV ping");
  const times: number[] = [];
  for (let i = 0; i < 1000; i++) {
    const t0 = performance.now();
    const c = await Deno.connect({ hostname: "127.0.0.1", port });
    await writeAll(c, payload);
    await readAtLeast(c, payload.length);
    times.push(performance.now() - t0);
    c.close();
  }
  return median(times);
}

/** One connection: write BULK_BYTES, read the echo of them back; MB/s. */
async function bulkLoad(port: number, prefix: string): Promise<number> {
  const c = await Deno.connect({ hostname: "127.0.0.1", port });
  c.setNoDelay(true);
  const chunk = new Uint8Array(64 * 1024).fill(0x61);
  chunk.set(new TextEncoder().encode(prefix));
  const t0 = performance.now();
  const writing = (async () => {
    for (let sent = 0; sent < BULK_BYTES; sent += chunk.length) {
      await writeAll(c, sent === 0 ? chunk : chunk.fill(0x61, 0, prefix.length));
    }
  })();
  const buf = new Uint8Array(256 * 1024);
  let received = 0;
  while (received < BULK_BYTES) {
    const n = await c.read(buf);
    if (n === null) throw new Error("bulk: connection ended early");
    received += n;
  }
  await writing;
  const seconds = (performance.now() - t0) / 1000;
  c.close();
  return (2 * BULK_BYTES) / seconds / 1e6; // both directions cross the socket
}

/** Keep-alive HTTPS requests/s. */
async function httpsLoad(port: number, caCert: string): Promise<number> {
  const url = `https://127.0.0.1:${port}/`;
  const hasWrk = await run("wrk", ["--version"]).then(() => true, () => false);
  if (hasWrk) {
    const r = await run("wrk", ["-t1", `-c${CONCURRENCY}`, `-d${SECONDS}s`, url]);
    const m = /Requests\/sec:\s+([\d.]+)/.exec(r.stdout);
    if (!m || /Non-2xx|Socket errors/.test(r.stdout)) throw new Error(`wrk: ${r.stdout}`);
    return Number(m[1]);
  }
  const client = Deno.createHttpClient({ caCerts: [caCert] });
  let count = 0;
  const end = performance.now() + SECONDS * 1000;
  const worker = async () => {
    while (performance.now() < end) {
      const res = await fetch(url, { client });
      await res.arrayBuffer();
      if (res.status !== 200) throw new Error(`status ${res.status}`);
      count++;
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  client.close();
  return count / SECONDS;
}

/** Runs a and b alternately ROUNDS times each; returns each side's results. */
async function alternate<T>(a: () => Promise<T>, b: () => Promise<T>): Promise<[T[], T[]]> {
  const ra: T[] = [], rb: T[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    ra.push(await a());
    rb.push(await b());
  }
  return [ra, rb];
}

interface Row {
  metric: string;
  direct: number;
  portmux: number;
  unit: string;
  /** true when smaller is better (latency): the ratio is then direct/portmux. */
  lowerIsBetter?: boolean;
}

const dir = await Deno.makeTempDir({ prefix: "portmux-bench-" });
const socket = join(dir, "echo.sock");
const echoPort = freePort();
const echo = await spawnReady("bench/echo_service.ts", [
  "--tcp-port",
  String(echoPort),
  "--socket",
  socket,
]);
const portmuxPort = freePort();
const daemon = await startPortmux(`
listen: [{ address: 127.0.0.1, port: ${portmuxPort} }]
data_dir: ${JSON.stringify(dir)}
tls: { self_signed: true }
https: { handler: ${JSON.stringify(join(ROOT, "bench/hello_handler.ts"))} }
services: { echo: { socket: ${JSON.stringify(socket)} } }
routes:
  - { name: web, match: { protocol: tls }, action: https }
  - { name: private, match: { prefix: PRIV }, action: handoff, service: echo }
`);
const httpsPort = freePort();
const httpsDirect = await spawnReady("bench/https_direct.ts", [
  "--port",
  String(httpsPort),
  "--cert",
  join(dir, "self-signed-cert.pem"),
  "--key",
  join(dir, "self-signed-key.pem"),
]);
const caCert = await Deno.readTextFile(join(dir, "self-signed-cert.pem"));

const rows: Row[] = [];
try {
  console.error(`handoff: ${ROUNDS} rounds of ${SECONDS}s per side...`);
  const [cd, cp] = await alternate(
    () => connectionLoad(echoPort),
    () => connectionLoad(portmuxPort),
  );
  rows.push({
    metric: "handoff: new connections/s",
    direct: median(cd.map((r) => r.perSecond)),
    portmux: median(cp.map((r) => r.perSecond)),
    unit: "conn/s",
  });
  rows.push({
    metric: "handoff: connect-to-first-echo median",
    direct: median(cd.map((r) => r.p50)),
    portmux: median(cp.map((r) => r.p50)),
    unit: "ms",
    lowerIsBetter: true,
  });
  rows.push({
    metric: "handoff: connect-to-first-echo p99",
    direct: median(cd.map((r) => r.p99)),
    portmux: median(cp.map((r) => r.p99)),
    unit: "ms",
    lowerIsBetter: true,
  });

  const [sd, sp] = await alternate(
    () => sequentialLatency(echoPort),
    () => sequentialLatency(portmuxPort),
  );
  const added = (median(sp) - median(sd)) * 1000;
  rows.push({
    metric: `handoff: connect-to-first-echo median, one at a time (portmux adds ${
      added.toFixed(0)
    } µs)`,
    direct: median(sd),
    portmux: median(sp),
    unit: "ms",
    lowerIsBetter: true,
  });

  console.error("bulk...");
  const [bd, bp] = await alternate(
    () => bulkLoad(echoPort, ""),
    () => bulkLoad(portmuxPort, "PRIV"),
  );
  rows.push({
    metric: "bulk: one connection, echoed both ways",
    direct: median(bd),
    portmux: median(bp),
    unit: "MB/s",
  });

  console.error("https...");
  const [hd, hp] = await alternate(
    () => httpsLoad(httpsPort, caCert),
    () => httpsLoad(portmuxPort, caCert),
  );
  rows.push({
    metric: "https: keep-alive requests/s (HTTP/1.1)",
    direct: median(hd),
    portmux: median(hp),
    unit: "req/s",
  });
} finally {
  daemon.kill("SIGTERM");
  await daemon.status;
  echo.kill();
  httpsDirect.kill();
  await echo.status;
  await httpsDirect.status;
}

const fmt = (n: number) => n >= 100 ? n.toFixed(0) : n.toFixed(2);
const ratio = (r: Row) =>
  (r.lowerIsBetter ? r.direct / r.portmux : r.portmux / r.direct).toFixed(2);
const table = [
  "| metric | direct | through portmux | ratio (1.00 = as fast as direct) |",
  "| --- | --- | --- | --- |",
  ...rows.map((r) =>
    `| ${r.metric} | ${fmt(r.direct)} ${r.unit} | ${fmt(r.portmux)} ${r.unit} | ${ratio(r)}x |`
  ),
].join("\n");

const wrk = (await run("wrk", ["--version"]).catch(() => null))?.stdout.split("\n")[0] ??
  "not installed (fetch loop)";
const header = [
  `${machineLine()}, wrk: ${wrk.trim()}`,
  `Settings: ${ROUNDS} alternating rounds of ${SECONDS}s per side, median kept; ` +
  `${CONCURRENCY} concurrent clients; bulk ${BULK_BYTES / 2 ** 20} MiB each way.`,
].join("\n");
console.log(`${header}\n\n${table}`);
await writeSection("through-daemon", `${header}\n\n${table}`);
