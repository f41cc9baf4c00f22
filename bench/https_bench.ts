/**
 * `deno task bench:https`: HTTPS through portmux against Deno.serve alone,
 * per site, and the bridge fallback next to accept injection. Writes the
 * "https" section of bench/RESULTS.md.
 *
 * portmux serves two sites (two certificates, chosen by SNI: one internal
 * Deno.serve each). The baseline of each site is a Deno.serve of its own
 * with that site's certificate and the same handler. Clients name the site
 * by SNI: h2load (--connect-to) for keep-alive HTTP/1.1 and HTTP/2, and
 * bench/tlsload.c for new TLS connections (wrk cannot set a server name).
 * The bridge is portmux started without the preloaded shim.
 */
import { join } from "node:path";
import { $, freePort } from "../tests/helpers/daemon.ts";
import { waitForPort } from "../tests/helpers/peers.ts";
import { median, ROOT, spawnReady, startPortmux, stopChild } from "./load.ts";
import { machineLine, writeSection } from "./results.ts";

const ROUNDS = Number(Deno.env.get("BENCH_ROUNDS") ?? 3);
const SECONDS = Number(Deno.env.get("BENCH_SECONDS") ?? 3);
const WARM_UP_SECONDS = 1;
const SITES = ["a.example", "b.example"] as const;

const missing = [];
for (const cmd of ["h2load", "cc"]) {
  if (!await $.commandExists(cmd)) missing.push(cmd);
}
if (missing.length) {
  console.error(`bench:https needs ${missing.join(", ")} (apt-get install nghttp2-client gcc)`);
  Deno.exit(1);
}

const dir = await Deno.makeTempDir({ prefix: "portmux-bench-https-" });
const tlsload = join(dir, "tlsload");
const built = await $`cc -O2 -pthread -o ${tlsload} ${join(ROOT, "bench/tlsload.c")} \
  -lssl -lcrypto`;
if (built.code !== 0) throw new Error(`building tlsload (needs libssl-dev): ${built.stderr}`);

const files = (site: string) => ({
  cert: join(dir, `${site}-cert.pem`),
  key: join(dir, `${site}-key.pem`),
});
for (const site of SITES) {
  const { cert, key } = files(site);
  const made = await $`openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -days 2 -subj /CN=${site} -addext subjectAltName=DNS:${site} -keyout ${key} -out ${cert}`;
  if (made.code !== 0) throw new Error(`openssl req: ${made.stderr}`);
}

function sitesConfig(port: number): string {
  const certificates = SITES.map((site) => {
    const { cert, key } = files(site);
    return `    - { names: [${site}], cert: ${JSON.stringify(cert)}, key: ${JSON.stringify(key)} }`;
  });
  return `
listen: [{ address: 127.0.0.1, port: ${port} }]
data_dir: ${JSON.stringify(join(dir, "data"))}
limits: { max_per_source: 100000, max_preread: 100000, max_connections: 100000 }
tls:
  certificates:
${certificates.join("\n")}
https: { handler: ${JSON.stringify(join(ROOT, "bench/hello_handler.ts"))} }
routes:
  - { name: web, match: { protocol: tls }, action: https }
`;
}

/** portmux without the preloaded shim: HTTPS goes through the bridge. */
async function startBridged(port: number): Promise<Deno.ChildProcess> {
  const file = join(dir, "bridge.yaml");
  await Deno.writeTextFile(file, sitesConfig(port));
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", join(ROOT, "src/main.ts"), "--config", file],
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  await waitForPort(port, 30_000);
  return child;
}

interface Target {
  readonly name: string;
  /** The port that serves a site. */
  port(site: string): number;
}

const injectPort = freePort(), bridgePort = freePort();
const injected = await startPortmux(join(dir, "inject"), sitesConfig(injectPort), 1);
const bridged = await startBridged(bridgePort);
const direct = new Map<string, { port: number; child: Deno.ChildProcess }>();
for (const site of SITES) {
  const port = freePort();
  const { cert, key } = files(site);
  const child = await spawnReady("bench/https_direct.ts", [
    "--port",
    String(port),
    "--cert",
    cert,
    "--key",
    key,
  ]);
  direct.set(site, { port, child });
}
const targets: Target[] = [
  { name: "Deno.serve alone", port: (site) => direct.get(site)!.port },
  { name: "portmux (injection)", port: () => injectPort },
  { name: "portmux (bridge)", port: () => bridgePort },
];

async function h2load(
  port: number,
  site: string,
  extra: string[],
  seconds = SECONDS,
): Promise<number> {
  const r = await $`h2load ${extra} -D ${seconds} --connect-to=127.0.0.1:${port} https://${site}/`;
  const m = /finished in [\d.]+m?s, ([\d.]+) req\/s/.exec(r.stdout);
  const failed = /requests: .* (\d+) failed/.exec(r.stdout);
  return m && failed?.[1] === "0" ? Number(m[1]) : NaN;
}

async function newConnections(port: number, site: string, seconds = SECONDS): Promise<number> {
  const r = await $`${tlsload} 127.0.0.1 ${port} ${site} 8 ${seconds}`;
  const j = JSON.parse(r.stdout);
  return j.errors === 0 ? j.connections / j.seconds : NaN;
}

type Measure = (port: number, site: string, seconds?: number) => Promise<number>;
const measures: [string, string, Measure][] = [
  [
    "keep-alive HTTP/1.1 (h2load --h1, 64 connections)",
    "req/s",
    (p, s, seconds) => h2load(p, s, ["--h1", "-t2", "-c64"], seconds),
  ],
  [
    "keep-alive HTTP/2 (h2load, 8 connections x 16 streams)",
    "req/s",
    (p, s, seconds) => h2load(p, s, ["-t2", "-c8", "-m16"], seconds),
  ],
  ["new TLS connections (tlsload, 8 threads, Connection: close)", "conn/s", newConnections],
];

const rows: string[] = [];
try {
  // Every server is warmed up first with each load (JIT, heap, TLS
  // session caches): otherwise the first measure finds them all cold.
  console.error("warming up...");
  for (const t of targets) {
    for (const site of SITES) {
      for (const [, , measure] of measures) await measure(t.port(site), site, WARM_UP_SECONDS);
    }
  }
  for (const [what, unit, measure] of measures) {
    for (const site of SITES) {
      console.error(`${what}, ${site}...`);
      const seen = targets.map(() => [] as number[]);
      for (let r = 0; r < ROUNDS; r++) {
        for (const [i, t] of targets.entries()) seen[i]!.push(await measure(t.port(site), site));
      }
      const base = median(seen[0]!);
      const cells = seen.map((vs, i) => {
        const m = median(vs);
        return i === 0
          ? `${m.toFixed(0)} ${unit}`
          : `${m.toFixed(0)} ${unit} (${(m / base).toFixed(2)}x)`;
      });
      rows.push(`| ${what} | ${site} | ${cells.join(" | ")} |`);
    }
  }
} finally {
  await stopChild(injected);
  await stopChild(bridged);
  for (const d of direct.values()) await stopChild(d.child);
}

const h2loadVersion = /nghttp2\/(\S+)/.exec(await $`h2load --version`.text())?.[1];
const text = [
  `${machineLine()}; h2load ${h2loadVersion}`,
  "",
  `Every server warmed up with each load for ${WARM_UP_SECONDS} s, then ${ROUNDS} rounds of ` +
  `${SECONDS}s per measure, targets interleaved, median kept; in brackets ` +
  "the ratio to Deno.serve alone with the same site's certificate and handler (1.00x = as fast).",
  "",
  `| measure | site (SNI) | ${targets.map((t) => t.name).join(" | ")} |`,
  `| --- | --- | ${targets.map(() => "---").join(" | ")} |`,
  ...rows,
].join("\n");
console.log(text);
await writeSection("https", text);
