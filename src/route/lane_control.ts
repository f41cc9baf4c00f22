/**
 * Drives the express lane (src/route/express_lane.ts) for the daemon:
 * starts it, gives it the routing table and the listeners the config lets
 * it take, turns it off when its runtime check fails, and says and counts
 * what it reports as the daemon's own path does.
 */
import type { Shim } from "../../ffi/shim.ts";
import type { ListenerEntry } from "../accept/listeners.ts";
import type { ChannelSet } from "../actions/handoff/channel_set.ts";
import type { HttpsSites } from "../actions/https/sites.ts";
import type { Config } from "../config/config.ts";
import { normalizeAddress } from "../net/address.ts";
import type { ConnectionLog } from "../ops/connection_log.ts";
import type { Logger } from "../ops/log.ts";
import type { Metrics } from "../ops/metrics.ts";
import { ExpressLane, type LaneReport } from "./express_lane.ts";

/** What the lane's driving uses of the daemon. */
export interface LaneContext {
  readonly shim: Shim;
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly connections: ConnectionLog;
  readonly channels: ChannelSet;
  readonly https: () => HttpsSites | null;
  /** False once the lane failed its runtime check. */
  readonly works: () => boolean;
}

export class LaneControl {
  readonly #ctx: LaneContext;
  /** Null when it cannot run. */
  #lane: ExpressLane | null = null;

  /** Starts the lane if it can run with this config. */
  constructor(ctx: LaneContext, config: Config) {
    this.#ctx = ctx;
    if (ExpressLane.usable(ctx.shim, config)) this.#start(config);
  }

  #start(config: Config): void {
    this.#lane = new ExpressLane(this.#ctx.shim, (r) => this.#report(r));
    this.setTable(config);
    this.#ctx.channels.keepReady();
  }

  /** The lane, while it runs. */
  get lane(): ExpressLane | null {
    return this.#lane;
  }

  /** Connections waiting for their first bytes in the lane. */
  get waiting(): number {
    return this.#lane?.waiting ?? 0;
  }

  /** Before the listeners join it, the lane is closed; after (a reload),
   * it passes every connection to the daemon (apply reads the check), as
   * it cannot give a listener back to the runtime. */
  off(config: Config, listeners: Iterable<ListenerEntry>): void {
    const entries = [...listeners];
    if (entries.some((e) => e.lane !== null)) return this.apply(config, entries);
    this.#ctx.channels.stopKeepingReady();
    this.#lane?.close();
    this.#lane = null;
  }

  /**
   * Applies preread.express and proxy_protocol to the listeners (a reload
   * may change either): a listener without the PROXY protocol joins the
   * lane when it is on; one of the lane's passes every connection to the
   * daemon while the lane is off or the listener has the PROXY protocol
   * (whose header only the daemon reads).
   */
  apply(config: Config, listeners: Iterable<ListenerEntry>): void {
    const on = config.preread.express && this.#ctx.works();
    if (on && !this.#lane && ExpressLane.usable(this.#ctx.shim, config)) this.#start(config);
    for (const entry of listeners) {
      const proxied = entry.listen.proxyProtocol !== null;
      if (entry.lane !== null) this.#lane!.passAll(entry.lane, proxied || !on);
      else if (on && !proxied && (entry.lane = this.join(entry)) !== null) entry.fd = null;
    }
  }

  /** Gives the lane the routes of config. */
  setTable(config: Config): void {
    const ids = this.#ctx.channels.ids();
    this.#lane?.setTable(config, this.#ctx.https()?.laneSites ?? null, ids);
  }

  /** Hands the listener to the lane, if it can take it (not behind a load
   * balancer: the PROXY header is the daemon's to read). Returns the
   * listener's fd, or null. */
  join(entry: ListenerEntry): number | null {
    if (!this.#lane || entry.listen.proxyProtocol !== null) return null;
    try {
      this.#lane.listen(entry.socket);
      return entry.socket;
    } catch (e) {
      this.#ctx.log.warn("express-lane-off", {
        address: entry.address,
        error: String(e),
      });
      return null;
    }
  }

  /** Stops taking a listener of the lane's (see ExpressLane.stopListening). */
  stopListening(listenerFd: number): Promise<void> {
    return this.#lane!.stopListening(listenerFd);
  }

  /** For a connection the lane passed on: ms since it accepted it. */
  ageMs(fd: number): number | null {
    return this.#lane!.ageMs(fd);
  }

  /** Stops reading the lane's events (after a last read). */
  close(): void {
    this.#lane?.close();
  }

  /** Logs and counts a connection the lane served or refused. */
  #report(r: LaneReport): void {
    if ("limit" in r) {
      return this.#ctx.connections.refused(
        r.limit,
        normalizeAddress({ address: r.source, port: 0 }).address,
      );
    }
    if ("accept" in r) return this.#sayAccept(r);
    if (r.decideMs !== null) this.#ctx.metrics.observeDecide(r.decideMs / 1000);
    this.#ctx.connections.line(r.level, r.outcome, { ...r.fields, outcome: r.outcome });
  }

  /** The lane's accept errors, said and counted as the accept loop says its
   * own: the first failure, then the recovery with how many there were. */
  #sayAccept(r: Extract<LaneReport, { accept: string }>): void {
    const base = { accepted_by: "express" };
    if (r.accept === "failed") {
      this.#ctx.metrics.inc("portmux_accept_failures_total");
      this.#ctx.log.error("accept-failed", { ...base, error: r.error });
    } else {
      // The first failure was counted when it was said.
      this.#ctx.metrics.inc("portmux_accept_failures_total", {}, r.failures - 1);
      this.#ctx.log.info("accept-recovered", { ...base, failures: r.failures });
    }
  }
}
