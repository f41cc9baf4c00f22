/**
 * The daemon's entry point:
 *
 *   deno run -A src/main.ts [--config FILE]
 *
 * `deno task start` runs it through src/launch.ts, which preloads the shim
 * so HTTPS uses accept injection; run by hand, HTTPS falls back to a bridge.
 */
import { ConfigError, loadConfigFile, parseConfig } from "./config.ts";
import { Daemon } from "./daemon.ts";
import { Logger } from "./log.ts";
import denoJson from "../deno.json" with { type: "json" };

const USAGE = `portmux ${denoJson.version}: serves several protocols on one TCP port

usage: portmux [--config FILE]

  --config FILE   the YAML config (default: the embedded demo, config/default.yaml)
  --help          this text
  --version       the version
`;

const DEFAULT_CONFIG = new URL("../config/default.yaml", import.meta.url);

function parseArgs(args: string[]): { config: string | null } {
  let config: string | null = null;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === "--help" || a === "-h") {
      console.log(USAGE);
      Deno.exit(0);
    } else if (a === "--version") {
      console.log(denoJson.version);
      Deno.exit(0);
    } else if (a === "--config" && args[i + 1] !== undefined) config = args[++i]!;
    else if (a.startsWith("--config=")) config = a.slice("--config=".length);
    else {
      console.error(`portmux: unknown argument "${a}"\n\n${USAGE}`);
      Deno.exit(2);
    }
  }
  return { config };
}

async function main(): Promise<void> {
  const args = parseArgs(Deno.args);
  let config;
  try {
    config = args.config
      ? loadConfigFile(args.config)
      : parseConfig(await Deno.readTextFile(DEFAULT_CONFIG), "embedded default config", ".");
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    console.error(`portmux: config error: ${e.message}`);
    Deno.exit(2);
  }
  const log = new Logger(config.log.level);
  let daemon: Daemon;
  try {
    daemon = await Daemon.start(config, log);
  } catch (e) {
    console.error(`portmux: cannot start: ${(e as Error).message}`);
    Deno.exit(1);
  }
  // Before "started": a signal right after start must find its handler.
  const stop = async (signal: string) => {
    log.info("stopping", { signal });
    await daemon.stop();
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGINT", () => stop("SIGINT"));
  Deno.addSignalListener("SIGTERM", () => stop("SIGTERM"));
  log.info("started", {
    config: config.source,
    https: daemon.httpsMode,
    pid: Deno.pid,
  });
}

await main();
