/**
 * HTTPS in-process: an internal Deno.serve (TLS, HTTP/1.1 and HTTP/2 by
 * ALPN) on a loopback port, given the classified connections.
 *
 * - "inject" mode (the shim is preloaded, docs/design.md R4): the client's
 *   socket is queued in the shim and Deno.serve's own accept4 returns it, so
 *   TLS and HTTP run at Deno's full speed and the handler sees the real
 *   client address. Anyone connecting to the internal port directly is
 *   dropped by the interposer.
 * - "bridge" mode (fallback): the still-encrypted bytes are copied over a
 *   loopback connection; the handler gets the real client address through a
 *   map keyed by the bridge's port, and a direct connection gets a 403.
 */
import { type RelayEnd, type Shim, ShimError } from "../../../ffi/shim.ts";
import { type Address, addressText, displayAddress } from "../../net/address.ts";
import type { ClientSocket } from "../../accept/client_socket.ts";
import type { Logger } from "../../ops/log.ts";
import type { CounterSeries, Metrics } from "../../ops/metrics.ts";
import type { AccessLog } from "./access_log.ts";
import { relayToLoopback } from "../proxy/relay.ts";
import { fault } from "../../ops/faults.ts";

/** How long a site whose server stopped waits before it tries again, when
 * starting a new one failed. */
const RESTART_RETRY_MS = 1000;

/** What a user module exports as default: the Deno convention. */
export interface HttpsHandler {
  fetch(req: Request, info: HttpsHandlerInfo): Response | Promise<Response>;
}

/** Deno's info on a request, and what only portmux knows of it. */
export interface HttpsHandlerInfo extends Deno.ServeHandlerInfo<Deno.NetAddr> {
  /** The address the client connected to, when portmux knows it: in bridge
   * mode, with an access log, for a PROXY-protocol client (the local end of
   * the proxy's connection, unless take() is given the header's
   * destination); not for what the express lane delivers (no JavaScript
   * sees those connections). */
  readonly localAddr?: Deno.NetAddr;
}

export type HttpsMode = "inject" | "bridge";

export interface HttpsOptions {
  /** How logs and /healthz name the site. */
  readonly site: string;
  /** Called when the site has started a new internal server (new listener). */
  readonly restarted: () => void;
  /** What the internal servers put in req.url for a request that named no
   * authority (HTTP/1.0 without Host): "localhost:<internal port>", one per
   * server, kept here for the handlers (the reverse proxy never passes it
   * on). Shared by the sites. */
  readonly internalAuthorities: Set<string>;
  readonly cert: string;
  readonly key: string;
  readonly handler: HttpsHandler;
  /** A Strict-Transport-Security value for responses that set none. */
  readonly hsts: string | null;
  /** The access log, if any (shared by the sites). */
  readonly accessLog: AccessLog | null;
  readonly shim: Shim;
  readonly log: Logger;
  /** Counts answered requests by status. */
  readonly metrics: Metrics;
}

let loads = 0;

/** Why sites must bridge although the shim is preloaded: injection failed
 * its runtime check (src/ops/runtime_check.ts); null: they inject. */
let injectionBroken: string | null = null;

/** Makes the sites started from now on bridge (the runtime does not
 * change while the process runs: injection stays off). */
export function stopInjecting(reason: string): void {
  injectionBroken = reason;
}

/** Loads a user module and checks that it exports default { fetch }. Each
 * load reads the file afresh (a reload must see a changed module, and Deno
 * caches modules by URL: the query makes each load's URL new). */
export async function loadHandlerModule(path: string): Promise<HttpsHandler> {
  const mod = await import(`${new URL(`file://${path}`).href}?load=${++loads}`);
  if (typeof mod.default?.fetch !== "function") {
    throw new Error(`${path}: the HTTPS handler module must export default { fetch }`);
  }
  return mod.default as HttpsHandler;
}

/** The built-in page: says what answered and who asked. */
export function statusPageHandler(mode: () => HttpsMode): HttpsHandler {
  return {
    fetch(req, info) {
      const client = displayAddress(info.remoteAddr);
      const body = [
        "portmux: HTTPS is served here.",
        `client: ${addressText(client)}`,
        `path: ${new URL(req.url).pathname}`,
        `delivery: ${mode()}`,
        "",
      ].join("\n");
      return new Response(body, { headers: { "content-type": "text/plain; charset=utf-8" } });
    },
  };
}

const MAX_PEERS = 65536;

/** What the internal server cannot see of a connection, portmux knows: the
 * real client (behind a PROXY header or the bridge) and the HTTP version
 * (Deno.serve takes h2 whenever the client offers it; handlers are not told). */
interface PeerFacts {
  readonly client: Address;
  /** The address the client connected to (null: not known). */
  readonly local: Address | null;
  readonly version: "HTTP/2.0" | "HTTP/1.1";
}

function versionFor(alpn: readonly string[]): PeerFacts["version"] {
  return alpn.includes("h2") ? "HTTP/2.0" : "HTTP/1.1";
}

function tcp(a: Address): Deno.NetAddr {
  return { transport: "tcp", hostname: a.address, port: a.port };
}

function peerKey(a: Deno.NetAddr): string {
  const shown = displayAddress(a);
  return `${shown.address}|${shown.port}`;
}

/** Deno's info, with the real client and the address it connected to. */
function handlerInfo(
  info: Deno.ServeHandlerInfo<Deno.NetAddr>,
  facts: PeerFacts,
): HttpsHandlerInfo {
  return {
    remoteAddr: tcp(facts.client),
    completed: info.completed,
    ...(facts.local ? { localAddr: tcp(facts.local) } : {}),
  };
}

export class HttpsFrontend {
  readonly #opts: HttpsOptions;
  readonly #shim: Shim;
  readonly #log: Logger;
  readonly #requestSeries = new Map<number, CounterSeries>();
  #server: Deno.HttpServer<Deno.NetAddr>;
  #listenerFd: number | null;
  /** Injection (the shim preloaded), else bridge. */
  #inject: boolean;
  /** Why the internal server is not serving (null: it is). */
  #down: string | null = null;
  #retry: ReturnType<typeof setTimeout> | undefined;
  readonly #bridged = new Map<number, PeerFacts>();
  /** Inject mode: facts of the sockets handed in, keyed by their peer, kept
   * when there is an access log or a PROXY-protocol client. Live sockets
   * have distinct peers, and a reused peer overwrites its stale entry
   * before its first request, so entries need no removal: the map is only
   * bounded. */
  readonly #peers = new Map<string, PeerFacts>();
  readonly #accessLog: AccessLog | null;
  readonly #bridges = new Set<Promise<void>>();
  #stopping: Promise<void> | null = null;

  private constructor(opts: HttpsOptions) {
    this.#opts = opts;
    this.#shim = opts.shim;
    this.#log = opts.log;
    this.#accessLog = opts.accessLog;
    this.#inject = opts.shim.inject.active() && injectionBroken === null;
    this.#server = this.#serve();
    this.#listenerFd = this.#register(this.#server);
  }

  /** For tests (src/ops/faults.ts, https-accept): the next accept of this
   * site's server fails, as nothing else makes it on loopback. */
  armAcceptFault(): void {
    if (this.#listenerFd !== null && fault("https-accept")) {
      this.#shim.inject.failNext(this.#listenerFd);
    }
  }

  /** A new internal server, watched: should it stop while this site is not
   * stopping (Deno.serve ends on any accept error it meets), the site says
   * so and starts a new one. */
  #serve(): Deno.HttpServer<Deno.NetAddr> {
    const server = Deno.serve({
      hostname: "127.0.0.1",
      port: 0,
      cert: this.#opts.cert,
      key: this.#opts.key,
      onListen: () => {},
      onError: (e) => {
        this.#log.error("https-handler-error", { error: String(e) });
        this.#requestsBy(500).inc();
        return new Response("internal error\n", { status: 500 });
      },
    }, (req, info) => this.#request(req, info));
    const authority = `localhost:${server.addr.port}`;
    this.#opts.internalAuthorities.add(authority);
    const gone = () => this.#opts.internalAuthorities.delete(authority);
    server.finished.then(() => (gone(), this.#stopped(server, null)), (e) => {
      gone();
      this.#stopped(server, e);
    });
    return server;
  }

  /** Makes the server's listener take injected connections; null when the
   * shim is not preloaded (bridge mode). */
  #register(server: Deno.HttpServer<Deno.NetAddr>): number | null {
    const port = server.addr.port;
    let why = injectionBroken === null
      ? "the accept4 interposer is not preloaded (start with `deno task start`)"
      : `injection failed its runtime check (${injectionBroken})`;
    if (this.#inject) {
      try {
        const fd = this.#shim.inject.register(port);
        this.#log.info("https-ready", { delivery: "inject", internal_port: port });
        return fd;
      } catch (e) { // no doorbell: the runtime does not watch the listener where we can ring
        if (!(e instanceof ShimError && e.code === "ENOENT")) throw e;
        this.#inject = false;
        why = `the internal listener cannot be rung (${e})`;
      }
    }
    this.#log.warn("https-bridge-fallback", {
      message: `${why}; HTTPS connections are bridged through a loopback copy, slower than ` +
        "injection",
    });
    this.#log.info("https-ready", { delivery: "bridge", internal_port: port });
    return null;
  }

  /** The internal server stopped. Unless the site is stopping, that is an
   * outage: said, counted, and the site starts a new server (every second
   * until one starts; /healthz says the site is down meanwhile). */
  #stopped(server: Deno.HttpServer<Deno.NetAddr>, error: unknown): void {
    if (this.#stopping || server !== this.#server) return;
    this.#down = error === null ? "stopped" : String(error);
    this.#opts.metrics.inc("portmux_https_site_down_total", { site: this.#opts.site });
    this.#log.error("https-site-down", { site: this.#opts.site, error: this.#down });
    if (this.#listenerFd !== null) { // its listener is closed: nothing is queued there any more
      const dropped = this.#shim.inject.unregister(this.#listenerFd, true);
      if (dropped) {
        this.#log.warn("https-queue-dropped", { site: this.#opts.site, connections: dropped });
      }
      this.#listenerFd = null;
    }
    this.#restart();
  }

  #restart(): void {
    if (this.#stopping) return;
    let server: Deno.HttpServer<Deno.NetAddr> | null = null;
    try {
      if (fault("https-restart")) throw new Error("test fault: https-restart");
      server = this.#serve();
      this.#listenerFd = this.#register(server);
      this.#server = server;
    } catch (e) {
      server?.shutdown(); // started, but cannot take injected clients: not kept
      this.#log.error("https-site-restart-failed", { site: this.#opts.site, error: String(e) });
      this.#retry = setTimeout(() => this.#restart(), RESTART_RETRY_MS);
      return;
    }
    this.#down = null;
    this.#log.info("https-site-up", { site: this.#opts.site, internal_port: this.port });
    this.#opts.restarted();
  }

  /** Why the site cannot accept now, or null when it can. */
  get down(): string | null {
    return this.#down;
  }

  get site(): string {
    return this.#opts.site;
  }

  /** One request. The handler sees the real client; the response gets HSTS,
   * is counted and logged. */
  async #request(req: Request, info: Deno.ServeHandlerInfo<Deno.NetAddr>): Promise<Response> {
    // Injected sockets are the clients' own, so with no PROXY-protocol client
    // and no access log there is nothing to look up: info is already true.
    const facts = this.#listenerFd !== null && this.#peers.size === 0 && !this.#accessLog
      ? null
      : this.#facts(info.remoteAddr);
    if (facts === undefined) return new Response("connect through portmux\n", { status: 403 });
    // Deno's own info when portmux knows no more: one object less per request.
    const response = await this.#opts.handler.fetch(req, facts ? handlerInfo(info, facts) : info);
    return this.#answered(req, response, facts);
  }

  #answered(req: Request, response: Response, facts: PeerFacts | null): Response {
    if (this.#accessLog && facts) {
      const url = new URL(req.url);
      const length = response.headers.get("content-length");
      this.#accessLog.write({
        client: facts.client.address,
        method: req.method,
        target: url.pathname + url.search,
        version: facts.version,
        status: response.status,
        bytes: length === null ? null : Number(length),
        referer: req.headers.get("referer"),
        userAgent: req.headers.get("user-agent"),
      });
    }
    const hsts = this.#opts.hsts;
    if (hsts && !response.headers.has("strict-transport-security")) {
      try {
        response.headers.set("strict-transport-security", hsts);
      } catch { /* immutable headers (a fetched response): left as they are */ }
    }
    this.#requestsBy(response.status).inc();
    return response;
  }

  /** The request counter of a status code. */
  #requestsBy(status: number): CounterSeries {
    let series = this.#requestSeries.get(status);
    if (!series) {
      series = this.#opts.metrics.series("portmux_https_requests_total", { code: String(status) });
      this.#requestSeries.set(status, series);
    }
    return series;
  }

  static start(opts: HttpsOptions): HttpsFrontend {
    return new HttpsFrontend(opts);
  }

  get mode(): HttpsMode {
    return this.#inject ? "inject" : "bridge";
  }

  /** The internal listener's fd, where connections are injected (null in
   * bridge mode). */
  get listenerFd(): number | null {
    return this.#listenerFd;
  }

  /** The internal listener's loopback port. */
  get port(): number {
    return this.#server.addr.port;
  }

  /** The facts of the connection with this peer; undefined for one that did
   * not come through portmux (possible in bridge mode only: in inject mode
   * the interposer drops strangers). */
  #facts(remote: Deno.NetAddr): PeerFacts | undefined {
    if (this.#listenerFd === null) {
      return remote.hostname === "127.0.0.1" ? this.#bridged.get(remote.port) : undefined;
    }
    return this.#peers.get(peerKey(remote)) ??
      { client: displayAddress(remote), local: null, version: "HTTP/1.1" };
  }

  /** Hands a classified TLS connection to the internal server. The frontend
   * owns conn from here on, in success and failure (errors are thrown after
   * the connection was closed). local: the address the client connected to
   * (the socket's own unless given: a PROXY header's destination). */
  take(
    conn: ClientSocket,
    client: Address,
    alpn: readonly string[],
    local: Address = displayAddress(conn.localAddr),
  ): void {
    if (this.#down !== null) {
      conn.close();
      throw new Error(`HTTPS site ${this.#opts.site} is down (${this.#down})`);
    }
    const facts: PeerFacts = { client, local, version: versionFor(alpn) };
    if (this.#listenerFd === null) {
      const bridge = this.#bridge(conn, facts);
      this.#bridges.add(bridge);
      bridge.finally(() => this.#bridges.delete(bridge));
      return;
    }
    const peer = displayAddress(conn.remoteAddr);
    if (this.#accessLog || peer.address !== client.address || peer.port !== client.port) {
      const key = peerKey(conn.remoteAddr);
      this.#peers.delete(key); // re-insert as the newest
      this.#peers.set(key, facts);
      if (this.#peers.size > MAX_PEERS) this.#peers.delete(this.#peers.keys().next().value!);
    }
    const owned = conn.detach();
    try {
      this.#shim.inject.push(this.#listenerFd, owned);
    } catch (e) {
      this.#shim.fds.close(owned);
      throw e;
    }
  }

  /** Relays the still-encrypted bytes to the internal server over a
   * loopback connection the shim makes; the handler knows the client by
   * that connection's port. */
  async #bridge(socket: ClientSocket, facts: PeerFacts): Promise<void> {
    const failed = (e: unknown) =>
      this.#log.error("https-bridge-failed", {
        client: addressText(facts.client),
        error: String(e),
      });
    let bridge: { localPort: number; ended: Promise<RelayEnd> };
    try {
      bridge = relayToLoopback(this.#shim, socket.detach(), this.port);
    } catch (e) {
      return failed(e);
    }
    this.#bridged.set(bridge.localPort, facts);
    try {
      const end = await bridge.ended;
      if (end.error === "ECONNREFUSED") failed("the internal server refused the bridge");
    } finally {
      this.#bridged.delete(bridge.localPort);
    }
  }

  /** Stops the internal server (and waits for bridges to end); safe to
   * call again. */
  stop(): Promise<void> {
    this.#stopping ??= this.#stop();
    return this.#stopping;
  }

  async #stop(): Promise<void> {
    clearTimeout(this.#retry);
    if (this.#listenerFd !== null) {
      const dropped = this.#shim.inject.unregister(this.#listenerFd);
      if (dropped) this.#log.warn("https-queue-dropped", { connections: dropped });
    }
    await this.#server.shutdown();
    await Promise.allSettled([...this.#bridges]);
  }
}
