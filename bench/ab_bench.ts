/**
 * `deno task bench:ab REV [NEW]`: this tree (or the tree at revision NEW)
 * against the tree at git revision REV, both running side by side in one
 * run, rounds alternating (these machines are shared and noisy): handoff
 * new connections/s, handoff latency one at a time, and keep-alive HTTPS
 * requests/s, each as a ratio new/old. For a change that must leave speed
 * level (a restructure), or to find which change moved a figure. Writes
 * its section of bench/RESULTS.md.
 */
import { join } from "node:path";
import { $, freePort } from "../tests/helpers/daemon.ts";
import {
  benchConfig,
  connectionLoad,
  cpuSeconds,
  httpsLoad,
  median,
  ROOT,
  SECONDS,
  sequentialLatency,
  startEchoService,
  startPortmux,
  stopChild,
} from "./load.ts";
import { machineLine, writeSection } from "./results.ts";

const ROUNDS = Number(Deno.env.get("BENCH_ROUNDS") ?? 5);
const [rev, newRev] = Deno.args;
if (!rev) {
  console.error("usage: deno task bench:ab REV [NEW]   (git revisions; NEW: this tree)");
  Deno.exit(2);
}
/** Runs a command that must succeed; its output. */
async function must(cmd: string, args: string[]): Promise<string> {
  const r = await $`${cmd} ${args}`;
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(" ")}: ${r.stderr.trim()}`);
  return r.stdout.trim();
}

const oldSha = await must("git", ["-C", ROOT, "rev-parse", "--short", rev]);
const newSha = await must("git", ["-C", ROOT, "rev-parse", "--short", newRev ?? "HEAD"]);
const dirty = !newRev &&
  await must("git", ["-C", ROOT, "status", "--porcelain", "--untracked-files=no"]) !== "";

const dir = await Deno.makeTempDir({ prefix: "portmux-ab-" });
const oldRoot = join(dir, "old") + "/";
const newRoot = newRev ? join(dir, "new") + "/" : ROOT;
const worktrees = newRev ? [[oldRoot, rev], [newRoot, newRev]] : [[oldRoot, rev]];
for (const [root, r] of worktrees) {
  await must("git", ["-C", ROOT, "worktree", "add", "--detach", root!, r!]);
}

interface Row {
  metric: string;
  old: number[];
  new: number[];
  unit: string;
  lowerIsBetter?: boolean;
}

/** Each measure ROUNDS times per tree, alternating which goes first. */
async function ab(
  metric: string,
  unit: string,
  measure: (port: number, daemon: Deno.ChildProcess) => Promise<number>,
) {
  const row: Row = { metric, unit, old: [], new: [] };
  for (let i = 0; i < ROUNDS; i++) {
    const order = i % 2 ? ["new", "old"] as const : ["old", "new"] as const;
    for (const side of order) row[side].push(await measure(ports[side], daemons[side]!));
  }
  return row;
}

/** Handoffs per second, and the daemon's CPU seconds per 10,000 of them. */
const handoffCpu = new Map<number, number[]>();
async function handoffRate(port: number, daemon: Deno.ChildProcess): Promise<number> {
  const cpu0 = cpuSeconds(daemon.pid);
  const r = await connectionLoad(port);
  const cpu = cpuSeconds(daemon.pid) - cpu0;
  handoffCpu.set(port, [...handoffCpu.get(port) ?? [], cpu / (r.perSecond * SECONDS / 10_000)]);
  return r.perSecond;
}

const ports = { old: freePort(), new: freePort() };
const rows: Row[] = [];
let echo: Awaited<ReturnType<typeof startEchoService>> | undefined;
const daemons: { old?: Deno.ChildProcess; new?: Deno.ChildProcess } = {};
try {
  for (const [root] of worktrees) {
    await must(Deno.execPath(), ["run", "-A", join(root!, "src/build_shim.ts"), "--force"]);
  }
  echo = await startEchoService(dir);
  daemons.old = await startPortmux(
    join(dir, "d-old"),
    benchConfig(ports.old, join(dir, "d-old"), echo.socket),
    1,
    oldRoot,
  );
  daemons.new = await startPortmux(
    join(dir, "d-new"),
    benchConfig(ports.new, join(dir, "d-new"), echo.socket),
    1,
    newRoot,
  );
  const caCert = await Deno.readTextFile(join(dir, "d-new", "self-signed-cert.pem"));
  for (const port of [ports.old, ports.new]) await connectionLoad(port); // warm-up
  console.error(`A/B ${newSha} against ${oldSha}: ${ROUNDS} rounds per side...`);
  rows.push(await ab("handoff: new connections/s", "conn/s", handoffRate));
  rows.push({
    metric: "handoff: the daemon's CPU seconds per 10,000 connections",
    unit: "s",
    old: handoffCpu.get(ports.old)!,
    new: handoffCpu.get(ports.new)!,
    lowerIsBetter: true,
  });
  rows.push({
    ...await ab("handoff: connect-to-first-echo, one at a time", "ms", sequentialLatency),
    lowerIsBetter: true,
  });
  rows.push(await ab("https: keep-alive requests/s", "req/s", (p) => httpsLoad(p, caCert)));
} finally {
  for (const d of [daemons.old, daemons.new]) if (d) await stopChild(d);
  if (echo) await stopChild(echo.child);
  for (const [root] of worktrees) await $`git -C ${ROOT} worktree remove --force ${root!}`;
  await Deno.remove(dir, { recursive: true });
}

const fmt = (n: number) => (n >= 100 ? n.toFixed(0) : n.toFixed(3));
const lines = rows.map((r) => {
  const o = median(r.old), n = median(r.new);
  const ratio = r.lowerIsBetter ? o / n : n / o;
  return `| ${r.metric} | ${fmt(o)} | ${fmt(n)} | ${r.unit} | **${ratio.toFixed(2)}x** |`;
});
const text = `## A/B of two trees (\`deno task bench:ab\`)

${machineLine()}. ${newRev ? "The tree" : "This tree"} (${newSha}${
  dirty ? ", with changes" : ""
}) against ${oldSha}, side by
side, ${ROUNDS} rounds each, medians; the ratio is this tree's (above 1: faster). A tree against
itself (\`deno task bench:ab REV REV\`) moved these ratios by up to 12% on a 2-core machine: read
smaller differences as level.

| measure | ${oldSha} | ${newSha} | unit | ratio |
| --- | --- | --- | --- | --- |
${lines.join("\n")}
`;
console.log(text);
await writeSection("ab", text);
