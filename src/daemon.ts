/**
 * The daemon: listeners, and the path of every connection through it:
 * find its fd, peek until the route is clear, act, and log one line that
 * says what happened and why.
 */
import { Shim, ShimError } from "../ffi/shim.ts";
import { addressText, displayAddress, normalizeAddress } from "./address.ts";
import { decide, type Decision } from "./classify.ts";
import type { Config, DefaultRoute, Listen, Route } from "./config.ts";
import type { Address } from "./address.ts";
import { detectProxyHeader } from "./detect/proxy_protocol.ts";
import { cidrContains } from "./ip.ts";
import { openUpstream } from "./tcp_proxy.ts";
import { pipeBoth } from "./pipe.ts";
import { Admission, type Lease, type LimitName } from "./admission.ts";
import { ThrottledLog } from "./throttled_log.ts";
import { Metrics } from "./metrics.ts";
import { connFd } from "./conn_fd.ts";
import { encodeRecord } from "./handoff.ts";
import { ServiceChannels } from "./service_channels.ts";
import { HttpsFrontend, type HttpsHandler, loadHandlerModule, statusPageHandler } from "./https.ts";
import type { Logger } from "./log.ts";
import { Preread } from "./preread.ts";
import { selfSignedCertIn } from "./self_signed_cert.ts";
import { type BuiltinService, startBuiltinServices } from "./builtin_services.ts";

/** What became of a connection, as the log says it. */
type Outcome = "handed-off" | "https" | "proxied" | "closed" | "failed";

const ACCEPT_RETRY_MS = 100;

/** Bytes copied between a client and an upstream until both are done.
 * (Wrapped: an async function returning the bare promise would wait for it.) */
interface Relay {
  readonly ended: Promise<void>;
}

/** A classified connection, as the actions get it. */
interface Connection {
  readonly conn: Deno.TcpConn;
  readonly fd: number;
  readonly client: Address;
  readonly local: Address;
  readonly peeked: number;
  /** Logs the connection's one line. */
  readonly done: (outcome: Outcome, more?: Record<string, unknown>) => void;
}

/** A v1 header is at most 107 bytes; a v2 header is refused past 4 KiB. */
const PROXY_HEADER_MAX = 4096 + 16;

export class Daemon {
  readonly #config: Config;
  readonly #log: Logger;
  readonly #shim: Shim;
  readonly #preread: Preread;
  readonly #https: HttpsFrontend | null;
  readonly #builtins: BuiltinService[];
  readonly #listeners: Deno.TcpListener[] = [];
  readonly #inFlight = new Set<Promise<void>>();
  readonly #relays = new Set<Promise<void>>();
  readonly #admission: Admission;
  readonly metrics: Metrics;
  readonly #throttled: ThrottledLog;
  readonly #channels = new Map<string, ServiceChannels>();
  #stopping = false;
  #stopped: Promise<void> | null = null;
  #admin: Deno.HttpServer | null = null;

  private constructor(
    config: Config,
    log: Logger,
    shim: Shim,
    https: HttpsFrontend | null,
    builtins: BuiltinService[],
    metrics: Metrics,
  ) {
    this.metrics = metrics;
    this.#config = config;
    this.#log = log;
    this.#shim = shim;
    this.#https = https;
    this.#builtins = builtins;
    this.#preread = new Preread(shim, Math.max(config.preread.maxBytes, PROXY_HEADER_MAX));
    this.#admission = new Admission(config.limits);
    this.#throttled = new ThrottledLog(log);
    this.#declareMetrics();
    for (const service of config.services.values()) {
      this.#channels.set(
        service.name,
        new ServiceChannels(service, shim, log, this.#throttled, this.metrics),
      );
    }
  }

  /** The admin listener: /metrics (Prometheus text) and /healthz. */
  #startAdmin(at: { address: string; port: number }): void {
    this.#admin = Deno.serve({
      hostname: at.address,
      port: at.port,
      onListen: (addr) =>
        this.#log.info("admin", { address: addressText(displayAddress(addr as Deno.NetAddr)) }),
    }, (req) => {
      const path = new URL(req.url).pathname;
      if (path === "/metrics") {
        return new Response(this.metrics.render(), {
          headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
        });
      }
      if (path === "/healthz") {
        return new Response(this.#stopping ? "stopping\n" : "ok\n", {
          status: this.#stopping ? 503 : 200,
        });
      }
      return new Response("not found: try /metrics or /healthz\n", { status: 404 });
    });
  }

  #declareMetrics(): void {
    const m = this.metrics;
    m.counter("portmux_connections_total", "Connections by route and outcome.");
    m.counter("portmux_limit_hits_total", "Connections closed because a limit was reached.");
    m.counter("portmux_accept_failures_total", "Accept errors other than a client gone.");
    m.counter("portmux_accept_client_gone_total", "Clients that reset before accept finished.");
    m.counter("portmux_handoff_fallbacks_total", "Handoffs no instance took, by service.");
    m.counter("portmux_handoff_waits_total", "Times a handoff waited for an instance.");
    m.counter("portmux_handoff_instance_down_total", "Times an instance was found down.");
    m.counter("portmux_handoff_channel_full_total", "Times a channel was full.");
    m.counter("portmux_https_requests_total", "HTTPS requests answered, by status code.");
    m.gauge(
      "portmux_preread_waiting",
      "Connections waiting for their first bytes.",
      () => this.#preread.waiting,
    );
    m.gauge(
      "portmux_connections_held",
      "Connections held (preread and relays).",
      () => this.#admission.total,
    );
    m.gauge(
      "portmux_open_fds",
      "Open file descriptors of the daemon.",
      () => [...Deno.readDirSync("/proc/self/fd")].length,
    );
  }

  /** Starts everything the config names; throws if any part cannot start. */
  static async start(config: Config, log: Logger): Promise<Daemon> {
    const shim = new Shim();
    // Every waiting client is an fd: use what the hard limit allows.
    log.info("fd-limit", { open_files: shim.raiseNofile() });
    const metrics = new Metrics();
    const https = await startHttps(config, shim, log, metrics);
    let builtins: BuiltinService[];
    try {
      builtins = await startBuiltinServices(config, log);
    } catch (e) {
      await https?.stop();
      throw e;
    }
    const daemon = new Daemon(config, log, shim, https, builtins, metrics);
    try {
      for (const { address, port } of config.listen) {
        const listener = Deno.listen({ hostname: address, port });
        daemon.#listeners.push(listener);
        log.info("listening", { address: addressText(displayAddress(listener.addr)) });
      }
    } catch (e) {
      await daemon.stop();
      throw e;
    }
    daemon.#listeners.forEach((listener, i) => daemon.#acceptLoop(listener, config.listen[i]!));
    if (config.admin) daemon.#startAdmin(config.admin);
    return daemon;
  }

  /** The bound addresses (useful when the config asked for port 0). */
  get addresses(): Deno.NetAddr[] {
    return this.#listeners.map((l) => l.addr);
  }

  get httpsMode(): string | null {
    return this.#https?.mode ?? null;
  }

  async #acceptLoop(listener: Deno.TcpListener, listen: Listen): Promise<void> {
    let failures = 0; // accept errors in the current burst
    while (!this.#stopping) {
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
      const peer = displayAddress(conn.remoteAddr).address;
      const trusted = listen.proxyProtocol?.trusted.some((c) => cidrContains(c, peer)) ?? false;
      const lease = this.#admission.admit(peer, this.#preread.waiting, trusted);
      if (typeof lease === "string") {
        this.#refuse(conn, lease, peer);
        continue;
      }
      const handling = this.#handle(conn, listen, lease);
      this.#inFlight.add(handling);
      handling.finally(() => this.#inFlight.delete(handling));
    }
  }

  /** Closes a connection that would break a limit: the newest one, never an
   * established session. Logged once per second per limit, always counted. */
  #refuse(conn: Deno.Conn, limit: LimitName, source: string): void {
    try {
      conn.close();
    } catch { /* gone */ }
    const total = this.metrics.inc("portmux_limit_hits_total", { limit });
    this.#throttled.warn(limit, "limit", { limit, source, total });
  }

  /** Serves one connection; its lease is released when the daemon lets go
   * of it: at once, or when a relay it started ends. The returned promise
   * ends with the decision, not with the relay (stop waits for decisions). */
  async #handle(conn: Deno.TcpConn, listen: Listen, lease: Lease): Promise<void> {
    let relay: Relay | void = undefined;
    try {
      relay = await this.#serve(conn, listen, lease);
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
  async #serve(conn: Deno.TcpConn, listen: Listen, lease: Lease): Promise<Relay | void> {
    const started = performance.now();
    let client = displayAddress(conn.remoteAddr);
    let local = displayAddress(conn.localAddr);
    const fields: Record<string, unknown> = {
      client: addressText(client),
      local: addressText(local),
    };
    const done = (outcome: Outcome, more: Record<string, unknown> = {}) => {
      this.metrics.inc("portmux_connections_total", {
        route: String(fields.route ?? "none"),
        outcome,
      });
      const level = outcome === "failed" ? "error" : more.handoff_error ? "warn" : "info";
      this.#log[level]("connection", {
        ...fields,
        outcome,
        ms: Math.round((performance.now() - started) * 100) / 100,
        ...more,
      });
    };

    let fd: number;
    try {
      const found = connFd(this.#shim, conn);
      fd = found.fd;
      if (found.via === "lookup") fields.fd_lookup = "fallback";
    } catch (e) {
      conn.close();
      if (e instanceof ShimError && e.code === "ENOTCONN") { // reset by the client already
        return done("closed", { reason: "eof", peeked: 0 });
      }
      return done("failed", { error: `no verified fd for the connection: ${e}` });
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

    return await this.#act(route, { conn, fd, client, local, peeked: result.peeked, done });
  }

  /** Carries out a route's action; returns the relay it leaves running. */
  async #act(route: Route | DefaultRoute, c: Connection): Promise<Relay | void> {
    const { conn, fd, client, local, done } = c;
    const action = route.action;
    try {
      switch (action.kind) {
        case "close":
          conn.close();
          return done("closed");
        case "https":
          if (!this.#https) { // the config forbids it; never leave conn open
            conn.close();
            throw new Error("no HTTPS frontend");
          }
          this.#https.take(conn, fd, client);
          return done("https", { delivery: this.#https.mode });
        case "handoff": {
          const record = encodeRecord({
            v: 1,
            route: route.name,
            service: action.service.name,
            client,
            local,
            peeked: c.peeked,
          });
          const sent = await this.#channels.get(action.service.name)!.send(
            fd,
            record,
            action.waitMs,
          );
          const waited = { waited_ms: Math.round(sent.waitedMs * 100) / 100 };
          if (sent.sent) {
            // The service has the socket now. Let go of ours without a FIN
            // (DESIGN.md fact 2): release, then close.
            this.#shim.release(fd);
            conn.close();
            return done("handed-off", {
              service: action.service.name,
              socket: sent.socket,
              ...waited,
            });
          }
          this.metrics.inc("portmux_handoff_fallbacks_total", { service: action.service.name });
          const fallback = this.#routeNamed(action.fallback);
          const note = {
            ...waited,
            fallback: fallback.name,
            handoff_error: `service "${action.service.name}" did not take it: ${sent.reason}`,
          };
          return await this.#act(fallback, {
            ...c,
            done: (outcome, more = {}) => done(outcome, { ...note, ...more }),
          });
        }
        case "proxy": {
          const target = `${action.upstream.hostname}:${action.upstream.port}`;
          let upstream: Deno.TcpConn;
          try {
            upstream = await openUpstream(
              action.upstream,
              action.proxyProtocol ? { client, local } : null,
            );
          } catch (e) {
            conn.close();
            throw new Error(
              `upstream ${target} unreachable (${(e as Error).message}); connection closed`,
            );
          }
          done("proxied", { upstream: target });
          return { ended: pipeBoth(conn, upstream) }; // as long as the two talk
        }
      }
    } catch (e) {
      return done("failed", { error: String(e) });
    }
  }

  #routeNamed(name: string): Route | DefaultRoute {
    return this.#config.routes.find((r) => r.name === name) ??
      { name: "close", action: { kind: "close" } };
  }

  /**
   * Stops gracefully: stops accepting; lets every connection in preread get
   * its decision (at the latest at its deadline, so a silent client cannot
   * hold the stop longer); lets HTTPS requests and relays finish for up to
   * drain_timeout_ms; then stops the parts.
   */
  async stop(): Promise<void> {
    if (this.#stopped) return this.#stopped;
    this.#stopping = true;
    this.#stopped = this.#stop();
    return this.#stopped;
  }

  async #stop(): Promise<void> {
    for (const l of this.#listeners) {
      try {
        l.close();
      } catch { /* already closed */ }
    }
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
    for (const c of this.#channels.values()) c.close();
    await this.#admin?.shutdown();
    this.#log.info("stats", this.metrics.snapshot());
  }
}

/** Accept errors that concern only the client being accepted: it reset
 * before the runtime could read its address. */
function clientWentAway(e: unknown): boolean {
  return e instanceof Deno.errors.NotConnected || e instanceof Deno.errors.ConnectionReset ||
    e instanceof Deno.errors.ConnectionAborted;
}

async function startHttps(
  config: Config,
  shim: Shim,
  log: Logger,
  metrics: Metrics,
): Promise<HttpsFrontend | null> {
  if (!config.tls) return null;
  const { cert, key } = config.tls.kind === "files"
    ? {
      cert: await Deno.readTextFile(config.tls.cert),
      key: await Deno.readTextFile(config.tls.key),
    }
    : await selfSignedCertIn(config.dataDir);
  let frontend: HttpsFrontend | null = null;
  const handler: HttpsHandler = config.https.handler
    ? await loadHandlerModule(config.https.handler)
    : statusPageHandler(() => frontend?.mode ?? "inject");
  frontend = HttpsFrontend.start({ cert, key, handler, shim, log, metrics });
  return frontend;
}
