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
import { $, freePort } from "../tests/helpers/daemon.ts";
import {
  benchConfig,
  BULK_BYTES,
  bulkLoad,
  CONCURRENCY,
  connectionLoad,
  httpsLoad,
  median,
  SECONDS,
  sequentialLatency,
  startEchoService,
  startHttpsBackend,
  startPortmux,
  startPythonEchoService,
} from "./load.ts";
import { machineLine, writeSection } from "./results.ts";

const ROUNDS = Number(Deno.env.get("BENCH_ROUNDS") ?? 3);

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
const echoService = await startEchoService(dir);
const { port: echoPort, socket } = echoService;
const echo = echoService.child;
const portmuxPort = freePort();
const daemon = await startPortmux(dir, benchConfig(portmuxPort, dir, socket));
const backend = await startHttpsBackend(dir);
// The same measure of latency with a minimal receiver, through a second
// portmux: what the daemon adds, without the Deno receiver's own cost.
const pyEcho = await startPythonEchoService(dir);
const pyPortmuxPort = freePort();
const pyDaemon = await startPortmux(
  join(dir, "py"),
  benchConfig(pyPortmuxPort, join(dir, "py"), pyEcho.socket),
);
const httpsPort = backend.port;
const httpsDirect = backend.child;
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

  const [pd, pp] = await alternate(
    () => sequentialLatency(pyEcho.port),
    () => sequentialLatency(pyPortmuxPort),
  );
  const pyAdded = (median(pp) - median(pd)) * 1000;
  rows.push({
    metric: `handoff: the same, to a minimal Python receiver (portmux adds ${
      pyAdded.toFixed(0)
    } µs)`,
    direct: median(pd),
    portmux: median(pp),
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
  pyDaemon.kill("SIGTERM");
  await pyDaemon.status;
  pyEcho.child.kill();
  await pyEcho.child.status;
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

const wrk = (await $`wrk --version`).stdout.split("\n")[0] || "not installed (fetch loop)";
const header = [
  `${machineLine()}, wrk: ${wrk.trim()}`,
  `Settings: ${ROUNDS} alternating rounds of ${SECONDS}s per side, median kept; ` +
  `${CONCURRENCY} concurrent clients; bulk ${BULK_BYTES / 2 ** 20} MiB each way.`,
].join("\n");
console.log(`${header}\n\n${table}`);
await writeSection("through-daemon", `${header}\n\n${table}`);
