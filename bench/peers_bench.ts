/**
 * `deno task bench:peers`: portmux against nginx stream (+ ssl_preread),
 * HAProxy and sslh, each configured for the same job, measured in one run
 * as ratios to the direct path (client straight to the backend/service):
 *
 * - HTTPS: TLS to the same Deno.serve backend (bench/https_direct.ts); peers
 *   proxy it, portmux serves the same handler in-process (accept injection).
 *   Rates, and the CPU the front and the backend spend together per request.
 * - private protocol ("PRIV..."): to the same echo service
 *   (bench/echo_service.ts); peers proxy it over TCP, portmux hands the
 *   connection to it over its Unix socket.
 *
 * It installs nothing: it checks for nginx (with the stream module),
 * haproxy, sslh-select, wrk, h2load and cc, and says what is missing.
 * The peers run with their default use of cores (nginx worker_processes
 * auto, HAProxy's default threads; sslh-select is one process by design);
 * portmux runs one worker, as the backend is one Deno.serve. Writes the
 * "peers" section of bench/RESULTS.md and bench/peers.svg.
 */
import { join } from "node:path";
import { $, freePort } from "../tests/helpers/daemon.ts";
import { waitForPort } from "../tests/helpers/peers.ts";
import {
  benchConfig,
  cpuSeconds,
  median,
  processTree,
  ROOT,
  spawnQuiet,
  startEchoService,
  startHttpsBackend,
  startPortmux,
  stopChild,
} from "./load.ts";
import { formatInPlace, machineLine, writeSection } from "./results.ts";

const SECONDS = Number(Deno.env.get("BENCH_SECONDS") ?? 3);
const WARM_UP_SECONDS = 1;
const IDLE = Number(Deno.env.get("BENCH_IDLE") ?? 10_000);
const BULK_MIB = 256;

// ---- tools --------------------------------------------------------------

const missing: string[] = [];
for (const tool of ["nginx", "haproxy", "sslh-select", "wrk", "h2load", "cc"]) {
  if (!(await $.commandExists(tool))) missing.push(tool);
}
const STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so";
if (!missing.includes("nginx") && !(await Deno.stat(STREAM_MODULE).then(() => true, () => false))) {
  missing.push("nginx stream module (libnginx-mod-stream)");
}
if (missing.length) {
  console.error(
    `bench:peers needs: ${
      missing.join(", ")
    }.\nOn Debian: apt-get install nginx libnginx-mod-stream haproxy sslh wrk nghttp2-client gcc`,
  );
  Deno.exit(1);
}

// ---- processes ----------------------------------------------------------

function rssMiB(root: number): number {
  let sum = 0;
  for (const pid of processTree(root)) {
    try {
      sum += Number(
        /VmRSS:\s+(\d+) kB/.exec(Deno.readTextFileSync(`/proc/${pid}/status`))?.[1] ?? 0,
      );
    } catch { /* gone */ }
  }
  return sum / 1024;
}

// ---- the set-up ---------------------------------------------------------

const dir = await Deno.makeTempDir({ prefix: "portmux-bench-peers-" });
const privload = join(dir, "privload");
const built = await $`cc -O2 -pthread -o ${privload} ${join(ROOT, "bench/privload.c")}`;
if (built.code !== 0) throw new Error(`building privload: ${built.stderr}`);

const echoService = await startEchoService(dir);
const { port: echoPort, socket } = echoService;
const echo = echoService.child;
const portmuxPort = freePort();
// One worker: the same single Deno.serve as the direct backend (with more
// workers portmux would have more cores for HTTPS than the baseline).
const portmux = await startPortmux(join(dir, "portmux"), benchConfig(portmuxPort, dir, socket), 1);
const https = await startHttpsBackend(dir);
const backendPort = https.port;
const backend = https.child;

const nginxPort = freePort();
await Deno.writeTextFile(
  join(dir, "nginx.conf"),
  `load_module ${STREAM_MODULE};
worker_processes auto;
pid ${dir}/nginx.pid;
error_log ${dir}/nginx-error.log;
events { worker_connections 16384; }
stream {
  map $ssl_preread_protocol $upstream { "" echo; default tls; }
  upstream tls { server 127.0.0.1:${backendPort}; }
  upstream echo { server 127.0.0.1:${echoPort}; }
  server { listen 127.0.0.1:${nginxPort}; ssl_preread on; proxy_pass $upstream; }
}
`,
);
const nginx = spawnQuiet("nginx", ["-c", join(dir, "nginx.conf"), "-g", "daemon off;"]);

const haproxyPort = freePort();
await Deno.writeTextFile(
  join(dir, "haproxy.cfg"),
  `global
  maxconn 9000
defaults
  mode tcp
  maxconn 9000
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend front
  bind 127.0.0.1:${haproxyPort}
  tcp-request inspect-delay 5s
  tcp-request content accept if { req.ssl_hello_type 1 }
  tcp-request content accept if { req.payload(0,4) -m bin 50524956 }
  use_backend tls if { req.ssl_hello_type 1 }
  default_backend echo
backend tls
  server b 127.0.0.1:${backendPort}
backend echo
  server e 127.0.0.1:${echoPort}
`,
);
const haproxy = spawnQuiet("haproxy", ["-db", "-f", join(dir, "haproxy.cfg")]);

const sslhPort = freePort();
const sslh = spawnQuiet("sslh-select", [
  "-f",
  "-p",
  `127.0.0.1:${sslhPort}`,
  "--tls",
  `127.0.0.1:${backendPort}`,
  "--anyprot",
  `127.0.0.1:${echoPort}`,
]);
for (const p of [nginxPort, haproxyPort, sslhPort, portmuxPort]) await waitForPort(p);

interface Target {
  readonly name: string;
  readonly https: number;
  readonly priv: number;
  /** The process whose tree's CPU and memory are the target's cost. */
  readonly pid: number | null;
}

const version = async (cmd: string, args: string[], re: RegExp) => {
  const r = await $`${cmd} ${args}`;
  return re.exec(r.stdout + r.stderr)?.[1] ?? "?";
};
const versions = {
  nginx: await version("nginx", ["-v"], /nginx\/(\S+)/),
  haproxy: await version("haproxy", ["-v"], /version (\S+)/),
  sslh: (await $`dpkg-query -W -f '\${Version}' sslh`).stdout,
  wrk: await version("wrk", ["--version"], /wrk (\S+)/),
  h2load: await version("h2load", ["--version"], /nghttp2\/(\S+)/),
};
const targets: Target[] = [
  { name: "direct", https: backendPort, priv: echoPort, pid: null },
  { name: "portmux", https: portmuxPort, priv: portmuxPort, pid: portmux.pid },
  { name: `nginx ${versions.nginx}`, https: nginxPort, priv: nginxPort, pid: nginx.pid },
  { name: `HAProxy ${versions.haproxy}`, https: haproxyPort, priv: haproxyPort, pid: haproxy.pid },
  { name: `sslh-select ${versions.sslh}`, https: sslhPort, priv: sslhPort, pid: sslh.pid },
];

// ---- the measures -------------------------------------------------------

/** A load's rate, and the CPU the server side spent per 10,000 of its
 * requests: the peer's processes and the HTTPS backend together (for
 * portmux, which serves HTTPS itself, the backend stays idle). */
interface Served {
  readonly rate: number;
  readonly cpuPer10k: number;
}

async function serving(
  t: Target,
  load: () => Promise<{ rate: number; requests: number }>,
): Promise<Served> {
  const serverCpu = () => (t.pid ? cpuSeconds(t.pid) : 0) + cpuSeconds(backend.pid);
  const cpu0 = serverCpu();
  const { rate, requests } = await load();
  return { rate, cpuPer10k: (serverCpu() - cpu0) / (requests / 10_000) };
}

async function wrk(port: number, extra: string[], seconds = SECONDS) {
  const r = await $`wrk -t2 -c64 -d${seconds}s ${extra} https://127.0.0.1:${port}/`;
  const m = /Requests\/sec:\s+([\d.]+)/.exec(r.stdout);
  const ok = m && !/Non-2xx/.test(r.stdout);
  const requests = Number(/(\d+) requests in/.exec(r.stdout)?.[1] ?? 0);
  return { rate: ok ? Number(m[1]) : NaN, requests };
}

async function h2(port: number, seconds = SECONDS) {
  const r = await $`h2load -t2 -c8 -m16 -D ${seconds} https://127.0.0.1:${port}/`;
  const m = /finished in [\d.]+m?s, ([\d.]+) req\/s/.exec(r.stdout);
  const counts = /requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed/
    .exec(r.stdout);
  const ok = m && counts?.[3] === "0";
  return { rate: ok ? Number(m[1]) : NaN, requests: Number(counts?.[2] ?? 0) };
}

async function privConns(t: Target) {
  const cpu0 = t.pid ? cpuSeconds(t.pid) : 0;
  const r = await $`${privload} conn 127.0.0.1 ${t.priv} 4 ${SECONDS}`;
  const cpu = t.pid ? cpuSeconds(t.pid) - cpu0 : 0;
  const j = JSON.parse(r.stdout);
  return {
    perSecond: j.connections / j.seconds,
    p50: j.p50_us / 1000,
    p99: j.p99_us / 1000,
    errors: j.errors as number,
    cpuPer10k: cpu / (j.connections / 10_000),
    generatorCores: j.cpu_s / j.seconds,
  };
}

async function bulk(port: number): Promise<number> {
  const r = await $`${privload} bulk 127.0.0.1 ${port} ${BULK_MIB}`;
  return r.code === 0 ? JSON.parse(r.stdout).mb_per_s : NaN;
}

async function idleMemory(t: Target): Promise<string> {
  if (!t.pid) return "n/a";
  const before = rssMiB(t.pid);
  const hold = new Deno.Command("python3", {
    args: [join(ROOT, "tests/services/load_clients.py"), "hold", String(t.priv), String(IDLE), "0"],
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const reader = hold.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const held = JSON.parse((await reader.read()).value ?? "{}");
  await new Promise((r) => setTimeout(r, 1000));
  const alive = await Deno.connect({ hostname: "127.0.0.1", port: t.priv }).then(
    (c) => (c.close(), true),
    () => false,
  );
  const grown = rssMiB(t.pid) - before;
  try {
    hold.kill("SIGKILL");
  } catch { /* done */ }
  await hold.status;
  await reader.cancel().catch(() => {});
  await new Promise((r) => setTimeout(r, 500));
  if (!alive) return `failed: stopped listening (${held.refused ?? "?"} refused)`;
  return `${grown.toFixed(1)} MiB${held.refused ? ` (${held.refused} refused)` : ""}`;
}

interface Row {
  h1: Served;
  h2: Served;
  tlsNew: Served;
  priv: Awaited<ReturnType<typeof privConns>>;
  bulk: number;
  idle: string;
}
const ROUNDS = Number(Deno.env.get("BENCH_ROUNDS") ?? 3);

/** Measures every target ROUNDS times, targets interleaved (the machine is
 * shared and noisy: each round sees the same conditions for all), and keeps
 * each target's median. */
async function interleaved<T>(measure: (t: Target) => Promise<T>, key: (v: T) => number) {
  const seen = new Map<string, T[]>(targets.map((t) => [t.name, []]));
  for (let r = 0; r < ROUNDS; r++) {
    for (const t of targets) seen.get(t.name)!.push(await measure(t));
  }
  return new Map(
    [...seen].map(([name, vs]) => {
      const m = median(vs.map(key));
      return [name, vs.find((v) => key(v) === m)!] as const;
    }),
  );
}

const results = new Map<string, Row>();
try {
  // Every target is warmed up first with each load (JIT, heap, caches):
  // otherwise the first measure finds them all cold.
  console.error("warming up...");
  for (const t of targets) {
    await wrk(t.https, [], WARM_UP_SECONDS);
    await h2(t.https, WARM_UP_SECONDS);
    await wrk(t.https, ["-H", "Connection: close"], WARM_UP_SECONDS);
    await $`${privload} conn 127.0.0.1 ${t.priv} 4 ${WARM_UP_SECONDS}`;
  }
  console.error(`HTTP/1.1 keep-alive, ${ROUNDS} rounds...`);
  const h1 = await interleaved((t) => serving(t, () => wrk(t.https, [])), (v) => v.rate);
  console.error("HTTP/2...");
  const h2s = await interleaved((t) => serving(t, () => h2(t.https)), (v) => v.rate);
  console.error("new TLS connections...");
  const tlsNew = await interleaved(
    (t) => serving(t, () => wrk(t.https, ["-H", "Connection: close"])),
    (v) => v.rate,
  );
  console.error("private connections...");
  const priv = await interleaved(privConns, (v) => v.perSecond);
  console.error("bulk...");
  const bulks = await interleaved((t) => bulk(t.priv), (v) => v);
  for (const t of targets) {
    console.error(`${IDLE} idle connections against ${t.name}...`);
    results.set(t.name, {
      h1: h1.get(t.name)!,
      h2: h2s.get(t.name)!,
      tlsNew: tlsNew.get(t.name)!,
      priv: priv.get(t.name)!,
      bulk: bulks.get(t.name)!,
      idle: await idleMemory(t),
    });
  }
} finally {
  for (const c of [portmux, nginx, haproxy, sslh, backend, echo]) await stopChild(c);
}

// ---- the report ---------------------------------------------------------

const direct = results.get("direct")!;
const ratio = (v: number, base: number, lowerIsBetter = false) =>
  Number.isFinite(v) ? (lowerIsBetter ? base / v : v / base) : NaN;
const cell = (v: number, unit: string, r: number) =>
  Number.isFinite(v)
    ? `${v >= 100 ? v.toFixed(0) : v.toFixed(2)} ${unit} (${r.toFixed(2)}x)`
    : "failed";
const metrics: [string, (r: Row) => number, string, boolean][] = [
  ["HTTPS keep-alive, HTTP/1.1 (wrk)", (r) => r.h1.rate, "req/s", false],
  ["HTTPS keep-alive, HTTP/2 (h2load)", (r) => r.h2.rate, "req/s", false],
  ["new TLS connections (Connection: close)", (r) => r.tlsNew.rate, "conn/s", false],
  ["server CPU per 10,000 HTTP/1.1 requests", (r) => r.h1.cpuPer10k, "s", true],
  ["server CPU per 10,000 HTTP/2 requests", (r) => r.h2.cpuPer10k, "s", true],
  ["server CPU per 10,000 new TLS connections", (r) => r.tlsNew.cpuPer10k, "s", true],
  ["private protocol: new connections", (r) => r.priv.perSecond, "conn/s", false],
  ["private protocol: median connect-to-echo", (r) => r.priv.p50, "ms", true],
  ["private protocol: p99 connect-to-echo", (r) => r.priv.p99, "ms", true],
  ["private protocol: bulk, one connection", (r) => r.bulk, "MB/s", false],
];
const names = targets.map((t) => t.name);
const lines = [
  `| measure | ${names.join(" | ")} |`,
  `| --- | ${names.map(() => "---").join(" | ")} |`,
  ...metrics.map(([what, get, unit, lower]) =>
    `| ${what} | ${
      names.map((n) =>
        cell(get(results.get(n)!), unit, ratio(get(results.get(n)!), get(direct), lower))
      ).join(" | ")
    } |`
  ),
  `| CPU seconds per 10,000 private connections | ${
    names.map((n) => n === "direct" ? "n/a" : results.get(n)!.priv.cpuPer10k.toFixed(2)).join(" | ")
  } |`,
  `| memory with ${IDLE.toLocaleString("en")} idle connections | ${
    names.map((n) => results.get(n)!.idle).join(" | ")
  } |`,
];
const generator = Math.max(...names.map((n) => results.get(n)!.priv.generatorCores));
const text = [
  `${machineLine()}; wrk ${versions.wrk}, h2load ${versions.h2load}`,
  "",
  `Every target warmed up with each load for ${WARM_UP_SECONDS} s, then ${ROUNDS} rounds of ` +
  `${SECONDS} s per measure and target, targets interleaved, median kept. ` +
  "Each cell: the figure, and in brackets its ratio to the direct path (1.00x = as fast as a " +
  "client straight to the backend or service; for latency, direct / peer). Private-protocol " +
  "errors: " + names.map((n) => `${n} ${results.get(n)!.priv.errors}`).join(", ") + ".",
  "",
  ...lines,
  "",
  `The private-protocol load comes from bench/privload.c (4 threads, blocking connect/send/recv/close ` +
  `in a loop). It used at most ${generator.toFixed(2)} of the 2 cores in any run: the generator ` +
  `had room to spare, and the single-threaded echo service behind every target bounds the direct ` +
  `figure. Server CPU for HTTPS: the peer's processes and the HTTPS backend together, per ` +
  `10,000 requests or connections (for portmux, which serves HTTPS itself, the idle backend adds ` +
  `nothing); it is what a whole machine pays for the same work when throughput is bounded by the ` +
  `backend's one thread, as it is for HTTP/2. CPU seconds for the private protocol are those of ` +
  `the peer's processes (portmux: launcher and workers; the echo service is not counted for ` +
  `anyone). Memory: the peer's resident memory with ${IDLE} silent clients held, minus before.`,
  "",
  "![ratios to direct](peers.svg)",
].join("\n");
console.log(text);
await writeSection("peers", text);
await Deno.writeTextFile(join(ROOT, "bench/peers.svg"), chart());
await formatInPlace(join(ROOT, "bench/peers.svg"));
console.error(`written to ${join(ROOT, "bench/peers.svg")}`);

/** A grouped bar chart of the ratios to direct. */
function chart(): string {
  const peers = names.filter((n) => n !== "direct");
  const colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];
  const rowH = 18 * peers.length + 14, left = 290, width = 420, maxRatio = 1.5;
  const x = (r: number) => left + (Math.min(r, maxRatio) / maxRatio) * width;
  const parts: string[] = [];
  metrics.forEach(([what, get, , lower], i) => {
    const y0 = 40 + i * rowH;
    parts.push(
      `<text x="${left - 8}" y="${y0 + rowH / 2}" text-anchor="end" font-size="12">${what}</text>`,
    );
    peers.forEach((p, k) => {
      const r = ratio(get(results.get(p)!), get(direct), lower);
      const w = Number.isFinite(r) ? x(r) - left : 0;
      parts.push(
        `<rect x="${left}" y="${y0 + k * 18}" width="${w.toFixed(1)}" height="14" fill="${
          colors[k]
        }"/>`,
      );
      parts.push(
        `<text x="${left + w + 4}" y="${y0 + k * 18 + 11}" font-size="10">${
          Number.isFinite(r) ? r.toFixed(2) + "x" : "failed"
        }</text>`,
      );
    });
  });
  const h = 40 + metrics.length * rowH + 20 + 18 * peers.length;
  const legend = peers.map((p, k) =>
    `<rect x="${left}" y="${h - 18 * (peers.length - k)}" width="12" height="12" fill="${
      colors[k]
    }"/>` +
    `<text x="${left + 18}" y="${h - 18 * (peers.length - k) + 10}" font-size="12">${p}</text>`
  );
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${
    left + width + 80
  }" height="${h}" font-family="sans-serif">
<text x="10" y="20" font-size="14" font-weight="bold">Ratio to direct (1.00 = as fast as no multiplexer), ${
    new Date().toISOString().slice(0, 10)
  }</text>
<line x1="${x(1)}" y1="30" x2="${x(1)}" y2="${
    40 + metrics.length * rowH
  }" stroke="#888" stroke-dasharray="4"/>
${parts.join("\n")}
${legend.join("\n")}
</svg>
`;
}
