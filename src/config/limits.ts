/** limits: how many connections clients can make the daemon hold. */
import type { Reader } from "./reader.ts";

/** Bounds on what clients can make the daemon hold. When one is reached
 * the newest connection (the one that would exceed it) is closed. */
export interface Limits {
  /** Connections held at once: waiting in preread, or relayed (proxy,
   * HTTPS bridge). Handed-off and injected ones belong to others. */
  readonly maxConnections: number;
  /** Connections waiting for their first bytes at once. */
  readonly maxPreread: number;
  /** Connections held at once per client address. */
  readonly maxPerSource: number;
}

export function readLimits(r: Reader): Limits {
  r.keys(["limits"], ["max_connections", "max_preread", "max_per_source"]);
  return {
    maxConnections: r.integer(["limits", "max_connections"], 1, 10_000_000) ?? 50_000,
    maxPreread: r.integer(["limits", "max_preread"], 1, 10_000_000) ?? 20_000,
    maxPerSource: r.integer(["limits", "max_per_source"], 1, 10_000_000) ?? 1000,
  };
}

export function describeLimits(l: Limits): Record<string, unknown> {
  return {
    max_connections: l.maxConnections,
    max_preread: l.maxPreread,
    max_per_source: l.maxPerSource,
  };
}
