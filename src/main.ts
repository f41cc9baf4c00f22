/**
 * The daemon's entry point (commands: src/ops/cli.ts):
 *
 *   deno run -A src/main.ts [run|check] [--config FILE]
 *
 * `deno task start` runs it through src/launch.ts, which preloads the shim
 * so HTTPS uses accept injection; run by hand, HTTPS falls back to a bridge.
 */
import { dirname } from "node:path";
import { stringify } from "yaml";
import { type Config, ConfigError, describeConfig } from "./config/config.ts";
import { loadConfig } from "./config/file.ts";
import { parseCommand, USAGE } from "./ops/cli.ts";
import { Daemon } from "./daemon.ts";
import { notifyReady } from "./ops/readiness.ts";
import { logFormat, Logger } from "./ops/log.ts";
import denoJson from "../deno.json" with { type: "json" };

const env = (name: string) => Deno.env.get(name);

/** loadConfig, or exit 2 with one line on a mistake. */
async function readConfig(file: string | null): Promise<Config> {
  try {
    return await loadConfig(file);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    console.error(`portmux: config error: ${e.message}`);
    Deno.exit(2);
  }
}

/** Watches the files HTTPS is made of (certificates, keys, the handler
 * module) and reloads when one changes, once the writes have settled. The
 * folders are watched, not the files: renewals often replace the file. */
function watchHttpsFiles(config: Config, reload: (why: string) => void): void {
  const files = new Set<string>();
  if (config.tls?.kind === "files") {
    for (const c of config.tls.certificates) files.add(c.cert).add(c.key);
  }
  if (config.https.handler) files.add(config.https.handler);
  if (files.size === 0) return;
  const folders = [...new Set([...files].map((f) => dirname(f)))];
  let timer: ReturnType<typeof setTimeout> | undefined;
  (async () => {
    for await (const event of Deno.watchFs(folders, { recursive: false })) {
      const changed = event.paths.find((p) => files.has(p));
      if (!changed || event.kind === "access") continue;
      clearTimeout(timer);
      timer = setTimeout(() => reload(`${changed} changed`), 500);
    }
  })().catch(() => {/* a watched folder went away: SIGHUP still works */});
}

/** Stop signals this close together are one request to stop. */
const DUPLICATE_STOP_MS = 1000;

async function main(): Promise<void> {
  const command = parseCommand(Deno.args, env);
  switch (command.kind) {
    case "help":
      console.log(
        `portmux ${denoJson.version}: serves several protocols on one TCP port\n\n${USAGE}`,
      );
      return Deno.exit(0);
    case "version":
      console.log(denoJson.version);
      return Deno.exit(0);
    case "error":
      console.error(`portmux: ${command.message}\n\n${USAGE}`);
      return Deno.exit(2);
    case "check": {
      const config = await readConfig(command.config);
      console.log(`# ${config.source}: valid\n${stringify(describeConfig(config))}`);
      return Deno.exit(0);
    }
  }
  const config = await readConfig(command.config);
  // One of several workers (launched with --parallel): "index/count".
  const w = /^(\d+)\/(\d+)$/.exec(env("PORTMUX_WORKER") ?? "");
  const worker = w ? { index: Number(w[1]), count: Number(w[2]) } : null;
  const log = new Logger(config.log.level, logFormat(), worker ? { worker: worker.index } : {});
  const faults = env("PORTMUX_TEST_FAULTS");
  if (faults) {
    log.warn("test-faults", { faults, message: "faults for tests are on: never in production" });
  }
  let daemon: Daemon;
  try {
    daemon = await Daemon.start(config, log, worker);
  } catch (e) {
    console.error(`portmux: cannot start: ${(e as Error).message}`);
    Deno.exit(1);
  }
  // Before "started": a signal right after start must find its handler.
  // One misbehaving client or handler must not take everyone's service
  // down: an error nothing caught (in an event handler, a timer, a promise
  // nobody awaited) is logged and counted, and the daemon goes on.
  const survive = (error: unknown) => {
    daemon.metrics.inc("portmux_uncaught_errors_total");
    log.error("uncaught-error", {
      error: String(error),
      stack: error instanceof Error
        ? error.stack?.split("\n").slice(1, 4).map((l) => l.trim())
        : undefined,
    });
  };
  globalThis.addEventListener("error", (e) => {
    e.preventDefault();
    survive(e.error);
  });
  globalThis.addEventListener("unhandledrejection", (e) => {
    e.preventDefault();
    survive(e.reason);
  });

  // The first SIGINT or SIGTERM stops gracefully. The same request often
  // comes more than once: Ctrl-C reaches every process of the terminal's
  // group and the launcher passes it on too, and systemd may signal every
  // process of the unit. What comes within DUPLICATE_STOP_MS of the first
  // is that same request; a later one (a second Ctrl-C) stops at once.
  let stoppingAt: number | null = null;
  const stop = async (signal: string) => {
    if (stoppingAt !== null) {
      if (performance.now() - stoppingAt < DUPLICATE_STOP_MS) return;
      log.warn("stopping-now", { signal });
      Deno.exit(1);
    }
    stoppingAt = performance.now();
    log.info("stopping", { signal, drain_timeout_ms: config.drainTimeoutMs });
    await daemon.stop();
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGINT", () => stop("SIGINT"));
  Deno.addSignalListener("SIGTERM", () => stop("SIGTERM"));
  // SIGHUP, or a certificate, key or handler module that changed on disk:
  // read the config again; on any mistake the running one stays.
  let reloading = Promise.resolve();
  const reload = (why: string) => {
    reloading = reloading.then(async () => {
      if (stoppingAt !== null) return;
      try {
        log.info("reloading", { why });
        await daemon.reload(await loadConfig(command.config));
      } catch (e) {
        log.error("reload-failed", {
          error: e instanceof ConfigError ? e.message : String(e),
          kept: "the running config",
        });
      }
    });
  };
  Deno.addSignalListener("SIGHUP", () => reload("SIGHUP"));
  watchHttpsFiles(config, reload);
  log.info("started", {
    config: config.source,
    https: daemon.httpsMode,
    pid: Deno.pid,
  });
  // It serves once its services' channels are open too: an upgrade
  // retires the old workers only then.
  const notUp = daemon.openChannels();
  if (notUp.length) log.warn("services-not-up", { services: notUp });
  await notifyReady();
}

await main();
