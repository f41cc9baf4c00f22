/**
 * A log that says a repeated event once per interval instead of once per
 * occurrence, so an attack cannot flood the log.
 */
import type { Fields, Logger } from "./log.ts";

/** Logs an event the first time, then at most once per interval with how
 * many were not logged in between. */
export class ThrottledLog {
  readonly #last = new Map<string, { at: number; suppressed: number }>();
  constructor(readonly log: Logger, readonly intervalMs = 1000) {}

  warn(key: string, event: string, fields: Fields): void {
    const now = performance.now();
    const seen = this.#last.get(key);
    if (seen && now - seen.at < this.intervalMs) {
      seen.suppressed++;
      return;
    }
    const suppressed = seen?.suppressed ?? 0;
    this.#last.set(key, { at: now, suppressed: 0 });
    this.log.warn(event, suppressed ? { ...fields, suppressed } : fields);
  }
}
