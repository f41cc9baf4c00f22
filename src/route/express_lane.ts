/**
 * The express lane (c/express_lane.c): C code in the shim that accepts,
 * peeks, classifies and delivers the connections whose route it can tell
 * for sure, with no JavaScript per connection (on the runtime's own thread
 * when it accepts for the first HTTPS site, else on a thread of its own).
 * This module writes its routing table from the config, hands it the
 * listeners, and turns what it did into the daemon's usual log lines and
 * counters, read in batches.
 *
 * What the lane takes: a route that matches on `protocol: tls` (with `sni`
 * and `alpn`, if any) and whose action is https, when every site injects
 * and no access log needs the request's facts; a route that matches on
 * `prefix` alone with action handoff. It evaluates the routes in order
 * and stops at the first it cannot evaluate (any other condition), so it
 * never decides differently from src/route/classify.ts. Whatever it does not
 * take (other routes, the default route, a hello over several records, end
 * of stream, the deadline, a limit, a full or broken channel) reaches the
 * daemon's own path untouched, through the listener's injection queue.
 */
import { type ExpressEvent, LANE_TABLE_LIMITS, type Shim } from "../../ffi/shim.ts";
import type { Config, Route } from "../config/config.ts";
import type { NamePattern } from "./name_pattern.ts";
import type { LimitName } from "../accept/admission.ts";
import { addressText } from "../net/address.ts";

/** An HTTPS site as the lane sees it: its injected listener (null when it
 * cannot inject) and the server names that pick it. */
export interface LaneSite {
  readonly listenerFd: number | null;
  readonly names: readonly NamePattern[];
}

/** What the lane did, as the daemon logs and counts it: a connection line,
 * a connection closed for a limit, or a listener's accept failing. */
export type LaneReport =
  | {
    readonly level: "info" | "error";
    readonly outcome: "https" | "handed-off" | "closed" | "failed";
    /** How long the decision took, for the histogram (null: none made). */
    readonly decideMs: number | null;
    readonly fields: Record<string, unknown>;
  }
  | { readonly limit: LimitName; readonly source: string }
  /** A listener's accept failed (the first time), or worked again after
   * failures: said as the daemon's own accept loop says it. */
  | { readonly accept: "failed"; readonly error: string }
  | { readonly accept: "recovered"; readonly failures: number };

const LIMITS: readonly LimitName[] = ["max_connections", "max_preread", "max_per_source"];

/** The lane's events are read every DRAIN_BUSY_MS while it works (small
 * batches: a large one, formatted at once, delays everything behind it on
 * a busy machine: p99 1.5 ms at 50 ms against 0.9 ms at 10 ms), and less
 * often while it is idle, up to every DRAIN_IDLE_MS. */
const DRAIN_BUSY_MS = 10;
const DRAIN_IDLE_MS = 200;
/** What the lane's table has room for (checked against the C side when
 * the shim loads): past it a rule is left to the daemon. */
const {
  rules: MAX_RULES,
  names: MAX_NAMES,
  nameBytes: MAX_NAME_BYTES,
  sites: MAX_SITES,
  headBytes: MAX_HEAD_BYTES,
} = LANE_TABLE_LIMITS;
const STOP_POLL_MS = 5;

const encoder = new TextEncoder();
const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
const pattern = (p: NamePattern) => "exact" in p ? `=${p.exact}` : `*${p.suffix}`;

/** The part of a route's match the lane evaluates, or null if it cannot. */
function laneMatch(route: Route): string | null {
  const m = route.match!;
  const keys = Object.entries(m).filter(([, v]) => v !== undefined).map(([k]) => k);
  if (keys.length === 1 && m.prefix) {
    return m.prefix.length <= MAX_NAME_BYTES + 1 ? `prefix ${hex(m.prefix)}` : null;
  }
  if (m.protocol !== "tls" || keys.some((k) => !["protocol", "sni", "alpn"].includes(k))) {
    return null;
  }
  if (!fits(m.sni?.map(pattern)) || !fits(m.alpn)) return null;
  const sni = m.sni ? `${m.sni.length} ${m.sni.map(pattern).join(" ")}` : "-1";
  const alpn = m.alpn
    ? `${m.alpn.length} ${m.alpn.map((a) => hex(encoder.encode(a))).join(" ")}`
    : "-1";
  return `tls ${sni} ${alpn}`;
}

/** A list of names the C table has room for. */
function fits(names: readonly string[] | undefined): boolean {
  return !names ||
    (names.length <= MAX_NAMES && names.every((n) => encoder.encode(n).length < MAX_NAME_BYTES));
}

/**
 * The table's text (its grammar: parse_line in c/lane_table.c).
 * serviceIds: the id under which each service's channels are listed.
 */
export function laneTable(
  config: Config,
  generation: number,
  sites: readonly LaneSite[] | null,
  serviceIds: ReadonlyMap<string, number>,
): string {
  const { preread, limits } = config;
  const lines = [
    `limits ${preread.maxBytes} ${preread.timeoutMs} ${limits.maxPreread} ${limits.maxConnections} ${limits.maxPerSource} ${generation}`,
  ];
  const injecting = sites !== null && sites.length <= MAX_SITES &&
    sites.every((s) => s.listenerFd !== null && fits(s.names.map(pattern)));
  if (injecting) {
    for (const s of sites) lines.push(`site ${s.listenerFd} ${s.names.map(pattern).join(" ")}`);
  }
  let rules = 0;
  config.routes.forEach((route, index) => {
    if (!route.match || rules === MAX_RULES) return; // no match: reached only as a fallback
    // The last rule there is room for stops the lane, if more routes follow.
    const last = ++rules === MAX_RULES && config.routes.slice(index + 1).some((r) => r.match);
    const match = last ? "opaque" : laneMatch(route) ?? "opaque";
    const a = route.action;
    let action = "slow -1 -";
    if (a.kind === "https" && injecting && config.https.accessLog === null) {
      action = "https -1 -";
    } else if (a.kind === "handoff" && serviceIds.has(a.service.name)) {
      // The record up to the client's address; the lane writes the rest
      // (the same JSON as encodeRecord in src/actions/handoff/record.ts).
      const head = encoder.encode(
        `{"v":1,"route":${JSON.stringify(route.name)},"service":${
          JSON.stringify(a.service.name)
        },"client":`,
      );
      if (head.length <= MAX_HEAD_BYTES) {
        action = `handoff ${serviceIds.get(a.service.name)} ${hex(head)}`;
      }
    }
    lines.push(`rule ${index} ${action} ${match}`);
  });
  return lines.join("\n") + "\n";
}

export class ExpressLane {
  readonly #shim: Shim;
  readonly #report: (r: LaneReport) => void;
  /** The config each table generation was made from (events name it). */
  readonly #configs = new Map<number, Config>();
  #generation = 0;
  #timer: ReturnType<typeof setTimeout> | null = null;
  #delay = DRAIN_BUSY_MS;
  #runtimeSite: number | null = null;

  constructor(shim: Shim, report: (r: LaneReport) => void) {
    this.#shim = shim;
    this.#report = report;
  }

  /** True when the lane can run: the shim preloaded, and not turned off. */
  static usable(shim: Shim, config: Config): boolean {
    return config.preread.express && shim.inject.active();
  }

  /** Installs the table for this config (the lane starts with the first). */
  setTable(
    config: Config,
    sites: readonly LaneSite[] | null,
    serviceIds: ReadonlyMap<string, number>,
  ): void {
    const generation = ++this.#generation;
    const table = laneTable(config, generation, sites, serviceIds);
    this.#shim.lane.table(table);
    const site = /^site (\d+)/m.exec(table); // the first: place_listeners in c/express_lane.c
    this.#runtimeSite = site ? Number(site[1]) : null;
    this.#configs.set(generation, config);
    // Events of a table two reloads old are long read.
    this.#configs.delete(generation - 2);
    this.#timer ??= setTimeout(() => this.#tick(), this.#delay);
  }

  /** The listener of the HTTPS site under whose epoll token the runtime's
   * own accept takes the lane's listeners (the table's first site), or
   * null: the lane's thread accepts them. */
  get runtimeSite(): number | null {
    return this.#runtimeSite;
  }

  /** Lets the lane accept this listener's connections; throws if it cannot
   * (the daemon's own accept loop then takes them all, as without it). */
  listen(listenerFd: number): void {
    this.#shim.lane.listen(listenerFd);
  }

  /** Lets the daemon see every connection of the listener first (on), or
   * lets the lane decide again (off): a reload may give a listener the
   * PROXY protocol, whose header only the daemon reads. */
  passAll(listenerFd: number, on: boolean): void {
    this.#shim.lane.passAll(listenerFd, on);
  }

  /** Stops accepting on the listener and waits until every connection the
   * lane holds for it got its decision (by its deadline at the latest). */
  async stopListening(listenerFd: number): Promise<void> {
    while (this.#shim.lane.stop(listenerFd) > 0) {
      await new Promise((r) => setTimeout(r, STOP_POLL_MS));
    }
    this.drain();
  }

  /** Connections waiting for their first bytes in the lane. */
  get waiting(): number {
    return this.#shim.lane.waiting();
  }

  /** For a connection the lane passed to the daemon: ms since the lane
   * accepted it (null for others). */
  ageMs(fd: number): number | null {
    return this.#shim.lane.ageMs(fd);
  }

  #tick(): void {
    const busy = this.drain() > 0;
    this.#delay = busy ? DRAIN_BUSY_MS : Math.min(DRAIN_IDLE_MS, this.#delay * 2);
    this.#timer = setTimeout(() => this.#tick(), this.#delay);
  }

  /** Reports what the lane did since the last call; returns how much. */
  drain(): number {
    let reported = 0;
    for (;;) {
      const { events, dropped } = this.#shim.lane.events();
      if (dropped > 0) {
        this.#report({
          level: "error",
          outcome: "failed",
          decideMs: null,
          fields: {
            accepted_by: "express",
            error: `${dropped} connection lines lost: the express lane's event ring was full`,
          },
        });
      }
      for (const e of events) this.#report(this.#describe(e));
      reported += events.length;
      if (events.length === 0) return reported;
    }
  }

  #describe(e: ExpressEvent): LaneReport {
    const base = { accepted_by: "express" };
    if (e.outcome === "limit") {
      return { limit: LIMITS[e.limit - 1] ?? "max_connections", source: e.client.hostname };
    }
    if (e.outcome === "accept-failed") return { accept: "failed", error: e.error };
    if (e.outcome === "accept-recovered") return { accept: "recovered", failures: e.failures };
    if (e.outcome === "lost") {
      return {
        level: "error",
        outcome: "failed",
        decideMs: null,
        fields: {
          ...base,
          error: `the daemon's queue refused a connection (${e.error}); it was closed`,
        },
      };
    }
    const addr = (a: { hostname: string; port: number }) =>
      addressText({ address: a.hostname, port: a.port });
    const where = { client: addr(e.client), local: addr(e.local), ...base };
    if (e.outcome === "reset") { // as the daemon says it: a reset ends the stream
      return {
        level: "info",
        outcome: "closed",
        decideMs: null,
        fields: { ...where, reason: "eof", peeked: 0, error: e.error },
      };
    }
    const config = this.#configs.get(e.generation);
    const route = config?.routes[e.route];
    const fields: Record<string, unknown> = {
      ...where,
      peeked: e.peeked,
      decide_ms: Math.round(e.decideMs * 100) / 100,
      route: route?.name ?? `#${e.route}`,
      action: route?.action.kind ?? e.outcome,
      reason: "matched",
      ...(e.tls ? { protocol: "tls", sni: e.tls.sni, alpn: e.tls.alpn } : {}),
      ms: Math.round(e.decideMs * 100) / 100,
    };
    if (e.outcome === "https") fields.delivery = "inject";
    else if (route?.action.kind === "handoff") {
      Object.assign(fields, {
        service: route.action.service.name,
        socket: route.action.service.sockets[e.target],
        waited_ms: 0,
      });
    }
    return { level: "info", outcome: e.outcome, decideMs: e.decideMs, fields };
  }

  /** Stops reading events (after a last read). */
  close(): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    this.drain();
  }
}
