/**
 * This worker's admin listener (src/ops/admin.ts) as the config says it,
 * and what its /healthz says of the daemon.
 */
import type { HttpsSites } from "../actions/https/sites.ts";
import type { Admin } from "../config/config.ts";
import { type Health, startAdmin } from "./admin.ts";
import type { Logger } from "./log.ts";
import type { Metrics } from "./metrics.ts";

/** Not ok while stopping, or while an HTTPS site cannot accept. */
export function daemonHealth(stopping: boolean, https: HttpsSites | null): Health {
  if (stopping) return { ok: false, text: "stopping" };
  const down = https?.down ?? [];
  if (down.length) return { ok: false, text: down.map((d) => `https site ${d} down`).join("\n") };
  return { ok: true, text: "ok" };
}

export class WorkerAdmin {
  #server: Deno.HttpServer | null = null;
  readonly #log: Logger;
  readonly #metrics: Metrics;
  readonly #health: () => Health;
  /** This process's place among --parallel workers (0 when alone). */
  readonly #worker: number;

  constructor(log: Logger, metrics: Metrics, health: () => Health, worker: number) {
    this.#log = log;
    this.#metrics = metrics;
    this.#health = health;
    this.#worker = worker;
  }

  /** Serves /metrics and /healthz where configured. */
  start(configured: Admin): void {
    this.#server = startAdmin({
      ...this.#at(configured),
      token: configured.token,
      metrics: () => this.#metrics.render(),
      health: this.#health,
      log: this.#log,
    });
  }

  /** Stops the listener, and starts it again with next (if any). */
  async restart(next: Admin | null): Promise<void> {
    await this.#server?.shutdown();
    this.#server = null;
    if (next) this.start(next);
  }

  async shutdown(): Promise<void> {
    await this.#server?.shutdown();
  }

  /** The admin address of this process: worker i serves on port + i. */
  #at(at: { address: string; port: number }): { address: string; port: number } {
    return at.port === 0 ? at : { address: at.address, port: at.port + this.#worker };
  }
}
