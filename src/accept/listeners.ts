/**
 * The daemon's listeners and their accept loops: opened (or adopted from
 * the supervisor's held sockets), kept or closed by a reload, and every
 * connection they accept admitted against the limits, then passed on.
 */
import type { Shim } from "../../ffi/shim.ts";
import type { Config, Listen } from "../config/config.ts";
import { addressText, displayAddress } from "../net/address.ts";
import { cidrContains } from "../net/ip.ts";
import type { ConnectionLog } from "../ops/connection_log.ts";
import type { Logger } from "../ops/log.ts";
import type { Metrics } from "../ops/metrics.ts";
import type { LaneControl } from "../route/lane_control.ts";
import type { Admission, Lease } from "./admission.ts";
import { ShimClient } from "./client_socket.ts";
import { listenKey } from "./held_listeners.ts";
import type { Preread } from "./preread.ts";

const ACCEPT_RETRY_MS = 100;
/** A burst is taken BURST_BATCH connections per shim call, and at most
 * BURST_MAX at a time, so that the event loop moves on in between. */
const BURST_BATCH = 64;
const BURST_MAX = 512;
/** The listening sockets' backlog (the supervisor's, pm_tcp_listen's). */
const BACKLOG = 4096;
const LANE_LAST_PASS_MS = 20;

export interface ListenerEntry {
  readonly listener: Deno.TcpListener;
  /** The listener's fd (a held socket's, when adopted). */
  readonly socket: number;
  /** Its address, as shown (Deno's own is the placeholder's, when adopted). */
  readonly address: string;
  listen: Listen;
  /** Its fd, when the shim takes the rest of each burst (see #acceptBurst). */
  fd: number | null;
  /** Its fd, when the express lane accepts its connections (the accept
   * loop then gets only those the lane passes on). */
  lane: number | null;
}

/** What the listeners use of the daemon. */
export interface ListenersContext {
  readonly shim: Shim;
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly connections: ConnectionLog;
  readonly admission: Admission;
  readonly preread: Preread;
  readonly lane: LaneControl;
  /** Several workers without a supervisor share the port (SO_REUSEPORT). */
  readonly reusePort: boolean;
  readonly stopping: () => boolean;
  /** Serves an admitted connection (src/route/connection_path.ts). */
  readonly serve: (conn: Deno.TcpConn | ShimClient, entry: ListenerEntry, lease: Lease) => void;
}

export class Listeners {
  readonly #ctx: ListenersContext;
  /** By "address|port": the listener and its settings (a reload may
   * change the settings of one it keeps). */
  readonly #entries = new Map<string, ListenerEntry>();
  /** Sockets the supervisor holds for this worker's listeners, by listen
   * key, until adopted. */
  readonly #held: Map<string, number>;
  /** The listen entries the supervisor holds sockets for (null: none):
   * only an upgrade or a restart changes them. */
  readonly #heldKeys: ReadonlySet<string> | null;

  constructor(ctx: ListenersContext, held: Map<string, number>) {
    this.#ctx = ctx;
    this.#held = held;
    this.#heldKeys = held.size ? new Set(held.keys()) : null;
  }

  entries(): IterableIterator<ListenerEntry> {
    return this.#entries.values();
  }

  /** Their addresses, as shown. */
  addresses(): string[] {
    return [...this.#entries.values()].map((e) => e.address);
  }

  /** Throws if listen names other entries than the supervisor holds. */
  checkHeld(listen: readonly Listen[]): void {
    const keys = new Set(listen.map(listenKey));
    const held = this.#heldKeys;
    if (held && (keys.size !== held.size || ![...keys].every((k) => held.has(k)))) {
      throw new Error(
        "listen: changed, and the listening sockets are the supervisor's: an upgrade (SIGUSR2) " +
          "or a restart applies it",
      );
    }
  }

  /** Closes the held sockets no listener adopted. */
  closeUnadopted(): void {
    for (const fd of this.#held.values()) this.#ctx.shim.fds.close(fd);
    this.#held.clear();
  }

  /** Opens the listeners not open yet, updates the settings of those that
   * are, and closes those no longer listed. A listener is known by its
   * configured address and port (so one on port 0 is kept by a reload).
   * Throws if one cannot open; the others are then as they were. */
  open(config: Config): void {
    const listen = config.listen;
    const key = listenKey;
    const opened: string[] = [];
    try {
      for (const l of listen) {
        const entry = this.#entries.get(key(l));
        if (entry) {
          entry.listen = l; // proxy_protocol and the lane: LaneControl.apply
          continue;
        }
        const fresh: ListenerEntry = { ...this.#listen(l), listen: l, fd: null, lane: null };
        this.#entries.set(key(l), fresh);
        opened.push(key(l));
        this.#ctx.log.info("listening", { address: fresh.address });
        this.#acceptLoop(fresh);
        fresh.lane = this.#ctx.lane.join(fresh);
        if (fresh.lane === null) fresh.fd = this.#burstFd(fresh.socket);
      }
    } catch (e) {
      for (const k of opened) this.#close(k);
      throw e;
    }
    const wanted = new Set(listen.map(key));
    for (const k of [...this.#entries.keys()]) if (!wanted.has(k)) this.#close(k);
    for (const entry of this.#entries.values()) {
      this.#deferAccept(entry, config.preread.deferAccept);
    }
  }

  /** Closes them all (see #close). */
  async closeAll(): Promise<void> {
    await Promise.all([...this.#entries.keys()].map((key) => this.#close(key)));
  }

  /**
   * A listener for the entry: on the socket the supervisor holds for it
   * (inherited: src/accept/held_listeners.ts), which a placeholder's runtime
   * listener adopts, else a socket of its own (several workers without a
   * supervisor share the port with SO_REUSEPORT).
   */
  #listen(l: Listen): Pick<ListenerEntry, "listener" | "socket" | "address"> {
    const shim = this.#ctx.shim;
    const held = this.#held.get(listenKey(l));
    if (held !== undefined) {
      this.#held.delete(listenKey(l)); // adopted once: it is the runtime's now
      const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      try {
        const socket = shim.listeners.find(listener.addr);
        const at = shim.listeners.address(held);
        shim.inject.adoptListener(socket, held);
        const address = addressText(displayAddress({ transport: "tcp", ...at! }));
        return { listener, socket, address };
      } catch (e) {
        listener.close();
        throw e;
      } finally {
        shim.fds.close(held);
      }
    }
    const reusePort = this.#ctx.reusePort;
    const options = { hostname: l.address, port: l.port, reusePort } as Deno.TcpListenOptions;
    const listener = Deno.listen(options);
    return {
      listener,
      socket: shim.listeners.find(listener.addr),
      address: addressText(displayAddress(listener.addr)),
    };
  }

  /** Lets the kernel accept a connection once its first bytes are in: one
   * wake-up and one look per connection instead of two (a client that
   * waits for the server is accepted after about a second). */
  #deferAccept(entry: ListenerEntry, on: boolean): void {
    try {
      this.#ctx.shim.listeners.deferAccept(entry.socket, on);
    } catch (e) {
      this.#ctx.log.warn("defer-accept-off", {
        address: entry.address,
        error: String(e),
      });
    }
  }

  /** Closes a listener; one of the express lane's once the lane has
   * decided on every connection it holds for it. */
  async #close(key: string): Promise<void> {
    const entry = this.#entries.get(key);
    if (!entry) return;
    this.#entries.delete(key);
    if (entry.lane !== null) {
      await this.#ctx.lane.stopListening(entry.lane);
      // A moment for the accept loop to take what the lane passed on last.
      await new Promise((r) => setTimeout(r, LANE_LAST_PASS_MS));
      const dropped = this.#ctx.shim.inject.unregister(entry.lane);
      if (dropped) this.#ctx.log.warn("express-queue-dropped", { connections: dropped });
    }
    // What the kernel accepted is served, not reset by the last close (at a
    // stop the supervisor keeps new clients out first: refuseNew).
    if (this.#ctx.shim.inject.active()) this.#acceptBurst(entry.socket, entry, true);
    try {
      entry.listener.close();
    } catch { /* closed */ }
    this.#ctx.log.info("listener-closed", { address: entry.address });
  }

  /** The listener's fd, for the shim to take bursts from; null when it
   * cannot (without the preloaded shim, a socket it accepted could not be
   * handed to Deno.serve or made a TcpConn). */
  #burstFd(socket: number): number | null {
    return this.#ctx.shim.inject.active() ? socket : null;
  }

  async #acceptLoop(entry: ListenerEntry): Promise<void> {
    const { listener } = entry, { metrics, log, stopping } = this.#ctx;
    let failures = 0; // accept errors in the current burst
    // The lane's listener is read until it closes: what the lane passes on
    // while it stops must still be served.
    while (!stopping() || entry.lane !== null) {
      let conn: Deno.TcpConn;
      try {
        conn = await listener.accept();
      } catch (e) {
        if (stopping() || e instanceof Deno.errors.BadResource) return;
        if (clientWentAway(e)) { // reset before the accept was done: its own loss
          metrics.inc("portmux_accept_client_gone_total");
          continue;
        }
        // EMFILE and friends: keep the listener, say so once per burst, and
        // retry after a pause (the client waits in the kernel's backlog).
        metrics.inc("portmux_accept_failures_total");
        if (failures++ === 0) log.error("accept-failed", { error: String(e) });
        await new Promise((r) => setTimeout(r, ACCEPT_RETRY_MS));
        continue;
      }
      if (failures > 0) {
        log.info("accept-recovered", { failures });
        failures = 0;
      }
      this.#admit(conn, entry); // its listen settings are read per connection: a reload may change them
      if (entry.fd !== null) this.#acceptBurst(entry.fd, entry);
    }
  }

  /** Takes the rest of a burst at once: the connections already waiting on
   * the listener are accepted by the shim, without a Deno connection
   * object each (src/accept/client_socket.ts). last: the listener closes next,
   * take its whole queue (a backlog's worth at most). */
  #acceptBurst(listenerFd: number, entry: ListenerEntry, last = false): void {
    const shim = this.#ctx.shim;
    const most = last ? BACKLOG : BURST_MAX;
    for (let taken = 0; taken < most && (last || !this.#ctx.stopping());) {
      let batch;
      try {
        batch = shim.listeners.acceptBatch(listenerFd, BURST_BATCH);
      } catch {
        return; // EMFILE and the like: Deno's next accept meets it, says it and waits
      }
      for (const a of batch) this.#admit(new ShimClient(a, shim), entry);
      if (batch.length < BURST_BATCH) return;
      taken += batch.length;
    }
  }

  /** Applies the limits to a new connection, then passes it on. */
  #admit(conn: Deno.TcpConn | ShimClient, entry: ListenerEntry): void {
    const { admission, preread, lane, connections } = this.#ctx;
    const peer = displayAddress(conn.remoteAddr).address;
    const trusted = entry.listen.proxyProtocol?.trusted.some((c) => cidrContains(c, peer)) ??
      false;
    const inLane = entry.lane !== null ? lane.waiting : 0;
    const lease = admission.admit(peer, preread.waiting + inLane, trusted, inLane);
    if (typeof lease === "string") {
      connections.refuse(conn, lease, peer);
      return;
    }
    this.#ctx.serve(conn, entry, lease);
  }
}

/** Accept errors that concern only the client being accepted: it reset
 * before the runtime could read its address. */
function clientWentAway(e: unknown): boolean {
  return e instanceof Deno.errors.NotConnected || e instanceof Deno.errors.ConnectionReset ||
    e instanceof Deno.errors.ConnectionAborted;
}
