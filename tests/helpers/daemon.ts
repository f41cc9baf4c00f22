/**
 * Starts the real daemon as its own process for a test and reads its JSON
 * log: through the launcher (accept injection) or src/main.ts run by hand
 * (the bridge fallback).
 */
import { join } from "node:path";
import { build$ } from "dax";
import { readLines } from "./lines.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

export type LogLine = Record<string, unknown> & { event: string; level: string };

export interface DaemonOptions {
  /** YAML text; omitted: the embedded default. */
  readonly config?: string;
  /** true: start through src/launch.ts (preloaded shim); false: main.ts. */
  readonly inject?: boolean;
  /** Start with `deno task start`, exactly as the README says. */
  readonly viaTask?: boolean;
  /** Worker processes (--parallel) when started through the launcher;
   * default 1, so that the daemon is one process a test can watch. */
  readonly workers?: number;
  readonly dataDir?: string;
  readonly args?: string[];
  /** A hard limit of open files (`ulimit -n`) the daemon cannot raise. */
  readonly openFiles?: number;
  /** More environment for the daemon (e.g. PORTMUX_TEST_FAULTS). */
  readonly env?: Record<string, string>;
  /** Its own process group (setsid), which a test may signal as a whole,
   * as a terminal's Ctrl-C or systemd does (the group's id is launcherPid). */
  readonly ownGroup?: boolean;
}

export class TestDaemon {
  readonly logs: LogLine[] = [];
  readonly stderr: string[] = [];
  #waiters: { pred: (l: LogLine) => boolean; resolve: (l: LogLine) => void }[] = [];
  readonly #child: Deno.ChildProcess;
  readonly #done: Promise<void>;
  pid = 0;
  port = 0;
  internalPort = 0;

  constructor(child: Deno.ChildProcess) {
    this.#child = child;
    const out = readLines(child.stdout, (line) => {
      let parsed: LogLine;
      try {
        parsed = JSON.parse(line);
      } catch {
        return; // the task runner's own banner
      }
      this.logs.push(parsed);
      this.#waiters = this.#waiters.filter((w) => !(w.pred(parsed) && (w.resolve(parsed), true)));
    });
    const err = readLines(child.stderr, (line) => this.stderr.push(line));
    this.#done = Promise.all([out, err]).then(() => {});
  }

  /** The first log line (past or future) that pred accepts. */
  waitFor(pred: (l: LogLine) => boolean, timeoutMs = 10_000): Promise<LogLine> {
    const seen = this.logs.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(
          new Error(
            `no such log line within ${timeoutMs} ms; log:\n${
              this.logs.map((l) => JSON.stringify(l)).join("\n")
            }\nstderr:\n${this.stderr.join("\n")}`,
          ),
        );
      }, timeoutMs);
      this.#waiters.push({
        pred,
        resolve: (l) => {
          clearTimeout(timer);
          resolve(l);
        },
      });
    });
  }

  /** The log line for the connection from this client port. */
  connection(clientPort: number, timeoutMs = 10_000): Promise<LogLine> {
    return this.waitFor(
      (l) => l.event === "connection" && String(l.client).endsWith(`:${clientPort}`),
      timeoutMs,
    );
  }

  /** The process the test started (the launcher, when there is one). */
  get launcherPid(): number {
    return this.#child.pid;
  }

  /** The daemon process's open fds (the daemon, not the launcher). */
  fdCount(): number {
    return [...Deno.readDirSync(`/proc/${this.pid}/fd`)].length;
  }

  /** Waits until the fd count is at most target; returns the last count. */
  async settleFds(target: number, timeoutMs = 10_000): Promise<number> {
    const end = Date.now() + timeoutMs;
    let n = this.fdCount();
    while (n > target && Date.now() < end) {
      await new Promise((r) => setTimeout(r, 100));
      n = this.fdCount();
    }
    return n;
  }

  /** Waits for the daemon to exit on its own (a stop already asked for). */
  async exited(timeoutMs = 15_000): Promise<Deno.CommandStatus> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`still running after ${timeoutMs} ms`)), timeoutMs);
    });
    try {
      const status = await Promise.race([this.#child.status, late]);
      await this.#done;
      return status;
    } finally {
      clearTimeout(timer);
    }
  }

  async stop(): Promise<Deno.CommandStatus> {
    try {
      this.#child.kill("SIGTERM");
    } catch { /* gone */ }
    const status = await this.#child.status;
    await this.#done;
    return status;
  }
}

/** Starts a daemon and waits until it listens. */
export async function startDaemon(opts: DaemonOptions = {}): Promise<TestDaemon> {
  const dataDir = opts.dataDir ?? await Deno.makeTempDir({ prefix: "portmux-test-" });
  const args = [...(opts.args ?? [])];
  if (opts.config !== undefined) {
    const file = join(dataDir, "config.yaml");
    await Deno.writeTextFile(file, opts.config);
    args.push("--config", file);
  }
  const entry = opts.inject === false ? "src/main.ts" : "src/launch.ts";
  if (entry === "src/launch.ts" || opts.viaTask) args.push("--parallel", String(opts.workers ?? 1));
  const command = [
    Deno.execPath(),
    ...(opts.viaTask ? ["task", "start"] : ["run", "-A", join(ROOT, entry)]),
    ...args,
  ];
  const limited = opts.openFiles === undefined
    ? command
    : ["bash", "-c", `ulimit -n ${opts.openFiles} && exec "$0" "$@"`, ...command];
  const [program, ...programArgs] = opts.ownGroup ? ["setsid", ...limited] : limited;
  // Deno.Command, not dax: TestDaemon reads its pipes as it runs and stops it with SIGTERM.
  const child = new Deno.Command(program!, {
    args: programArgs,
    cwd: ROOT,
    env: {
      PORTMUX_DATA_DIR: dataDir,
      ...(entry === "src/main.ts" && !opts.viaTask ? { LD_PRELOAD: withoutShim() } : {}),
      ...opts.env,
    },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const daemon = new TestDaemon(child);
  const started = await daemon.waitFor((l) => l.event === "started", 30_000);
  daemon.pid = started.pid as number;
  const listening = await daemon.waitFor((l) => l.event === "listening");
  daemon.port = Number(String(listening.address).split(":").pop());
  const https = daemon.logs.find((l) => l.event === "https-ready");
  if (https) daemon.internalPort = https.internal_port as number;
  return daemon;
}

/** LD_PRELOAD without the shim: src/main.ts runs the bridge fallback even
 * when the tests run with the shim preloaded (`deno task test:asan`). */
function withoutShim(): string {
  return (Deno.env.get("LD_PRELOAD") ?? "").split(/[: ]/)
    .filter((p) => p && !p.endsWith("/libportmux.so")).join(":");
}

/** dax's `$` for the tests' short commands: stdin closed, stdout and stderr
 * captured, a failing exit code returned (`code`, for the test to assert
 * on), not thrown. npm dax reports a death by a signal as code 0: where a
 * crash must fail a test, use runToEnd. */
export const $ = build$({ commandBuilder: (b) => b.stdin("null").quiet().noThrow() });

/** Runs a command to its end, for a test that a crash must fail: a death
 * by a signal gives code 128 + the signal (Deno.Command's status), where
 * npm dax would give 0. */
export async function runToEnd(
  cmd: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const r = await new Deno.Command(cmd, { args, env, stdin: "null" }).output();
  const text = new TextDecoder();
  return { code: r.code, stdout: text.decode(r.stdout), stderr: text.decode(r.stderr) };
}

/** The status code curl gets for GET https://127.0.0.1:port/ (a new TLS
 * connection; the certificate is not checked); "000" when none came
 * within timeoutS. */
export function httpsStatus(port: number, timeoutS = 10): Promise<string> {
  const url = `https://127.0.0.1:${port}/`;
  return $`curl -sk --max-time ${timeoutS} -o /dev/null -w '%{http_code}' ${url}`.text();
}

/** A free loopback TCP port (bound and released). */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = l.addr.port;
  l.close();
  return port;
}
