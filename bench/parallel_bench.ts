/**
 * `deno task bench:parallel`: throughput with 1 vs 2 worker processes
 * (--parallel) on this machine, side by side in one run (alternating
 * rounds, median kept). Writes the "parallel" section of bench/RESULTS.md.
 */
import { join } from "node:path";
import { $, freePort } from "../tests/helpers/daemon.ts";
import {
  benchConfig,
  connectionLoad,
  httpsLoad,
  median,
  SECONDS,
  startEchoService,
  startPortmux,
} from "./load.ts";
import { machineLine, writeSection } from "./results.ts";

const ROUNDS = Number(Deno.env.get("BENCH_ROUNDS") ?? 3);
const dir = await Deno.makeTempDir({ prefix: "portmux-bench-parallel-" });
const echoService = await startEchoService(dir);
const { socket } = echoService;
const echo = echoService.child;
const ports = { one: freePort(), two: freePort() };
const one = await startPortmux(join(dir, "1"), benchConfig(ports.one, dir, socket), 1);
const two = await startPortmux(join(dir, "2"), benchConfig(ports.two, dir, socket), 2);
const caCert = await Deno.readTextFile(join(dir, "self-signed-cert.pem"));
const hasWrk = await $.commandExists("wrk");

const measures: [string, string, (port: number) => Promise<number>][] = [
  [
    "HTTPS keep-alive requests/s (wrk, 2 threads, 64 connections)",
    "req/s",
    (p) => httpsLoad(p, caCert, hasWrk ? ["-t2", "-c64"] : []),
  ],
  [
    "new TLS connections/s (wrk, Connection: close)",
    "conn/s",
    (p) => httpsLoad(p, caCert, hasWrk ? ["-t2", "-H", "Connection: close"] : []),
  ],
  ["handoff: new connections/s", "conn/s", async (p) => (await connectionLoad(p)).perSecond],
];
const rows: string[] = [];
try {
  for (const [what, unit, measure] of measures) {
    console.error(`${what}...`);
    const a: number[] = [], b: number[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      a.push(await measure(ports.one));
      b.push(await measure(ports.two));
    }
    rows.push(
      `| ${what} | ${median(a).toFixed(0)} ${unit} | ${median(b).toFixed(0)} ${unit} | ` +
        `${(median(b) / median(a)).toFixed(2)}x |`,
    );
  }
} finally {
  for (const p of [one, two, echo]) {
    p.kill("SIGTERM");
    await p.status;
  }
}
const text = [
  machineLine(),
  "",
  `${ROUNDS} alternating rounds of ${SECONDS}s, median kept. The load generators run on the same ` +
  "2 cores, so a second worker has at most what they leave over.",
  "",
  "| measure | --parallel 1 | --parallel 2 | 2 vs 1 |",
  "| --- | --- | --- | --- |",
  ...rows,
].join("\n");
console.log(text);
await writeSection("parallel", text);
