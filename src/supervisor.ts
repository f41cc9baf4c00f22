/**
 * Runs the daemon in worker processes with the shim preloaded, so that its
 * accept4 interposes the runtime's and HTTPS gets accept injection
 * (DESIGN.md fact 4). Used by src/launch.ts (`deno task start`) and by the
 * single binary's entry (src/portmux.ts).
 *
 *   --parallel N   N worker processes (default: the number of CPUs), each
 *                  with its own listeners on the same ports (SO_REUSEPORT:
 *                  the kernel spreads new connections over them). Worker 0
 *                  runs the built-in services; worker i serves the admin
 *                  listener on its port + i. A worker that dies is started
 *                  again; one that cannot start stops them all.
 *
 * The listening sockets are held here, not in the workers
 * (src/held_listeners.ts): systemd's when it passes them (socket
 * activation), else bound here; every worker accepts on them.
 *
 * Signals are passed on to every worker; resolves with the exit code.
 */
import { Shim } from "../ffi/shim.ts";
import { parseCommand } from "./cli.ts";
import { ConfigError } from "./config.ts";
import { loadConfig } from "./config_file.ts";
import { logFormat, Logger } from "./log.ts";
import { type HeldListener, holdListeners, LISTENERS_ENV } from "./held_listeners.ts";

const STARTUP_MS = 5000; // a start-up error shows within this
const RESTART_MS = 1000; // a worker that died is started again after this

export interface SuperviseOptions {
  /** The shim library to preload. */
  readonly shim: string;
  /** The command that runs one daemon (the arguments are appended). */
  readonly daemon: readonly string[];
  /** Extra environment for the daemons. */
  readonly env?: Record<string, string>;
  /** The command line given to portmux. */
  readonly args: readonly string[];
}

function takeParallel(args: readonly string[]): { workers: number; rest: string[] } | string {
  const rest: string[] = [];
  let workers = navigator.hardwareConcurrency;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const value = a === "--parallel" ? args[++i] : a.startsWith("--parallel=") ? a.slice(11) : null;
    if (value === null) {
      rest.push(a);
      continue;
    }
    workers = Number(value);
    if (!Number.isInteger(workers) || workers < 1 || workers > 256) {
      return `--parallel needs a whole number of workers from 1 to 256, got "${value}"`;
    }
  }
  return { workers, rest };
}

export async function supervise(opts: SuperviseOptions): Promise<number> {
  const taken = takeParallel(opts.args);
  if (typeof taken === "string") {
    console.error(`portmux: ${taken}`);
    return 2;
  }
  const rest = taken.rest;
  // A check, --help or --version is answered once, not by every worker.
  const oneShot = rest[0] === "check" || rest.includes("--help") || rest.includes("-h") ||
    rest.includes("--version");
  const workers = oneShot ? 1 : taken.workers;
  let held: HeldListener[] = [];
  if (!oneShot) {
    try {
      held = await holdFor(rest, opts.shim);
    } catch (e) {
      console.error(`portmux: cannot start: ${(e as Error).message}`);
      return 1;
    }
  }
  const preload = [opts.shim, Deno.env.get("LD_PRELOAD")].filter(Boolean).join(":");
  const log = new Logger("info", logFormat(), { supervisor: Deno.pid });
  const children = new Map<number, Deno.ChildProcess>();
  let stopping = false;

  const stopAll = (signal: Deno.Signal) => {
    stopping = true;
    for (const child of children.values()) {
      try {
        child.kill(signal);
      } catch { /* already exited */ }
    }
  };

  const start = (index: number): Promise<number> => {
    const [command, ...args] = opts.daemon;
    const child = new Deno.Command(command!, {
      args: [...args, ...rest],
      env: {
        ...opts.env,
        LD_PRELOAD: preload,
        ...(workers > 1 ? { PORTMUX_WORKER: `${index}/${workers}` } : {}),
        ...(held.length ? { [LISTENERS_ENV]: JSON.stringify(held) } : {}),
      },
      stdin: "inherit",
    }).spawn();
    children.set(index, child);
    const born = performance.now();
    return child.status.then(async (status) => {
      children.delete(index);
      // Exit codes 1 and 2 soon after start: it could not start (a config
      // or start-up error), and neither will the others.
      const couldNotStart = performance.now() - born < STARTUP_MS &&
        (status.code === 1 || status.code === 2);
      if (stopping || workers === 1 || couldNotStart || status.code === 0) {
        if (couldNotStart && !stopping && workers > 1) stopAll("SIGTERM");
        return status.code;
      }
      // The others go on accepting on the held sockets meanwhile: only what
      // was inside this worker is lost.
      log.error("worker-exited", {
        worker: index,
        pid: child.pid,
        code: status.code,
        signal: status.signal,
        restart_in_ms: RESTART_MS,
      });
      await new Promise((r) => setTimeout(r, RESTART_MS));
      return stopping ? status.code : start(index);
    });
  };

  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    Deno.addSignalListener(signal, () => {
      if (signal !== "SIGHUP") return stopAll(signal);
      for (const child of children.values()) {
        try {
          child.kill("SIGHUP");
        } catch { /* it just exited */ }
      }
    });
  }
  const codes = await Promise.all(Array.from({ length: workers }, (_, i) => start(i)));
  return Math.max(...codes);
}

/** Holds the listening sockets of the config the workers will read; none
 * when that config cannot be read (the workers say why, and exit 2). */
async function holdFor(args: readonly string[], shimPath: string): Promise<HeldListener[]> {
  const command = parseCommand(args, (n) => Deno.env.get(n));
  if (command.kind !== "run") return [];
  let listen;
  try {
    listen = (await loadConfig(command.config)).listen;
  } catch (e) {
    if (e instanceof ConfigError) return [];
    throw e;
  }
  return holdListeners(new Shim(shimPath), listen).held;
}
