/**
 * The daemon: listeners, and the path of every connection through it:
 * find its fd, peek until the route is clear, act, and log one line that
 * says what happened and why.
 */
import { Shim, ShimError } from "../ffi/shim.ts";
import { addressText, displayAddress, normalizeAddress } from "./net/address.ts";
import { decide, type Decision } from "./route/classify.ts";
import type { Config, DefaultRoute, Listen, Route, Service } from "./config/config.ts";
import { detectProxyHeader } from "./detect/proxy_protocol.ts";
import { cidrContains } from "./net/ip.ts";
import { Admission, type Lease, type LimitName } from "./accept/admission.ts";
import { ThrottledLog } from "./ops/throttled_log.ts";
import { Metrics } from "./ops/metrics.ts";
import { type ClientSocket, DenoClient, ShimClient } from "./accept/client_socket.ts";
import { ServiceChannels, shortestWait } from "./actions/handoff/channels.ts";
import { HttpsSites, readHttps } from "./actions/https/sites.ts";
import type { Logger } from "./ops/log.ts";
import { Preread } from "./accept/preread.ts";
import { type BuiltinService, startBuiltinServices } from "./ops/builtin_services.ts";
import { ExpressLane, type LaneReport } from "./route/express_lane.ts";
import { type Health, startAdmin } from "./ops/admin.ts";
import { type Mechanism, RuntimeChecks, type Trigger } from "./ops/runtime_check.ts";
import { stopInjecting } from "./actions/https/frontend.ts";
import { inheritedListeners, listenKey } from "./accept/held_listeners.ts";
import { act, type ActionContext, type Outcome, type Relay } from "./actions/act.ts";

const ACCEPT_RETRY_MS = 100;
/** A burst is taken BURST_BATCH connections per shim call, and at most
 * BURST_MAX at a time, so that the event loop moves on in between. */
const BURST_BATCH = 64;
const BURST_MAX = 512;
/** The listening sockets' backlog (the supervisor's, pm_tcp_listen's). */
const BACKLOG = 4096;
const LANE_LAST_PASS_MS = 20;
const CHANNEL_CHECK_MS = 250;

interface ListenerEntry {
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

function sameService(a: Service, b: Service): boolean {
  const shape = (s: Service) => JSON.stringify([s.sockets, s.uid, s.gid, s.pidFile, s.builtin]);
  return shape(a) === shape(b);
}

/** A v1 header is at most 107 bytes; a v2 header is refused past 4 KiB. */
const PROXY_HEADER_MAX = 4096 + 16;

export class Daemon {
  #config: Config;
  readonly #log: Logger;
  readonly #shim: Shim;
  readonly #preread: Preread;
  #https: HttpsSites | null;
  readonly #builtins: BuiltinService[];
  /** By "address|port": the listener and its settings (a reload may
   * change the settings of one it keeps). */
  readonly #listeners = new Map<string, ListenerEntry>();
  readonly #inFlight = new Set<Promise<void>>();
  readonly #relays = new Set<Promise<void>>();
  readonly #admission: Admission;
  readonly metrics: Metrics;
  readonly #throttled: ThrottledLog;
  readonly #channels = new Map<string, ServiceChannels>();
  #stopping = false;
  #stopped: Promise<void> | null = null;
  #admin: Deno.HttpServer | null = null;
  /** This process's place among --parallel workers; null when alone. */
  #worker: { index: number; count: number } | null = null;
  /** The express lane (src/route/express_lane.ts); null when it cannot run. */
  #lane: ExpressLane | null = null;
  #channelCheck: ReturnType<typeof setInterval> | undefined;
  /** Proofs of the runtime internals the paths rely on (src/ops/runtime_check.ts). */
  readonly #runtime: RuntimeChecks;
  /** Sockets the supervisor holds for this worker's listeners, by listen
   * key, until adopted. */
  readonly #held: Map<string, number>;
  /** What the actions use of the daemon (src/actions/act.ts). */
  readonly #actions: ActionContext;
  /** The listen entries the supervisor holds sockets for (null: none):
   * only an upgrade or a restart changes them. */
  readonly #heldKeys: ReadonlySet<string> | null;

  private constructor(
    config: Config,
    log: Logger,
    shim: Shim,
    https: HttpsSites | null,
    builtins: BuiltinService[],
    metrics: Metrics,
  ) {
    this.metrics = metrics;
    this.#config = config;
    this.#log = log;
    this.#shim = shim;
    this.#held = inheritedListeners(shim);
    this.#actions = {
      shim,
      metrics,
      https: () => this.#https,
      channels: (service) => this.#channels.get(service)!,
      releaseWorks: () => this.#runtime.ok("release"),
      routeNamed: (name) => this.#routeNamed(name),
    };
    this.#heldKeys = this.#held.size ? new Set(this.#held.keys()) : null;
    this.#https = https;
    this.#builtins = builtins;
    this.#preread = new Preread(shim, Math.max(config.preread.maxBytes, PROXY_HEADER_MAX));
    this.#admission = new Admission(config.limits);
    this.#throttled = new ThrottledLog(log);
    this.#declareMetrics();
    this.#runtime = new RuntimeChecks(shim, log, metrics);
    this.#updateChannels(config);
    if (ExpressLane.usable(shim, config)) this.#startLane(config);
  }

  #startLane(config: Config): void {
    this.#lane = new ExpressLane(this.#shim, (r) => this.#reportLane(r));
    this.#setLaneTable(config);
    // The lane sends on the channels without asking: keep them ready.
    this.#channelCheck = setInterval(() => {
      for (const c of this.#channels.values()) c.maintain();
    }, CHANNEL_CHECK_MS);
  }

  /** Proves the runtime internals the daemon relies on; a mechanism that
   * fails is turned to its fallback (src/ops/runtime_check.ts). */
  async #checkRuntime(trigger: Trigger): Promise<void> {
    await this.#runtime.run(trigger, {
      site: () => this.#https?.sites[0]?.frontend ?? null,
      lane: () => this.#lane,
      fallback: (m, error) => this.#runtimeFallback(m, error),
    });
  }

  /** fd and release are read per connection; inject and lane act now. */
  async #runtimeFallback(m: Mechanism, error: string): Promise<void> {
    if (m === "inject") await this.#bridgeHttps(error);
    if (m === "lane") this.#laneOff();
  }

  /** Starts the HTTPS sites again, bridged; the injecting ones drain. */
  async #bridgeHttps(why: string): Promise<void> {
    stopInjecting(why);
    const material = await readHttps(this.#config);
    const old = this.#https;
    const restarted = () => this.#setLaneTable(this.#config);
    this.#https = material &&
      await HttpsSites.start(material, this.#shim, this.#log, this.metrics, restarted);
    this.#setLaneTable(this.#config); // no injecting site: the lane leaves HTTPS to the daemon
    old?.stop();
  }

  /** Before the listeners join it, the lane is closed; after (a reload),
   * it passes every connection to the daemon (#applyExpress reads the
   * check), as it cannot give a listener back to the runtime. */
  #laneOff(): void {
    if ([...this.#listeners.values()].some((e) => e.lane !== null)) {
      return this.#applyExpress(this.#config);
    }
    clearInterval(this.#channelCheck);
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
  #applyExpress(config: Config): void {
    const on = config.preread.express && this.#runtime.ok("lane");
    if (on && !this.#lane && ExpressLane.usable(this.#shim, config)) this.#startLane(config);
    for (const entry of this.#listeners.values()) {
      const proxied = entry.listen.proxyProtocol !== null;
      if (entry.lane !== null) this.#lane!.passAll(entry.lane, proxied || !on);
      else if (on && !proxied && (entry.lane = this.#laneFor(entry)) !== null) entry.fd = null;
    }
  }

  /** Gives the express lane the routes of config. */
  #setLaneTable(config: Config): void {
    const ids = new Map([...this.#channels].map(([name, c]) => [name, c.id]));
    this.#lane?.setTable(config, this.#https?.laneSites ?? null, ids);
  }

  /** The lane's accept errors, said and counted as #acceptLoop says its
   * own: the first failure, then the recovery with how many there were. */
  #sayLaneAccept(r: Extract<LaneReport, { accept: string }>): void {
    const base = { accepted_by: "express" };
    if (r.accept === "failed") {
      this.metrics.inc("portmux_accept_failures_total");
      this.#log.error("accept-failed", { ...base, error: r.error });
    } else {
      // The first failure was counted when it was said.
      this.metrics.inc("portmux_accept_failures_total", {}, r.failures - 1);
      this.#log.info("accept-recovered", { ...base, failures: r.failures });
    }
  }

  /** Logs and counts a connection the express lane served or refused. */
  #reportLane(r: LaneReport): void {
    if ("limit" in r) {
      return this.#sayRefused(r.limit, normalizeAddress({ address: r.source, port: 0 }).address);
    }
    if ("accept" in r) return this.#sayLaneAccept(r);
    if (r.decideMs !== null) this.metrics.observeDecide(r.decideMs / 1000);
    this.#connectionLine(r.level, r.outcome, { ...r.fields, outcome: r.outcome });
  }

  /** A connection's one line, and its count by route and outcome. */
  #connectionLine(
    level: "info" | "warn" | "error",
    outcome: string,
    line: Record<string, unknown>,
  ): void {
    this.metrics.inc("portmux_connections_total", {
      route: String(line.route ?? "none"),
      outcome,
    });
    this.#log[level]("connection", line);
  }

  /** Channels for the config's services: kept where a service is the same,
   * new where it changed, closed where it is gone. */
  #updateChannels(config: Config): void {
    for (const [name, channels] of this.#channels) {
      const next = config.services.get(name);
      if (!next || !sameService(next, channels.service)) {
        channels.close();
        this.#channels.delete(name);
      }
    }
    for (const service of config.services.values()) {
      if (!this.#channels.has(service.name)) {
        this.#channels.set(
          service.name,
          new ServiceChannels(service, this.#shim, this.#log, this.#throttled, this.metrics),
        );
      }
    }
    // Unread for longer than the routes' wait, a channel is stalled.
    for (const c of this.#channels.values()) c.waitMs = shortestWait(config.routes, c.service.name);
  }

  /** The admin listener: /metrics and /healthz (src/ops/admin.ts). */
  #startAdmin(configured: NonNullable<Config["admin"]>): void {
    this.#admin = startAdmin({
      ...this.#adminAt(configured),
      token: configured.token,
      metrics: () => this.metrics.render(),
      health: () => this.#health(),
      log: this.#log,
    });
  }

  /** Opens a handoff channel to each service instance (one try: a service
   * not running is tried again with backoff as it is used); returns the
   * services that have none open. */
  openChannels(): string[] {
    return [...this.#channels].filter(([, c]) => !c.openAll()).map(([name]) => name);
  }

  /** Not ok while stopping, or while an HTTPS site cannot accept. */
  #health(): Health {
    if (this.#stopping) return { ok: false, text: "stopping" };
    const down = this.#https?.down ?? [];
    if (down.length) return { ok: false, text: down.map((d) => `https site ${d} down`).join("\n") };
    return { ok: true, text: "ok" };
  }

  #declareMetrics(): void {
    const m = this.metrics;
    m.counter("portmux_connections_total", "Connections by route and outcome.");
    m.counter("portmux_limit_hits_total", "Connections closed because a limit was reached.");
    m.counter("portmux_accept_failures_total", "Accept errors other than a client gone.");
    m.counter("portmux_accept_client_gone_total", "Clients that reset before accept finished.");
    m.counter("portmux_handoff_fallbacks_total", "Handoffs no instance took, by service.");
    m.counter("portmux_handoff_waits_total", "Handoffs that waited for an instance (once each).");
    m.counter("portmux_handoff_instance_down_total", "Times an instance was found down.");
    m.counter("portmux_handoff_channel_full_total", "Times a channel was full.");
    m.counter("portmux_handoff_stalled_total", "Channels found stalled (unread), by service.");
    m.counter("portmux_handoff_stalled_closed_total", "Stalled channels closed, by service.");
    m.counter("portmux_https_requests_total", "HTTPS requests answered, by status code.");
    m.counter("portmux_uncaught_errors_total", "Errors nothing caught; logged, and survived.");
    m.counter("portmux_https_site_down_total", "Times an HTTPS site's server stopped, by site.");
    m.gauge(
      "portmux_preread_waiting",
      "Connections waiting for their first bytes.",
      () => this.#preread.waiting + (this.#lane?.waiting ?? 0),
    );
    m.gauge(
      "portmux_connections_held",
      "Connections held (preread and relays).",
      () => this.#admission.total + (this.#lane?.waiting ?? 0),
    );
    m.gauge(
      "portmux_open_fds",
      "Open file descriptors of the daemon.",
      () => [...Deno.readDirSync("/proc/self/fd")].length,
    );
  }

  /** Starts everything the config names; throws if any part cannot start. */
  static async start(
    config: Config,
    log: Logger,
    worker: { index: number; count: number } | null = null,
  ): Promise<Daemon> {
    const shim = new Shim();
    // Every waiting client is an fd: use what the hard limit allows.
    log.info("fd-limit", { open_files: shim.raiseNofile() });
    const metrics = new Metrics();
    const material = await readHttps(config);
    // A site started again has a new listener: the lane's table must say so.
    let daemon: Daemon | null = null;
    const restarted = () => {
      if (daemon) daemon.#setLaneTable(daemon.#config);
    };
    const https = material && await HttpsSites.start(material, shim, log, metrics, restarted);
    let builtins: BuiltinService[];
    try {
      // With several workers, worker 0 runs the built-in services for all.
      // Under the supervisor, it runs them (they outlive a generation of
      // workers); else the first worker does.
      const elsewhere = Deno.env.get("PORTMUX_BUILTINS") === "supervisor" ||
        (worker !== null && worker.index > 0);
      builtins = elsewhere ? [] : await startBuiltinServices(config, log);
    } catch (e) {
      await https?.stop();
      throw e;
    }
    daemon = new Daemon(config, log, shim, https, builtins, metrics);
    daemon.#worker = worker;
    try {
      await daemon.#checkRuntime("start"); // before any client: fallbacks in place first
      daemon.#https?.sites[0]?.frontend.armAcceptFault(); // tests only (src/ops/faults.ts)
      daemon.#openListeners(config);
      if (config.admin) daemon.#startAdmin(config.admin);
    } catch (e) { // it may have accepted already: those drain
      await daemon.stop();
      throw e;
    } finally {
      // The config's listeners took theirs; none is left to keep open.
      for (const fd of daemon.#held.values()) shim.close(fd);
      daemon.#held.clear();
    }
    return daemon;
  }

  /** The admin address of this process: worker i serves on port + i. */
  #adminAt(at: { address: string; port: number }): { address: string; port: number } {
    const i = this.#worker?.index ?? 0;
    return at.port === 0 ? at : { address: at.address, port: at.port + i };
  }

  /** Opens the listeners not open yet, updates the settings of those that
   * are, and closes those no longer listed. A listener is known by its
   * configured address and port (so one on port 0 is kept by a reload).
   * Throws if one cannot open; the others are then as they were. */
  #openListeners(config: Config): void {
    const listen = config.listen;
    const key = listenKey;
    const opened: string[] = [];
    try {
      for (const l of listen) {
        const entry = this.#listeners.get(key(l));
        if (entry) {
          entry.listen = l; // proxy_protocol and the lane: #applyExpress
          continue;
        }
        const fresh: ListenerEntry = { ...this.#listen(l), listen: l, fd: null, lane: null };
        this.#listeners.set(key(l), fresh);
        opened.push(key(l));
        this.#log.info("listening", { address: fresh.address });
        this.#acceptLoop(fresh);
        fresh.lane = this.#laneFor(fresh);
        if (fresh.lane === null) fresh.fd = this.#burstFd(fresh.socket);
      }
    } catch (e) {
      for (const k of opened) this.#closeListener(k);
      throw e;
    }
    const wanted = new Set(listen.map(key));
    for (const k of [...this.#listeners.keys()]) if (!wanted.has(k)) this.#closeListener(k);
    for (const entry of this.#listeners.values()) {
      this.#deferAccept(entry, config.preread.deferAccept);
    }
  }

  /**
   * A listener for the entry: on the socket the supervisor holds for it
   * (inherited: src/accept/held_listeners.ts), which a placeholder's runtime
   * listener adopts, else a socket of its own (several workers without a
   * supervisor share the port with SO_REUSEPORT).
   */
  #listen(l: Listen): Pick<ListenerEntry, "listener" | "socket" | "address"> {
    const held = this.#held.get(listenKey(l));
    if (held !== undefined) {
      this.#held.delete(listenKey(l)); // adopted once: it is the runtime's now
      const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      try {
        const socket = this.#shim.listenerFd(listener.addr);
        const at = this.#shim.listenerAddress(held);
        this.#shim.adoptListener(socket, held);
        const address = addressText(displayAddress({ transport: "tcp", ...at! }));
        return { listener, socket, address };
      } catch (e) {
        listener.close();
        throw e;
      } finally {
        this.#shim.close(held);
      }
    }
    const reusePort = this.#worker !== null;
    const options = { hostname: l.address, port: l.port, reusePort } as Deno.TcpListenOptions;
    const listener = Deno.listen(options);
    return {
      listener,
      socket: this.#shim.listenerFd(listener.addr),
      address: addressText(displayAddress(listener.addr)),
    };
  }

  /** Lets the kernel accept a connection once its first bytes are in: one
   * wake-up and one look per connection instead of two (a client that
   * waits for the server is accepted after about a second). */
  #deferAccept(entry: ListenerEntry, on: boolean): void {
    try {
      this.#shim.deferAccept(
        entry.socket,
        on,
      );
    } catch (e) {
      this.#log.warn("defer-accept-off", {
        address: entry.address,
        error: String(e),
      });
    }
  }

  /** Closes a listener; one of the express lane's once the lane has
   * decided on every connection it holds for it. */
  async #closeListener(key: string): Promise<void> {
    const entry = this.#listeners.get(key);
    if (!entry) return;
    this.#listeners.delete(key);
    if (entry.lane !== null) {
      await this.#lane!.stopListening(entry.lane);
      // A moment for the accept loop to take what the lane passed on last.
      await new Promise((r) => setTimeout(r, LANE_LAST_PASS_MS));
      const dropped = this.#shim.injectUnregister(entry.lane);
      if (dropped) this.#log.warn("express-queue-dropped", { connections: dropped });
    }
    // What the kernel accepted is served, not reset by the last close (at a
    // stop the supervisor keeps new clients out first: refuseNew).
    if (this.#shim.interposerActive()) this.#acceptBurst(entry.socket, entry, true);
    try {
      entry.listener.close();
    } catch { /* closed */ }
    this.#log.info("listener-closed", { address: entry.address });
  }

  /** Hands the listener to the express lane, if it can take it (not behind
   * a load balancer: the PROXY header is the daemon's to read). Returns
   * the listener's fd, or null. */
  #laneFor(entry: ListenerEntry): number | null {
    if (!this.#lane || entry.listen.proxyProtocol !== null) return null;
    try {
      this.#lane.listen(entry.socket);
      return entry.socket;
    } catch (e) {
      this.#log.warn("express-lane-off", {
        address: entry.address,
        error: String(e),
      });
      return null;
    }
  }

  get httpsMode(): string | null {
    return this.#https?.mode ?? null;
  }

  /** The listener's fd, for the shim to take bursts from; null when it
   * cannot (without the preloaded shim, a socket it accepted could not be
   * handed to Deno.serve or made a TcpConn). */
  #burstFd(socket: number): number | null {
    return this.#shim.interposerActive() ? socket : null;
  }

  async #acceptLoop(entry: ListenerEntry): Promise<void> {
    const listener = entry.listener;
    let failures = 0; // accept errors in the current burst
    // The lane's listener is read until it closes: what the lane passes on
    // while it stops must still be served.
    while (!this.#stopping || entry.lane !== null) {
      let conn: Deno.TcpConn;
      try {
        conn = await listener.accept();
      } catch (e) {
        if (this.#stopping || e instanceof Deno.errors.BadResource) return;
        if (clientWentAway(e)) { // reset before the accept was done: its own loss
          this.metrics.inc("portmux_accept_client_gone_total");
          continue;
        }
        // EMFILE and friends: keep the listener, say so once per burst, and
        // retry after a pause (the client waits in the kernel's backlog).
        this.metrics.inc("portmux_accept_failures_total");
        if (failures++ === 0) this.#log.error("accept-failed", { error: String(e) });
        await new Promise((r) => setTimeout(r, ACCEPT_RETRY_MS));
        continue;
      }
      if (failures > 0) {
        this.#log.info("accept-recovered", { failures });
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
    const most = last ? BACKLOG : BURST_MAX;
    for (let taken = 0; taken < most && (last || !this.#stopping);) {
      let batch;
      try {
        batch = this.#shim.acceptBatch(listenerFd, BURST_BATCH);
      } catch {
        return; // EMFILE and the like: Deno's next accept meets it, says it and waits
      }
      for (const a of batch) this.#admit(new ShimClient(a, this.#shim), entry);
      if (batch.length < BURST_BATCH) return;
      taken += batch.length;
    }
  }

  /** Applies the limits to a new connection, then serves it. */
  #admit(conn: Deno.TcpConn | ShimClient, entry: ListenerEntry): void {
    const listen = entry.listen;
    const peer = displayAddress(conn.remoteAddr).address;
    const trusted = listen.proxyProtocol?.trusted.some((c) => cidrContains(c, peer)) ?? false;
    const inLane = entry.lane !== null ? this.#lane!.waiting : 0;
    const lease = this.#admission.admit(peer, this.#preread.waiting + inLane, trusted, inLane);
    if (typeof lease === "string") {
      this.#refuse(conn, lease, peer);
      return;
    }
    const handling = this.#handle(conn, entry, lease);
    this.#inFlight.add(handling);
    handling.finally(() => this.#inFlight.delete(handling));
  }

  /** Closes a connection that would break a limit: the newest one, never an
   * established session. Logged once per second per limit, always counted. */
  #refuse(conn: { close(): void }, limit: LimitName, source: string): void {
    try {
      conn.close();
    } catch { /* gone */ }
    this.#sayRefused(limit, source);
  }

  #sayRefused(limit: LimitName, source: string): void {
    const total = this.metrics.inc("portmux_limit_hits_total", { limit });
    this.#throttled.warn(limit, "limit", { limit, source, total });
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
    let started = performance.now();
    let client = displayAddress(accepted.remoteAddr);
    let local = displayAddress(accepted.localAddr);
    const fields: Record<string, unknown> = {
      client: addressText(client),
      local: addressText(local),
    };
    const done = (outcome: Outcome, more: Record<string, unknown> = {}) => {
      const level = outcome === "failed" ? "error" : more.handoff_error ? "warn" : "info";
      this.#connectionLine(level, outcome, {
        ...fields,
        outcome,
        ms: Math.round((performance.now() - started) * 100) / 100,
        ...more,
      });
    };

    let conn: ClientSocket;
    if (accepted instanceof ShimClient) {
      conn = accepted;
      fields.accepted_by = "shim";
    } else {
      try {
        const found = this.#runtime.fd(accepted);
        conn = new DenoClient(accepted, found.fd, this.#shim);
        if (found.via === "lookup") fields.fd_lookup = "fallback";
      } catch (e) {
        accepted.close();
        if (e instanceof ShimError && e.code === "ENOTCONN") { // reset by the client already
          return done("closed", { reason: "eof", peeked: 0 });
        }
        return done("failed", { error: `no verified fd for the connection: ${e}` });
      }
    }
    const fd = conn.fd;
    if (entry.lane !== null) { // the lane waited for its bytes first: its deadline counts
      const age = this.#lane!.ageMs(fd);
      if (age !== null) {
        started -= age;
        fields.accepted_by = "express-passed";
      }
    }

    const { preread: limits, routes } = this.#config;
    const remaining = () => Math.max(1, limits.timeoutMs - (performance.now() - started));

    // A trusted load balancer says who the client is: read and remove that.
    if (listen.proxyProtocol?.trusted.some((c) => cidrContains(c, client.address))) {
      const header = await this.#preread.read(
        fd,
        PROXY_HEADER_MAX,
        remaining(),
        (bytes, final) => {
          const d = detectProxyHeader(bytes);
          return d.verdict === "more" && !final ? null : d;
        },
      );
      if (header.decision?.verdict !== "match") {
        conn.close();
        return done("failed", {
          error: `no valid PROXY protocol header from trusted ${addressText(client)} (${
            header.error?.message ?? header.end
          })`,
        });
      }
      const info = header.decision.info;
      try {
        this.#shim.consume(fd, info.length);
      } catch (e) {
        conn.close();
        return done("failed", { error: `reading the PROXY header: ${e}` });
      }
      fields.proxied_by = addressText(client);
      if (info.source && info.destination) {
        client = normalizeAddress(info.source);
        local = normalizeAddress(info.destination);
        Object.assign(fields, { client: addressText(client), local: addressText(local) });
      }
      const refusal = lease.moveTo(client.address);
      if (refusal) {
        this.#refuse(conn, refusal, client.address);
        return done("closed", { reason: refusal });
      }
    }

    const result = await this.#preread.read<Decision>(
      fd,
      limits.maxBytes,
      remaining(),
      (bytes, final) =>
        decide(routes, this.#config, { bytes, client, maxBytes: limits.maxBytes }, final),
    );
    fields.peeked = result.peeked;
    const decided = performance.now() - started;
    fields.decide_ms = Math.round(decided * 100) / 100;
    this.metrics.observeDecide(decided / 1000);
    if (result.decision === null) {
      conn.close();
      return done("failed", { error: `preread: ${result.error?.message ?? result.end}` });
    }
    const { route, reason, facts } = result.decision;
    Object.assign(fields, { route: route.name, action: route.action.kind, reason, ...facts });

    const { sni = null, alpn = [] } = facts;
    return await act(route, {
      conn,
      fd,
      client,
      local,
      peeked: result.peeked,
      sni,
      alpn,
      done,
    }, this.#actions);
  }

  #routeNamed(name: string): Route | DefaultRoute {
    return this.#config.routes.find((r) => r.name === name) ??
      { name: "close", action: { kind: "close" } };
  }

  /**
   * Applies a new config to new connections: routes, services, limits,
   * listeners (opened, closed, or kept), the admin listener, the log
   * level, and HTTPS (a new internal server if the certificate, key or
   * handler changed; the old one keeps its sessions for drain_timeout_ms,
   * then stops). Established connections are not touched. Built-in
   * services and the data folder change only with a restart. Throws if a
   * part cannot be applied; what was applied before stays.
   */
  async reload(next: Config): Promise<void> {
    const keys = new Set(next.listen.map(listenKey));
    if (
      this.#heldKeys &&
      (keys.size !== this.#heldKeys.size || ![...keys].every((k) => this.#heldKeys!.has(k)))
    ) {
      throw new Error(
        "listen: changed, and the listening sockets are the supervisor's: an upgrade (SIGUSR2) " +
          "or a restart applies it",
      );
    }
    const material = await readHttps(next);
    let old: HttpsSites | null = null;
    if (material?.madeFrom !== this.#https?.madeFrom) {
      old = this.#https;
      this.#https = material &&
        await HttpsSites.start(
          material,
          this.#shim,
          this.#log,
          this.metrics,
          () => this.#setLaneTable(this.#config),
        );
    }
    try {
      this.#openListeners(next);
    } catch (e) {
      if (old) { // undo: the old server goes on
        await this.#https?.stop();
        this.#https = old;
      }
      throw e;
    }
    if (old) {
      const retiring = old;
      setTimeout(() => retiring.stop(), next.drainTimeoutMs);
    }
    this.#updateChannels(next);
    for (const c of this.#channels.values()) c.openAll(); // new services: ready for the first
    this.#setLaneTable(next);
    this.#applyExpress(next);
    this.#admission.limits = next.limits;
    this.#preread.ensureCapacity(Math.max(next.preread.maxBytes, PROXY_HEADER_MAX));
    if (JSON.stringify(next.admin) !== JSON.stringify(this.#config.admin)) {
      await this.#admin?.shutdown();
      this.#admin = null;
      if (next.admin) this.#startAdmin(next.admin);
    }
    this.#log.level = next.log.level;
    this.#config = next;
    await this.#checkRuntime("reload");
    this.#log.info("reloaded", {
      config: next.source,
      https: old ? "new certificate or handler" : "unchanged",
      listeners: [...this.#listeners.values()].map((e) => e.address),
    });
  }

  /**
   * Stops gracefully: stops accepting; lets every connection in preread get
   * its decision (at the latest at its deadline, so a silent client cannot
   * hold the stop longer); lets HTTPS requests and relays finish for up to
   * drain_timeout_ms; then stops the parts.
   */
  stop(): Promise<void> {
    if (this.#stopped) return this.#stopped;
    this.#stopping = true;
    this.#stopped = this.#stop();
    return this.#stopped;
  }

  async #stop(): Promise<void> {
    await Promise.all([...this.#listeners.keys()].map((key) => this.#closeListener(key)));
    await Promise.allSettled([...this.#inFlight]);
    await this.#preread.stop();
    const drained = Promise.allSettled([this.#https?.stop(), ...this.#relays]);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timedOut = new Promise<"timeout">((r) =>
      timer = setTimeout(() => r("timeout"), this.#config.drainTimeoutMs)
    );
    if ((await Promise.race([drained, timedOut])) === "timeout") {
      this.#log.warn("drain-timeout", {
        drain_timeout_ms: this.#config.drainTimeoutMs,
        relays_open: this.#relays.size,
      });
    }
    clearTimeout(timer);
    for (const b of this.#builtins) await b.stop();
    clearInterval(this.#channelCheck);
    for (const c of this.#channels.values()) c.close();
    await this.#admin?.shutdown();
    this.#lane?.close();
    this.#log.info("stats", this.metrics.snapshot());
  }
}

/** Accept errors that concern only the client being accepted: it reset
 * before the runtime could read its address. */
function clientWentAway(e: unknown): boolean {
  return e instanceof Deno.errors.NotConnected || e instanceof Deno.errors.ConnectionReset ||
    e instanceof Deno.errors.ConnectionAborted;
}
