/** preread: how long and how much portmux reads before choosing a route. */
import type { Reader } from "./reader.ts";

export interface Preread {
  readonly timeoutMs: number;
  readonly maxBytes: number;
  /** Let the express lane (src/route/express_lane.ts) take what it can. */
  readonly express: boolean;
  /** Accept a connection once its first bytes are in (TCP_DEFER_ACCEPT),
   * or after about a second for a client that waits for the server.
   * "auto" (the default) is resolved here: on unless a route serves the
   * clients that send nothing (on_timeout), who would wait that second. */
  readonly deferAccept: boolean;
}

/** All but defer_accept, which waits for on_timeout (resolveDeferAccept). */
export function readPreread(r: Reader): Omit<Preread, "deferAccept"> {
  r.keys(["preread"], ["timeout_ms", "max_bytes", "express", "defer_accept"]);
  return {
    timeoutMs: r.integer(["preread", "timeout_ms"], 1, 600_000) ?? 5000,
    maxBytes: r.integer(["preread", "max_bytes"], 16, 65536) ?? 16384,
    express: r.boolean(["preread", "express"]) ?? true,
  };
}

/** defer_accept, "auto" resolved from what on_timeout does: off when a
 * route serves the clients that send nothing. */
export function resolveDeferAccept(r: Reader, onTimeoutCloses: boolean): boolean {
  const deferAccept = r.value(["preread", "defer_accept"]) ?? "auto";
  if (deferAccept === "auto") return onTimeoutCloses;
  if (typeof deferAccept === "boolean") return deferAccept;
  r.fail(["preread", "defer_accept"], "expected true, false or auto");
}

export function describePreread(p: Preread): Record<string, unknown> {
  return {
    timeout_ms: p.timeoutMs,
    max_bytes: p.maxBytes,
    express: p.express,
    defer_accept: p.deferAccept,
  };
}
