/**
 * What is said and counted of connections, whichever path served them (the
 * daemon's or the express lane's): each one's line, and the ones closed for
 * a limit.
 */
import type { LimitName } from "../accept/admission.ts";
import type { Logger } from "./log.ts";
import type { Metrics } from "./metrics.ts";
import type { ThrottledLog } from "./throttled_log.ts";

export class ConnectionLog {
  readonly #log: Logger;
  readonly #metrics: Metrics;
  readonly #throttled: ThrottledLog;

  constructor(log: Logger, metrics: Metrics, throttled: ThrottledLog) {
    this.#log = log;
    this.#metrics = metrics;
    this.#throttled = throttled;
  }

  /** A connection's one line, and its count by route and outcome. */
  line(level: "info" | "warn" | "error", outcome: string, line: Record<string, unknown>): void {
    this.#metrics.inc("portmux_connections_total", {
      route: String(line.route ?? "none"),
      outcome,
    });
    this.#log[level]("connection", line);
  }

  /** Closes a connection that would break a limit: the newest one, never an
   * established session. Logged once per second per limit, always counted. */
  refuse(conn: { close(): void }, limit: LimitName, source: string): void {
    try {
      conn.close();
    } catch { /* gone */ }
    this.refused(limit, source);
  }

  /** Says a connection was closed for a limit (by refuse, or by the lane). */
  refused(limit: LimitName, source: string): void {
    const total = this.#metrics.inc("portmux_limit_hits_total", { limit });
    this.#throttled.warn(limit, "limit", { limit, source, total });
  }
}
