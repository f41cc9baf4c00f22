/**
 * Built-in protocol services that portmux runs itself (for now the demo
 * echo service), each as a child process listening on its Unix socket in
 * the data folder.
 */
import type { Config } from "../config/config.ts";
import type { Logger } from "./log.ts";

export interface BuiltinService {
  stop(): Promise<void>;
}

const ECHO_SERVICE = new URL("../service/demo_echo.ts", import.meta.url).pathname;
const READY_TIMEOUT_MS = 15_000;

/** env: for the services' processes (the shim to preload; PORTMUX_SELF
 * when the single binary runs them). */
export async function startBuiltinServices(
  config: Config,
  log: Logger,
  env: Record<string, string> = {},
): Promise<BuiltinService[]> {
  const started: BuiltinService[] = [];
  for (const service of config.services.values()) {
    if (service.builtin !== "echo") continue;
    await Deno.mkdir(config.dataDir, { recursive: true, mode: 0o700 });
    try {
      started.push(await startChild(service.name, ECHO_SERVICE, service.sockets[0]!, env));
    } catch (e) {
      for (const s of started) await s.stop();
      throw e;
    }
    log.info("builtin-service", { service: service.name, socket: service.sockets[0] });
  }
  return started;
}

async function startChild(
  name: string,
  script: string,
  socket: string,
  env: Record<string, string>,
): Promise<BuiltinService> {
  // Run as the single binary (src/portmux.ts), the service is the same
  // binary in another role; otherwise Deno runs its script.
  const self = env.PORTMUX_SELF ?? Deno.env.get("PORTMUX_SELF");
  const [command, ...start] = self
    ? JSON.parse(self) as string[]
    : [Deno.execPath(), "run", "-A", script];
  const child = new Deno.Command(command!, {
    args: [...start, "--socket", socket, "--exit-with-stdin"],
    // It holds our stdin: when the daemon dies, the child sees EOF and exits.
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
    // With the daemon's shim preloaded, its receiver accepts handed-off
    // clients in the runtime's own accept (src/service/receiver.ts).
    env: { ...env, ...(self ? { PORTMUX_ROLE: "echo-service" } : {}) },
  }).spawn();
  const stdin = child.stdin.getWriter();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`built-in service "${name}" did not start`)),
      READY_TIMEOUT_MS,
    );
  });
  try {
    const first = await Promise.race([reader.read(), timeout]);
    if (first.value?.trim() !== "ready") {
      throw new Error(`built-in service "${name}" failed to start`);
    }
  } catch (e) {
    child.kill();
    await child.status;
    throw e;
  } finally {
    clearTimeout(timer);
  }
  // Keep draining its stdout so it never blocks on a full pipe.
  (async () => {
    while (!(await reader.read()).done) { /* discard */ }
  })();
  return {
    async stop() {
      await stdin.close().catch(() => {});
      try {
        child.kill("SIGTERM");
      } catch { /* already gone */ }
      await child.status;
    },
  };
}
