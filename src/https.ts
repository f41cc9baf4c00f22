/**
 * HTTPS in-process: an internal Deno.serve (TLS, HTTP/1.1 and HTTP/2 by
 * ALPN) on a loopback port, given the classified connections.
 *
 * - "inject" mode (the shim is preloaded, DESIGN.md fact 4): the client's
 *   socket is queued in the shim and Deno.serve's own accept4 returns it, so
 *   TLS and HTTP run at Deno's full speed and the handler sees the real
 *   client address. Anyone connecting to the internal port directly is
 *   dropped by the interposer.
 * - "bridge" mode (fallback): the still-encrypted bytes are copied over a
 *   loopback connection; the handler gets the real client address through a
 *   map keyed by the bridge's port, and a direct connection gets a 403.
 */
import type { Shim } from "../ffi/shim.ts";
import { type Address, addressText, displayAddress } from "./address.ts";
import { detach } from "./conn_fd.ts";
import type { Logger } from "./log.ts";

/** What a user module exports as default: the Deno convention. */
export interface HttpsHandler {
  fetch(req: Request, info: Deno.ServeHandlerInfo<Deno.NetAddr>): Response | Promise<Response>;
}

export type HttpsMode = "inject" | "bridge";

export interface HttpsOptions {
  readonly cert: string;
  readonly key: string;
  readonly handler: HttpsHandler;
  readonly shim: Shim;
  readonly log: Logger;
}

/** Loads a user module and checks that it exports default { fetch }. */
export async function loadHandlerModule(path: string): Promise<HttpsHandler> {
  const mod = await import(new URL(`file://${path}`).href);
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

export class HttpsFrontend {
  readonly #shim: Shim;
  readonly #log: Logger;
  readonly #server: Deno.HttpServer<Deno.NetAddr>;
  readonly #listenerFd: number | null;
  readonly #bridged = new Map<number, Address>();
  readonly #bridges = new Set<Promise<void>>();

  private constructor(opts: HttpsOptions) {
    this.#shim = opts.shim;
    this.#log = opts.log;
    this.#server = Deno.serve({
      hostname: "127.0.0.1",
      port: 0,
      cert: opts.cert,
      key: opts.key,
      onListen: () => {},
      onError: (e) => {
        this.#log.error("https-handler-error", { error: String(e) });
        return new Response("internal error\n", { status: 500 });
      },
    }, (req, info) => this.#serve(opts.handler, req, info));
    if (this.#shim.interposerActive()) {
      this.#listenerFd = this.#shim.injectRegister(this.port);
      this.#log.info("https-ready", { delivery: "inject", internal_port: this.port });
    } else {
      this.#listenerFd = null;
      this.#log.warn("https-bridge-fallback", {
        message: "the accept4 interposer is not preloaded (start with `deno task start`); " +
          "HTTPS connections are bridged through a loopback copy, slower than injection",
      });
      this.#log.info("https-ready", { delivery: "bridge", internal_port: this.port });
    }
  }

  static start(opts: HttpsOptions): HttpsFrontend {
    return new HttpsFrontend(opts);
  }

  get mode(): HttpsMode {
    return this.#listenerFd === null ? "bridge" : "inject";
  }

  /** The internal listener's loopback port. */
  get port(): number {
    return this.#server.addr.port;
  }

  #serve(handler: HttpsHandler, req: Request, info: Deno.ServeHandlerInfo<Deno.NetAddr>) {
    let remote = info.remoteAddr;
    if (this.#listenerFd === null) {
      const client = this.#bridged.get(remote.port);
      if (!client || remote.hostname !== "127.0.0.1") {
        return new Response("connect through portmux\n", { status: 403 });
      }
      remote = { transport: "tcp", hostname: client.address, port: client.port };
    } else {
      const shown = displayAddress(remote);
      remote = { transport: "tcp", hostname: shown.address, port: shown.port };
    }
    return handler.fetch(req, { remoteAddr: remote, completed: info.completed });
  }

  /** Hands a classified TLS connection to the internal server. The frontend
   * owns conn from here on, in success and failure (errors are thrown after
   * the connection was closed). */
  take(conn: Deno.TcpConn, fd: number, client: Address): void {
    if (this.#listenerFd === null) {
      const bridge = this.#bridge(conn, client);
      this.#bridges.add(bridge);
      bridge.finally(() => this.#bridges.delete(bridge));
      return;
    }
    const owned = detach(this.#shim, conn, fd);
    try {
      this.#shim.injectPush(this.#listenerFd, owned);
    } catch (e) {
      this.#shim.close(owned);
      throw e;
    }
  }

  async #bridge(conn: Deno.TcpConn, client: Address): Promise<void> {
    let upstream: Deno.TcpConn;
    try {
      upstream = await Deno.connect({ hostname: "127.0.0.1", port: this.port });
    } catch (e) {
      conn.close();
      this.#log.error("https-bridge-failed", { client: addressText(client), error: String(e) });
      return;
    }
    const key = upstream.localAddr.port;
    this.#bridged.set(key, client);
    conn.setNoDelay(true);
    upstream.setNoDelay(true);
    try {
      await Promise.all([copy(conn, upstream), copy(upstream, conn)]);
    } finally {
      this.#bridged.delete(key);
      closeQuietly(conn);
      closeQuietly(upstream);
    }
  }

  /** Stops the internal server (and waits for bridges to end). */
  async stop(): Promise<void> {
    await this.#server.shutdown();
    await Promise.allSettled([...this.#bridges]);
  }
}

function closeQuietly(c: Deno.Conn): void {
  try {
    c.close();
  } catch { /* already closed */ }
}

/** Copies one direction until end of stream, then half-closes the other
 * side; on an error, closes both so the opposite copy ends too. */
async function copy(from: Deno.TcpConn, to: Deno.TcpConn): Promise<void> {
  const buf = new Uint8Array(64 * 1024);
  try {
    for (;;) {
      const n = await from.read(buf);
      if (n === null) break;
      for (let at = 0; at < n;) at += await to.write(buf.subarray(at, n));
    }
    await to.closeWrite();
  } catch {
    closeQuietly(from);
    closeQuietly(to);
  }
}
