/**
 * `deno task bench:ops`: what the operations an operator performs cost the
 * clients, in counts of connections rather than timings. For each of
 *
 * - SIGHUP reload, SIGUSR2 upgrade in place,
 * - a restart while the listening socket is held (socket activation:
 *   tests/services/socket_holder.py plays systemd),
 * - SIGKILL of one worker, stop (SIGTERM to the launcher),
 *
 * a fresh portmux (`--parallel 2`, through src/launch.ts) serves two loads:
 * 8 threads of private-protocol connections handed off to a C echo service
 * (bench/handoff_echo.c; bench/privload.c classify) and new TLS connections
 * (bench/tlsload.c classify, 2 threads). After BEFORE_MS the operation is
 * performed and its completion awaited in the log; the load goes on for
 * BENCH_SECONDS (default 2) more, then every connection attempted is
 * counted as served, refused, reset or other. Writes the "ops" section of
 * bench/RESULTS.md.
 */
import { join } from "node:path";
import { $, freePort } from "../tests/helpers/daemon.ts";
import { readLines } from "../tests/helpers/lines.ts";
import { waitForPort } from "../tests/helpers/peers.ts";
import { benchConfig, ROOT } from "./load.ts";
import { machineLine, writeSection } from "./results.ts";

const SECONDS = Number(Deno.env.get("BENCH_SECONDS") ?? 2);
const BEFORE_MS = 1000;
const WORKERS = 2;
const PRIV_THREADS = 8;
const TLS_THREADS = 2;
const OP_TIMEOUT_MS = 60_000;
const HOLDER = join(ROOT, "tests/services/socket_holder.py");

// ---- the tools ----------------------------------------------------------

const dir = await Deno.makeTempDir({ prefix: "portmux-bench-ops-" });
const privload = join(dir, "privload");
const tlsload = join(dir, "tlsload");
const echoBin = join(dir, "handoff_echo");
for (
  const [out, src, libs] of [
    [privload, "bench/privload.c", []],
    [tlsload, "bench/tlsload.c", ["-lssl", "-lcrypto"]],
    [echoBin, "bench/handoff_echo.c", []],
  ] as const
) {
  const built = await $`cc -O2 -pthread -o ${out} ${join(ROOT, src)} ${libs}`;
  if (built.code !== 0) {
    throw new Error(`building ${src}${libs.length ? " (needs libssl-dev)" : ""}: ${built.stderr}`);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---- portmux and its log ------------------------------------------------

type Event = Record<string, unknown> & { event: string; at: number };
/** The lines that say an operation failed: no use waiting for it. */
const FAILED = ["reload-failed", "upgrade-failed"];

/** portmux (or the holder running it) with its log read as it comes. */
class Watched {
  readonly events: Event[] = [];
  readonly stderr: string[] = [];
  readonly #writer: WritableStreamDefaultWriter<Uint8Array> | null;
  exited = false;

  constructor(readonly child: Deno.ChildProcess, stdin: boolean) {
    this.#writer = stdin ? child.stdin.getWriter() : null;
    child.status.then(() => this.exited = true);
    readLines(child.stdout, (line) => {
      // One line per connection, thousands: skipped before parsing.
      if (line.includes('"event":"connection"')) return;
      try {
        this.events.push({ ...JSON.parse(line), at: performance.now() });
      } catch { /* not JSON */ }
    });
    readLines(child.stderr, (line) => this.stderr.push(line));
  }

  count(event: string): number {
    return this.events.filter((e) => e.event === event).length;
  }

  /** Waits until test() holds; the time it took is the caller's. */
  async until(test: () => boolean, what: string): Promise<void> {
    const end = performance.now() + OP_TIMEOUT_MS;
    while (!test()) {
      const failed = this.events.find((e) => FAILED.includes(e.event));
      if (failed) throw new Error(`waiting for ${what}: ${JSON.stringify(failed)}`);
      if (this.exited || performance.now() > end) {
        const why = this.exited ? "it exited" : `not within ${OP_TIMEOUT_MS} ms`;
        throw new Error(`no ${what}: ${why}; stderr:\n${this.stderr.join("\n")}`);
      }
      await sleep(5);
    }
  }

  /** The holder's stdin (socket activation only). */
  async say(line: string): Promise<void> {
    await this.#writer?.write(new TextEncoder().encode(line + "\n"));
  }

  /** Stops it, however it runs, and waits for it. */
  async stop(): Promise<void> {
    try {
      if (this.#writer) await this.say("stop");
      else this.child.kill("SIGTERM");
    } catch { /* gone already */ }
    await this.child.status;
  }
}

/** portmux through the launcher, or under the holder (held: true). */
async function startPortmux(port: number, socket: string, held: boolean): Promise<Watched> {
  const file = join(dir, "portmux.yaml");
  await Deno.writeTextFile(file, benchConfig(port, dir, socket));
  const launcher = [
    Deno.execPath(),
    "run",
    "-A",
    join(ROOT, "src/launch.ts"),
    "--parallel",
    String(WORKERS),
    "--config",
    file,
  ];
  const [cmd, ...args] = held ? ["python3", HOLDER, String(port), ...launcher] : launcher;
  const child = new Deno.Command(cmd!, {
    args,
    cwd: ROOT,
    env: { PORTMUX_LOG_FORMAT: "json" },
    stdin: held ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const p = new Watched(child, held);
  await p.until(() => p.count("started") === WORKERS, `${WORKERS} workers started`);
  await waitForPort(port);
  return p;
}

// ---- the loads ----------------------------------------------------------

interface Counts {
  attempted: number;
  served: number;
  refused: number;
  reset: number;
  other: number;
  timeout: number;
}
type LoadResult = Counts & {
  /** The connections begun after the operation began. */
  after: Counts;
  seconds: number;
  max_gap_ms: number;
  gap_from_ms: number;
};

interface Load {
  mark(): void;
  stop(): Promise<LoadResult>;
}

/** A load generator in classify mode, run until stop(). */
function startLoad(cmd: string, args: string[]): Load {
  const child = new Deno.Command(cmd, { args, stdout: "piped", stderr: "inherit" }).spawn();
  const output = child.output();
  return {
    mark: () => child.kill("SIGUSR1"),
    async stop() {
      child.kill("SIGTERM");
      const out = await output;
      return JSON.parse(new TextDecoder().decode(out.stdout));
    },
  };
}

// ---- the operations -----------------------------------------------------

/** What an operation did: how long until its completion line, what that
 * was, and (worker SIGKILL) how many client connections the worker held. */
interface Done {
  ms: number;
  until: string;
  held?: number;
}

interface Operation {
  readonly name: string;
  readonly held: boolean; // runs under the socket holder
  readonly target: string;
  perform(p: Watched, port: number): Promise<Done>;
}

/** The client connections (to port) the process has open: those its
 * death cuts. Its socket fds, found in the kernel's TCP table. */
function clientConnections(pid: number, port: number): number {
  const inodes = new Set<string>();
  for (const e of Deno.readDirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(Deno.readLinkSync(`/proc/${pid}/fd/${e.name}`));
      if (m) inodes.add(m[1]!);
    } catch { /* closed meanwhile */ }
  }
  let n = 0;
  for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    for (const line of Deno.readTextFileSync(table).split("\n").slice(1)) {
      const f = line.trim().split(/\s+/); // sl local rem st ... inode (10th)
      if (f.length < 10) continue;
      const local = parseInt(f[1]!.split(":")[1]!, 16);
      if (local === port && f[3] !== "0A" /* LISTEN */ && inodes.has(f[9]!)) n++;
    }
  }
  return n;
}

const timed = async (start: () => void | Promise<void>, wait: () => Promise<void>) => {
  const t0 = performance.now();
  await start();
  await wait();
  return performance.now() - t0;
};

const OPERATIONS: Operation[] = [
  {
    name: "SIGHUP reload",
    held: false,
    target: "0 failed",
    async perform(p) {
      const before = p.count("reloaded");
      const ms = await timed(
        () => p.child.kill("SIGHUP"),
        () => p.until(() => p.count("reloaded") === before + WORKERS, "reloaded"),
      );
      return { ms, until: `reloaded ×${WORKERS}` };
    },
  },
  {
    name: "SIGUSR2 upgrade in place",
    held: false,
    target: "0 failed",
    async perform(p) {
      const ms = await timed(
        () => p.child.kill("SIGUSR2"),
        () => p.until(() => p.count("upgraded") === 1, "upgraded"),
      );
      return { ms, until: "upgraded" };
    },
  },
  {
    name: "restart, socket held (socket activation)",
    held: true,
    target: "0 failed",
    async perform(p) {
      const ms = await timed(
        () => p.say("restart"),
        () =>
          p.until(
            () => p.count("restarted") === 1 && p.count("started") === 2 * WORKERS,
            "restarted, then started",
          ),
      );
      return { ms, until: `restarted, then started ×${WORKERS}` };
    },
  },
  {
    name: "SIGKILL of one worker",
    held: false,
    target: "failed ≤ what the worker held",
    async perform(p, port) {
      const pid = p.events.find((e) => e.event === "started")!.pid as number;
      let held = 0;
      const ms = await timed(() => {
        // Frozen for the count, so that it is what the kill cuts.
        Deno.kill(pid, "SIGSTOP");
        held = clientConnections(pid, port);
        Deno.kill(pid, "SIGKILL");
      }, () =>
        p.until(
          () => p.count("worker-exited") === 1 && p.count("started") === WORKERS + 1,
          "worker-exited, then started",
        ));
      return { ms, until: "worker-exited, then started", held };
    },
  },
  {
    name: "stop (SIGTERM to the launcher)",
    held: false,
    target: "0 accepted then cut",
    async perform(p) {
      const ms = await timed(() => p.child.kill("SIGTERM"), async () => {
        await p.child.status;
      });
      return { ms, until: "the launcher exited" };
    },
  },
];

// ---- one run per operation ----------------------------------------------

interface Row {
  op: Operation;
  done: Done;
  priv: LoadResult;
  tls: LoadResult;
}

const socket = join(dir, "echo.sock");
const echo = new Deno.Command(echoBin, { args: [socket], stdout: "piped" }).spawn();
const echoOut = echo.stdout.pipeThrough(new TextDecoderStream()).getReader();
if ((await echoOut.read()).value?.trim() !== "ready") throw new Error("handoff_echo did not start");

const rows: Row[] = [];
try {
  for (const op of OPERATIONS) {
    console.error(`${op.name}...`);
    const port = freePort();
    const p = await startPortmux(port, socket, op.held);
    try {
      const at = ["127.0.0.1", String(port)];
      const priv = startLoad(privload, ["classify", ...at, String(PRIV_THREADS), "0"]);
      const tls = startLoad(tlsload, ["classify", ...at, "localhost", String(TLS_THREADS), "0"]);
      await sleep(BEFORE_MS);
      priv.mark();
      tls.mark();
      const done = await op.perform(p, port);
      await sleep(SECONDS * 1000);
      rows.push({ op, done, priv: await priv.stop(), tls: await tls.stop() });
    } finally {
      await p.stop();
    }
  }
} finally {
  echo.kill("SIGTERM");
  await echo.status;
}

// ---- the report ---------------------------------------------------------

const isStop = (r: Row) => r.op.name.startsWith("stop");
/** The failures a target counts: for stop, only accepted-then-cut ones and
 * refusals before it (a refusal after the port closed is what a stop is). */
const failed = (r: Row, l: LoadResult) =>
  isStop(r) ? l.reset + l.other + (l.refused - l.after.refused) : l.refused + l.reset + l.other;
const met = (r: Row) => {
  const f = failed(r, r.priv) + failed(r, r.tls);
  return r.done.held !== undefined ? f <= r.done.held : f === 0;
};
const gap = (r: Row, l: LoadResult) =>
  isStop(r)
    ? "n/a (stopped)"
    : `${l.max_gap_ms.toFixed(0)} ms (from ${l.gap_from_ms >= 0 ? "+" : ""}${
      l.gap_from_ms.toFixed(0)
    } ms)`;

function table(r: Row): string {
  const loads = [
    [`private protocol (${PRIV_THREADS} threads, C echo by handoff)`, r.priv],
    [`new TLS connections (${TLS_THREADS} threads)`, r.tls],
  ] as const;
  const refusedHead = isStop(r) ? "refused before the stop | refused after it" : "refused";
  const refused = (l: LoadResult) =>
    isStop(r) ? `${l.refused - l.after.refused} | ${l.after.refused}` : String(l.refused);
  const heldNote = r.done.held === undefined
    ? ""
    : ` The worker held ${r.done.held} client connections when killed.`;
  const f = failed(r, r.priv) + failed(r, r.tls);
  return [
    `**${r.op.name}**: done in ${r.done.ms.toFixed(0)} ms (${r.done.until}).${heldNote} ` +
    `Target: ${r.op.target}; ${isStop(r) ? "accepted then cut" : "failed"}: ${f} ` +
    `(${met(r) ? "met" : "NOT MET"}).`,
    "",
    `| load | attempted | served | served, begun after the operation | ${refusedHead} | reset | ` +
    "other (of which timeouts) | longest time without a connection served |",
    `| --- | ---: | ---: | ---: | ---: |${isStop(r) ? " ---: |" : ""} ---: | ---: | --- |`,
    ...loads.map(([what, l]) =>
      `| ${what} | ${l.attempted} | ${l.served} | ${l.after.served} | ${
        refused(l)
      } | ${l.reset} | ` +
      `${l.other} (${l.timeout}) | ${gap(r, l)} |`
    ),
  ].join("\n");
}

const text = [
  machineLine(),
  "",
  `portmux with \`--parallel ${WORKERS}\`, started afresh for each operation. Loads: ` +
  `bench/privload.c classify (${PRIV_THREADS} threads, each one private-protocol connection ` +
  "after another, handed off to bench/handoff_echo.c, a C echo service) and bench/tlsload.c " +
  `classify (${TLS_THREADS} threads, each one new TLS connection after another, ` +
  "`Connection: close`). The operation came " +
  `${BEFORE_MS / 1000} s into the load, which went on for ${SECONDS} s after the operation's ` +
  "completion line. Served: the whole echo or a whole 200 answer. Refused: ECONNREFUSED at " +
  "connect. Reset: ECONNRESET, or the end of the stream before a whole answer, after connect. " +
  "Other: anything else (no answer within 10 s is a timeout). The longest time without a " +
  "connection served is measured between the ends of served connections (the load's start " +
  "and end count), and placed relative to the operation (+: after it began). Worker SIGKILL: " +
  "the worker is frozen (SIGSTOP) to count the client connections it holds, then killed.",
  "",
  ...rows.flatMap((r) => [table(r), ""]),
].join("\n");
console.log(text);
await writeSection("ops", text);
