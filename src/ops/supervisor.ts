/**
 * Runs the daemon in worker processes with the shim preloaded, so that its
 * accept4 interposes the runtime's and HTTPS gets accept injection
 * (docs/design.md). Used by src/launch.ts (`deno task start`) and by the
 * single binary's entry (src/portmux.ts).
 *
 *   --parallel N   N worker processes (default: the number of CPUs), all
 *                  accepting on the same held sockets. Worker i serves the
 *                  admin listener on its port + i. A worker that dies is
 *                  started again; one that cannot start stops them all.
 *
 * The built-in services run here too: they outlive a generation of
 * workers. SIGUSR2 upgrades in place: a new generation of workers from the
 * code and config now on disk; once each of its workers says it serves
 * (src/ops/readiness.ts), the old one drains. A new generation that cannot
 * start is said (upgrade-failed), and the old one goes on.
 *
 * The listening sockets are held here, not in the workers
 * (src/accept/held_listeners.ts): systemd's when it passes them (socket
 * activation), else bound here; every worker accepts on them.
 *
 * Signals are passed on to every worker; resolves with the exit code.
 */
import { Shim } from "../../ffi/shim.ts";
import { parseCommand } from "./cli.ts";
import { type Config, ConfigError } from "../config/config.ts";
import { loadConfig } from "../config/file.ts";
import { logFormat, Logger } from "./log.ts";
import {
  closeExcept,
  type Held,
  type HeldListener,
  holdListeners,
  holdMore,
  LISTENERS_ENV,
  withInherited,
} from "../accept/held_listeners.ts";
import { type BuiltinService, startBuiltinServices } from "./builtin_services.ts";
import { NOTIFY_ENV, readinessChannel } from "./readiness.ts";

const STARTUP_MS = 5000; // a start-up error shows within this
const RESTART_MS = 1000; // a worker that died is started again after this
const UPGRADE_READY_MS = 30_000; // a new generation must serve within this

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

/** One generation of workers: all started from the same code and config.
 * An upgrade starts the next, then retires this one. */
interface Generation {
  readonly number: number;
  readonly children: Map<number, Deno.ChildProcess>;
  /** Its workers that said they serve (by pid). */
  readonly ready: Set<number>;
  /** Retired or stopping: a worker that ends is not started again. */
  retired: boolean;
  /** The highest exit code, once every worker has ended for good. */
  done: Promise<number>;
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
  const preload = [opts.shim, Deno.env.get("LD_PRELOAD")].filter(Boolean).join(":");
  const log = new Logger("info", logFormat(), { supervisor: Deno.pid });
  const command = parseCommand(rest, (n) => Deno.env.get(n));
  const shim = new Shim(opts.shim);
  let held: Held = { listeners: [], from: "bound" };
  let builtins: BuiltinService[] = [];
  if (!oneShot && command.kind === "run") {
    try {
      const config = await configOrNull(command.config);
      if (config) {
        held = holdListeners(shim, config.listen);
        // Here, not in a worker: they outlive a generation of workers.
        builtins = await startBuiltinServices(config, log, { ...opts.env, LD_PRELOAD: preload });
      }
    } catch (e) {
      for (const h of held.listeners) shim.fds.close(h.fd);
      console.error(`portmux: cannot start: ${(e as Error).message}`);
      return 1;
    }
  }
  const notify = oneShot ? null : await readinessChannel();
  let stopping = false;
  let generations = 0;

  const startGeneration = (listeners: readonly HeldListener[]): Generation => {
    const gen: Generation = {
      number: ++generations,
      children: new Map(),
      ready: new Set(),
      retired: false,
      done: Promise.resolve(0),
    };
    const spawn = (index: number): Deno.ChildProcess => {
      const [program, ...args] = opts.daemon;
      return withInherited(shim, listeners, () =>
        new Deno.Command(program!, {
          args: [...args, ...rest],
          env: {
            ...opts.env,
            LD_PRELOAD: preload,
            ...(workers > 1 ? { PORTMUX_WORKER: `${index}/${workers}` } : {}),
            ...(listeners.length ? { [LISTENERS_ENV]: JSON.stringify(listeners) } : {}),
            ...(oneShot ? {} : { PORTMUX_BUILTINS: "supervisor" }),
            ...(notify ? { [NOTIFY_ENV]: notify.path } : {}),
          },
          stdin: "inherit",
        }).spawn());
    };
    /** Runs worker index until it ends for good; its exit code. first: the
     * generation's own start, where a quick failure means none can start. */
    const start = async (index: number, first: boolean): Promise<number> => {
      let child: Deno.ChildProcess;
      try {
        child = spawn(index);
      } catch (e) { // the deno binary replaced or gone, out of processes...
        log.error("worker-start-failed", { worker: index, error: String(e) });
        if (first) {
          retire(gen, "SIGTERM");
          return 1;
        }
        await new Promise((r) => setTimeout(r, RESTART_MS));
        return stopping || gen.retired ? 1 : start(index, false);
      }
      gen.children.set(index, child);
      notify?.expect(child.pid, () => gen.ready.add(child.pid));
      const born = performance.now();
      const status = await child.status;
      gen.children.delete(index);
      gen.ready.delete(child.pid);
      notify?.forget(child.pid);
      // Exit codes 1 and 2 soon after the generation's start: it could not
      // start (a config or start-up error), and neither will the others.
      const couldNotStart = first && performance.now() - born < STARTUP_MS &&
        (status.code === 1 || status.code === 2);
      if (stopping || gen.retired || couldNotStart || status.code === 0) {
        if (couldNotStart && !stopping && !gen.retired) retire(gen, "SIGTERM");
        return status.code;
      }
      // The others go on accepting on the held sockets meanwhile (a lone
      // worker's clients wait in their queue): only what was inside this
      // worker is lost.
      log.error("worker-exited", {
        worker: index,
        pid: child.pid,
        code: status.code,
        signal: status.signal,
        restart_in_ms: RESTART_MS,
      });
      await new Promise((r) => setTimeout(r, RESTART_MS));
      return stopping || gen.retired ? status.code : start(index, false);
    };
    gen.done = Promise.all(Array.from({ length: workers }, (_, i) => start(i, true))).then((
      codes,
    ) => Math.max(...codes));
    return gen;
  };

  const signalAll = (gen: Generation, signal: Deno.Signal) => {
    for (const child of gen.children.values()) {
      try {
        child.kill(signal);
      } catch { /* already exited */ }
    }
  };
  const retire = (gen: Generation, signal: Deno.Signal) => {
    gen.retired = true;
    signalAll(gen, signal);
  };
  /** Its workers that are alive and said they serve. */
  const serving = (gen: Generation) =>
    [...gen.children.values()].filter((c) => gen.ready.has(c.pid)).length;

  /** Every generation with workers still running (while an upgrade
   * drains the old one, two). */
  const all = new Set<Generation>();
  const track = (gen: Generation) => {
    all.add(gen);
    gen.done.finally(() => all.delete(gen));
    return gen;
  };
  let current = track(startGeneration(held.listeners));
  let upgrading = false;

  /** SIGUSR2: a new generation from the code and config now on disk; the
   * old one drains once the new one serves. */
  const upgrade = async () => {
    if (upgrading || stopping || !notify) return;
    upgrading = true;
    const next = generations + 1;
    log.info("upgrading", { generation: next });
    let listeners: HeldListener[];
    try {
      const config = await configOrNull(command.kind === "run" ? command.config : null);
      if (!config) throw new Error("the config on disk cannot be read (see the check command)");
      listeners = holdMore(shim, held, config.listen);
    } catch (e) {
      log.error("upgrade-failed", { generation: next, error: (e as Error).message });
      upgrading = false;
      return;
    }
    const gen = track(startGeneration(listeners));
    const ready = await Promise.race([
      waitUntil(() => serving(gen) === workers, UPGRADE_READY_MS).then((ok) =>
        ok ? null : `its workers did not say they serve within ${UPGRADE_READY_MS} ms`
      ),
      gen.done.then((code) => `its workers exited (code ${code})`),
    ]);
    if (ready !== null || stopping) {
      // Those that started accept on the held sockets: they drain too.
      retire(gen, "SIGTERM");
      log.error("upgrade-failed", { generation: gen.number, error: ready ?? "stopping" });
      gen.done.then(() => closeExcept(shim, listeners, held.listeners)); // what it bound
      upgrading = false;
      return;
    }
    const old = current;
    const oldListeners = held.listeners;
    current = gen;
    held = { ...held, listeners }; // the next upgrade starts from these
    retire(old, "SIGTERM"); // it drains while the new one takes every new connection
    log.info("upgraded", {
      generation: gen.number,
      pids: [...gen.children.values()].map((c) => c.pid),
      retired_pids: [...old.children.values()].map((c) => c.pid),
    });
    // What the new config no longer names, once nothing accepts there.
    old.done.then(() => closeExcept(shim, oldListeners, held.listeners));
    upgrading = false;
  };

  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP", "SIGUSR2"] as const) {
    Deno.addSignalListener(signal, () => {
      if (signal === "SIGUSR2") return void upgrade();
      if (signal === "SIGHUP") return signalAll(current, "SIGHUP");
      const again = stopping;
      stopping = true;
      if (!again && held.from === "bound") {
        // No new client gets in, and the workers take the queued ones
        // before they close (systemd's sockets queue on for the next start).
        for (const h of held.listeners) {
          try {
            shim.listeners.refuseNew(h.fd);
          } catch (e) {
            log.warn("refuse-new-failed", { error: String(e) }); // they close at exit anyway
          }
        }
      }
      // A retired generation is draining already: only a second request
      // (stop now) reaches it too.
      for (const gen of all) if (again || !gen.retired) signalAll(gen, signal);
    });
  }
  let code: number;
  for (;;) {
    const gen = current;
    code = await gen.done;
    if (gen === current) break; // not replaced by an upgrade meanwhile
  }
  await Promise.all([...all].map((g) => g.done));
  for (const b of builtins) await b.stop();
  notify?.close();
  return code;
}

/** The config a run reads; null when it cannot be read (the workers say
 * why, and exit 2). */
async function configOrNull(file: string | null): Promise<Config | null> {
  try {
    return await loadConfig(file);
  } catch (e) {
    if (e instanceof ConfigError) return null;
    throw e;
  }
}

async function waitUntil(test: () => boolean, ms: number): Promise<boolean> {
  const end = performance.now() + ms;
  while (!test()) {
    if (performance.now() > end) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}
