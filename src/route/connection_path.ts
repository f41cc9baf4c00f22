/**
 * The daemon's path of one connection, once admitted: find its fd, read a
 * PROXY header if the listener trusts the peer, peek until the routes
 * decide (or the deadline), act, and log one line that says what happened
 * and why. It keeps the connections on it and the relays they started, for
 * a stop to wait for.
 */
import { type Shim, ShimError } from "../../ffi/shim.ts";
import type { Lease } from "../accept/admission.ts";
import { type ClientSocket, DenoClient, ShimClient } from "../accept/client_socket.ts";
import type { ListenerEntry } from "../accept/listeners.ts";
import type { Preread } from "../accept/preread.ts";
import { act, type ActionContext, type Outcome, type Relay } from "../actions/act.ts";
import type { Config } from "../config/config.ts";
import { detectProxyHeader, type ProxyHeader } from "../detect/proxy_protocol.ts";
import { type Address, addressText, displayAddress, normalizeAddress } from "../net/address.ts";
import { cidrContains } from "../net/ip.ts";
import type { ConnectionLog } from "../ops/connection_log.ts";
import type { Metrics } from "../ops/metrics.ts";
import type { RuntimeChecks } from "../ops/runtime_check.ts";
import { decide, type Decision } from "./classify.ts";
import type { LaneControl } from "./lane_control.ts";

/** A v1 header is at most 107 bytes; a v2 header is refused past 4 KiB. */
const PROXY_HEADER_MAX = 4096 + 16;

/** The most the preread reads at once: the routes' peek limit, or a PROXY
 * header. */
export function prereadCapacity(config: Config): number {
  return Math.max(config.preread.maxBytes, PROXY_HEADER_MAX);
}

/** What the path uses of the daemon, read per connection (a reload may
 * change it). */
export interface PathContext {
  readonly shim: Shim;
  readonly metrics: Metrics;
  readonly preread: Preread;
  readonly runtime: RuntimeChecks;
  readonly lane: LaneControl;
  readonly connections: ConnectionLog;
  readonly config: () => Config;
  readonly actions: ActionContext;
}

/** One connection on its way: its addresses, its line's fields so far, and
 * when its clock started (its preread deadline counts from then). */
class Passage {
  started = performance.now();
  client: Address;
  local: Address;
  readonly fields: Record<string, unknown>;
  readonly #connections: ConnectionLog;

  constructor(accepted: Deno.TcpConn | ShimClient, connections: ConnectionLog) {
    this.client = displayAddress(accepted.remoteAddr);
    this.local = displayAddress(accepted.localAddr);
    this.fields = { client: addressText(this.client), local: addressText(this.local) };
    this.#connections = connections;
  }

  /** Logs the connection's one line. */
  readonly done = (outcome: Outcome, more: Record<string, unknown> = {}): void => {
    const level = outcome === "failed" ? "error" : more.handoff_error ? "warn" : "info";
    this.#connections.line(level, outcome, {
      ...this.fields,
      outcome,
      ms: Math.round((performance.now() - this.started) * 100) / 100,
      ...more,
    });
  };

  /** ms left before the preread deadline (at least 1). */
  remaining(timeoutMs: number): number {
    return Math.max(1, timeoutMs - (performance.now() - this.started));
  }

  /** The client and local addresses a PROXY header named. */
  at(client: Address, local: Address): void {
    this.client = client;
    this.local = local;
    Object.assign(this.fields, { client: addressText(client), local: addressText(local) });
  }
}

export class ConnectionPath {
  readonly #ctx: PathContext;
  readonly #inFlight = new Set<Promise<void>>();
  readonly #relays = new Set<Promise<void>>();

  constructor(ctx: PathContext) {
    this.#ctx = ctx;
  }

  /** Serves an admitted connection. */
  serve(conn: Deno.TcpConn | ShimClient, entry: ListenerEntry, lease: Lease): void {
    const handling = this.#handle(conn, entry, lease);
    this.#inFlight.add(handling);
    handling.finally(() => this.#inFlight.delete(handling));
  }

  /** Settles once every connection on the path got its decision. */
  decided(): Promise<unknown> {
    return Promise.allSettled([...this.#inFlight]);
  }

  /** The relays still copying. */
  get relays(): ReadonlySet<Promise<void>> {
    return this.#relays;
  }

  /** Serves one connection; its lease is released when the daemon lets go
   * of it: at once, or when a relay it started ends. The returned promise
   * ends with the decision, not with the relay (stop waits for decisions). */
  async #handle(
    conn: Deno.TcpConn | ShimClient,
    entry: ListenerEntry,
    lease: Lease,
  ): Promise<void> {
    let relay: Relay | void = undefined;
    try {
      relay = await this.#serve(conn, entry, lease);
    } finally {
      if (relay) {
        const ended = relay.ended;
        this.#relays.add(ended);
        ended.finally(() => {
          this.#relays.delete(ended);
          lease.release();
        });
      } else lease.release();
    }
  }

  /** The path of one connection; returns the relay it leaves running. */
  async #serve(
    accepted: Deno.TcpConn | ShimClient,
    entry: ListenerEntry,
    lease: Lease,
  ): Promise<Relay | void> {
    const listen = entry.listen;
    const p = new Passage(accepted, this.#ctx.connections);
    const conn = this.#clientSocket(accepted, p);
    if (!conn) return;
    if (entry.lane !== null) this.#sinceLane(conn.fd, p);
    const config = this.#ctx.config();
    if (listen.proxyProtocol?.trusted.some((c) => cidrContains(c, p.client.address))) {
      if (!await this.#unwrapProxy(conn, lease, p, config.preread.timeoutMs)) return;
    }
    const decided = await this.#decide(conn, p, config);
    if (!decided) return;
    const { sni = null, alpn = [] } = decided.decision.facts;
    return await act(decided.decision.route, {
      conn,
      fd: conn.fd,
      client: p.client,
      local: p.local,
      peeked: decided.peeked,
      sni,
      alpn,
      done: p.done,
    }, this.#ctx.actions);
  }

  /** The socket and its fd (verified, when Deno accepted it); null, its
   * line said, when there is none. */
  #clientSocket(accepted: Deno.TcpConn | ShimClient, p: Passage): ClientSocket | null {
    if (accepted instanceof ShimClient) {
      p.fields.accepted_by = "shim";
      return accepted;
    }
    try {
      const found = this.#ctx.runtime.fd(accepted);
      const conn = new DenoClient(accepted, found.fd, this.#ctx.shim);
      if (found.via === "lookup") p.fields.fd_lookup = "fallback";
      return conn;
    } catch (e) {
      accepted.close();
      if (e instanceof ShimError && e.code === "ENOTCONN") { // reset by the client already
        p.done("closed", { reason: "eof", peeked: 0 });
      } else p.done("failed", { error: `no verified fd for the connection: ${e}` });
      return null;
    }
  }

  /** The lane waited for the bytes of a connection it passed on: its
   * deadline counts. */
  #sinceLane(fd: number, p: Passage): void {
    const age = this.#ctx.lane.ageMs(fd);
    if (age !== null) {
      p.started -= age;
      p.fields.accepted_by = "express-passed";
    }
  }

  /** A trusted load balancer says who the client is: reads and removes
   * that. False when the connection ended here (its line said). */
  async #unwrapProxy(
    conn: ClientSocket,
    lease: Lease,
    p: Passage,
    timeoutMs: number,
  ): Promise<boolean> {
    const header = await this.#readProxyHeader(conn, p, timeoutMs);
    if (!header) return false;
    p.fields.proxied_by = addressText(p.client);
    if (header.source && header.destination) {
      p.at(normalizeAddress(header.source), normalizeAddress(header.destination));
    }
    const refusal = lease.moveTo(p.client.address);
    if (refusal) {
      this.#ctx.connections.refuse(conn, refusal, p.client.address);
      p.done("closed", { reason: refusal });
      return false;
    }
    return true;
  }

  /** The PROXY header, read and consumed; null, its line said, when there
   * is no valid one. */
  async #readProxyHeader(
    conn: ClientSocket,
    p: Passage,
    timeoutMs: number,
  ): Promise<ProxyHeader | null> {
    const header = await this.#ctx.preread.read(
      conn.fd,
      PROXY_HEADER_MAX,
      p.remaining(timeoutMs),
      (bytes, final) => {
        const d = detectProxyHeader(bytes);
        return d.verdict === "more" && !final ? null : d;
      },
    );
    if (header.decision?.verdict !== "match") {
      conn.close();
      p.done("failed", {
        error: `no valid PROXY protocol header from trusted ${addressText(p.client)} (${
          header.error?.message ?? header.end
        })`,
      });
      return null;
    }
    const info = header.decision.info;
    try {
      this.#ctx.shim.fds.consume(conn.fd, info.length);
    } catch (e) {
      conn.close();
      p.done("failed", { error: `reading the PROXY header: ${e}` });
      return null;
    }
    return info;
  }

  /** Peeks until the routes decide; null, its line said, when the preread
   * ended without a decision. */
  async #decide(
    conn: ClientSocket,
    p: Passage,
    config: Config,
  ): Promise<{ decision: Decision; peeked: number } | null> {
    const { preread: limits, routes } = config;
    const result = await this.#ctx.preread.read<Decision>(
      conn.fd,
      limits.maxBytes,
      p.remaining(limits.timeoutMs),
      (bytes, final) =>
        decide(routes, this.#ctx.config(), {
          bytes,
          client: p.client,
          maxBytes: limits.maxBytes,
        }, final),
    );
    p.fields.peeked = result.peeked;
    const decided = performance.now() - p.started;
    p.fields.decide_ms = Math.round(decided * 100) / 100;
    this.#ctx.metrics.observeDecide(decided / 1000);
    if (result.decision === null) {
      conn.close();
      p.done("failed", { error: `preread: ${result.error?.message ?? result.end}` });
      return null;
    }
    const { route, reason, facts } = result.decision;
    Object.assign(p.fields, { route: route.name, action: route.action.kind, reason, ...facts });
    return { decision: result.decision, peeked: result.peeked };
  }
}
