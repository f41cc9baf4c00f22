/**
 * Load generators and process helpers shared by the benchmarks. The
 * generators run in the bench's own Deno process with many connections in
 * flight.
 */
import { join } from "node:path";
import { readAtLeast, writeAll } from "../tests/helpers/client.ts";
import { $, freePort } from "../tests/helpers/daemon.ts";
import { waitForPort } from "../tests/helpers/peers.ts";
import { shimPath } from "../ffi/shim.ts";

export const ROOT = new URL("../", import.meta.url).pathname;
export const SECONDS = Number(Deno.env.get("BENCH_SECONDS") ?? 2);
export const CONCURRENCY = 32;
export const BULK_BYTES = 256 * 1024 * 1024;

/** Starts a helper process and waits for its "ready" line. */
export async function spawnReady(
  script: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<Deno.ChildProcess> {
  return await ready(
    script,
    new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", join(ROOT, script), ...args],
      env,
      stdout: "piped",
      stderr: "inherit",
    }).spawn(),
  );
}

/** Waits for the child's "ready" line, then drains its output. */
async function ready(name: string, child: Deno.ChildProcess): Promise<Deno.ChildProcess> {
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const first = await reader.read();
  if (first.value?.trim() !== "ready") throw new Error(`${name} did not start`);
  (async () => {
    while (!(await reader.read()).done) { /* drain */ }
  })();
  return child;
}

/** Starts portmux as `deno task start` does (shim preloaded), its log
 * (info level, one line per connection, as in production) to /dev/null so
 * that reading it costs this process nothing; waits until it answers. */
export async function startPortmux(
  dir: string,
  config: string,
  workers = 1,
  root = ROOT, // another tree's, for an A/B (bench/ab_bench.ts)
): Promise<Deno.ChildProcess> {
  await Deno.mkdir(dir, { recursive: true });
  const file = join(dir, "portmux.yaml");
  await Deno.writeTextFile(file, config);
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      join(root, "src/launch.ts"),
      "--parallel",
      String(workers),
      "--config",
      file,
    ],
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  const port = Number(/port: (\d+)/.exec(config)![1]);
  await waitForPort(port, 30_000);
  await new Promise((r) => setTimeout(r, 200)); // let its self-signed cert land
  return child;
}

export const median = (xs: number[]) => percentile(xs, 50);
export function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;
}

/** New connections, each: connect, send, read the echo, close. */
export async function connectionLoad(port: number) {
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
export async function sequentialLatency(port: number): Promise<number> {
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
export async function bulkLoad(port: number, prefix: string): Promise<number> {
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
export async function httpsLoad(
  port: number,
  caCert: string,
  wrkFlags: string[] = [],
): Promise<number> {
  const url = `https://127.0.0.1:${port}/`;
  if (await $.commandExists("wrk")) {
    const r = await $`wrk -t1 -c${CONCURRENCY} -d${SECONDS}s ${wrkFlags} ${url}`;
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

/** The portmux config of the benchmarks: HTTPS with the bench handler,
 * PRIV handed off to the bench echo service at socket. Limits are raised:
 * every load comes from one address, 127.0.0.1. */
export function benchConfig(port: number, dataDir: string, socket: string): string {
  return `
listen: [{ address: 127.0.0.1, port: ${port} }]
data_dir: ${JSON.stringify(dataDir)}
limits: { max_per_source: 100000, max_preread: 100000, max_connections: 100000 }
tls: { self_signed: true }
https: { handler: ${JSON.stringify(join(ROOT, "bench/hello_handler.ts"))} }
services: { echo: { socket: ${JSON.stringify(socket)} } }
routes:
  - { name: web, match: { protocol: tls }, action: https }
  - { name: private, match: { prefix: PRIV }, action: handoff, service: echo }
`;
}

/** The echo service every private-protocol bench talks to: on a TCP port
 * (direct) and on a Unix socket in dir (handed off by portmux). */
export async function startEchoService(dir: string) {
  const socket = join(dir, "echo.sock");
  const port = freePort();
  // Preloaded, its receiver is fed in its runtime's own accept (c/handoff_receiver.c).
  const child = await spawnReady("bench/echo_service.ts", [
    "--tcp-port",
    String(port),
    "--socket",
    socket,
  ], { LD_PRELOAD: shimPath() });
  return { port, socket, child };
}

/** The same echo in Python (bench/echo_service.py), a receiver that does
 * nothing but recvmsg: shows what the daemon itself adds. */
export async function startPythonEchoService(dir: string) {
  const socket = join(dir, "echo-py.sock");
  const port = freePort();
  const child = await ready(
    "bench/echo_service.py",
    new Deno.Command("python3", {
      args: [join(ROOT, "bench/echo_service.py"), String(port), socket],
      stdout: "piped",
      stderr: "inherit",
    }).spawn(),
  );
  return { port, socket, child };
}

/** The direct HTTPS baseline: Deno.serve alone, with the certificate portmux
 * made in dir (start portmux first). */
export async function startHttpsBackend(dir: string) {
  const port = freePort();
  const child = await spawnReady("bench/https_direct.ts", [
    "--port",
    String(port),
    "--cert",
    join(dir, "self-signed-cert.pem"),
    "--key",
    join(dir, "self-signed-key.pem"),
  ]);
  return { port, child };
}

/** Starts a peer with no output (Deno.Command, not dax: it runs through a bench and
 * is stopped with a signal). */
export function spawnQuiet(cmd: string, args: string[]): Deno.ChildProcess {
  return new Deno.Command(cmd, { args, stdin: "null", stdout: "null", stderr: "null" }).spawn();
}

/** Stops a child (that may have exited already) and waits for it. */
export async function stopChild(
  child: Deno.ChildProcess,
  signal: Deno.Signal = "SIGTERM",
): Promise<void> {
  try {
    child.kill(signal);
  } catch { /* it exited already */ }
  await child.status;
}

/** The pids of a process and all its descendants. */
export function processTree(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${e.name}/stat`);
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(e.name)]);
    } catch { /* gone */ }
  }
  const out: number[] = [];
  const walk = (p: number) => {
    out.push(p);
    for (const c of children.get(p) ?? []) walk(c);
  };
  walk(root);
  return out;
}

/** CPU seconds (user and system) a process and its descendants used. */
export function cpuSeconds(root: number): number {
  let sum = 0;
  for (const pid of processTree(root)) {
    try {
      const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      sum += (Number(f[11]) + Number(f[12])) / 100;
    } catch { /* gone */ }
  }
  return sum;
}
