/**
 * The reverse-proxy HTTPS handler: requests go on to an upstream HTTP(S)
 * server, bodies streamed both ways; WebSocket upgrades are relayed message
 * by message.
 *
 * What the upstream is told (trust as nginx's set_real_ip_from gives it):
 * - X-Forwarded-For and Forwarded (RFC 7239) end with the client portmux
 *   knows (the peer, or whom a trusted PROXY header named). A peer in
 *   trusted_forwarders has its own fields added to; anyone else's are
 *   dropped, so that a client cannot claim another address.
 * - X-Real-IP: that client, always, whatever came in.
 * - X-Forwarded-Proto and X-Forwarded-Host: the request portmux received
 *   (https, and its authority), whatever came in.
 * A Host that is not host[:port] (RFC 3986 §3.2.2-3) gets a 400 (RFC 9112
 * §3.2) before anything is forwarded. A request that named no authority (HTTP/1.0 without Host) is
 * given the address the client connected to when portmux knows it, else no
 * host at all: never the internal server's.
 */
import { addressText, displayAddress } from "../../net/address.ts";
import type { HttpsHandler, HttpsHandlerInfo } from "./frontend.ts";
import { type Cidr, cidrContains, ipBytes } from "../../net/ip.ts";

export interface ProxyOptions {
  /** The upstream's base URL, http: or https: (its path is prefixed). */
  readonly upstream: URL;
  /** How long a request may take to get its response headers. */
  readonly timeoutMs: number;
  /** Peers whose X-Forwarded-For and Forwarded are kept and added to. */
  readonly trustedForwarders: readonly Cidr[];
  /** What the internal servers put in req.url for a request that named no
   * authority (HttpsOptions.internalAuthorities). */
  readonly internalAuthorities?: ReadonlySet<string>;
}

/** RFC 9110 §7.6.1: hop-by-hop fields, never forwarded. */
const HOP_BY_HOP = [
  "connection",
  "keep-alive",
  "proxy-authenticate",
  "proxy-authorization",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
];

function withoutHopByHop(headers: Headers): Headers {
  const out = new Headers(headers);
  for (const name of (headers.get("connection") ?? "").split(",")) {
    if (name.trim()) out.delete(name.trim()); // fields the sender named hop-by-hop
  }
  for (const name of HOP_BY_HOP) out.delete(name);
  return out;
}

/** RFC 3986 §3.2.2 reg-name (an IPv4 address is one too), not empty: an
 * https URI has a host (RFC 9110 §4.2.2). */
const REG_NAME = /^(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+$/;

/** Whether text is a valid Host: host [":" port] (RFC 9110 §7.2, RFC 3986
 * §3.2.2-3), the host a reg-name, an IPv4 address or a bracketed IPv6 one
 * (IPvFuture and zone IDs are refused: no client needs them). */
export function isAuthority(text: string): boolean {
  const m = /^(\[[^\]]*\]|[^:]*)(?::(\d{0,5}))?$/.exec(text);
  if (!m || Number(m[2] ?? 0) > 65535) return false;
  const host = m[1]!;
  if (!host.startsWith("[")) return REG_NAME.test(host);
  const literal = host.slice(1, -1);
  return literal.includes(":") && ipBytes(literal) !== null;
}

/** The authority to tell the upstream: the one the request named (Host,
 * :authority or an absolute-form target: RFC 9112 §3.3), or for a request
 * that named none, the address the client connected to (null: unknown).
 * undefined: an invalid Host, to refuse (RFC 9112 §3.2: also an empty one,
 * or several). */
function authorityOf(
  req: Request,
  url: URL,
  info: HttpsHandlerInfo,
  internal: ReadonlySet<string>,
): string | null | undefined {
  const host = req.headers.get("host");
  if (host !== null && !isAuthority(host)) return undefined;
  if (host === null && internal.has(url.host)) { // Deno.serve's stand-in
    return info.localAddr ? addressText(displayAddress(info.localAddr)) : null;
  }
  // What req.url holds went through URL parsing (percent-decoding, IDNA):
  // checked again, as it is what the upstream is told.
  return isAuthority(url.host) ? url.host : undefined;
}

/** RFC 9110 §5.6.4: a quoted-string, `"` and `\` escaped. */
function quoted(text: string): string {
  return `"${text.replace(/["\\]/g, "\\$&")}"`;
}

/** RFC 7239 §6: a node; an IPv6 one bracketed, so quoted (§4). */
function forwardedNode(address: string): string {
  return address.includes(":") ? quoted(`[${address}]`) : address;
}

/** This hop's forwarded-element (RFC 7239 §4); host only when known. */
export function forwardedElement(client: string, authority: string | null): string {
  const host = authority === null ? "" : `;host=${quoted(authority)}`;
  return `for=${forwardedNode(client)};proto=https${host}`;
}

/** Sets what the upstream learns of the client and the request: a trusted
 * forwarder's chains are added to; anyone else's claims are replaced. */
function setForwarding(
  headers: Headers,
  client: string,
  authority: string | null,
  trusted: boolean,
): void {
  const chain = (name: string, ours: string) => {
    const prior = trusted ? headers.get(name) : null;
    headers.set(name, prior ? `${prior}, ${ours}` : ours);
  };
  chain("x-forwarded-for", client);
  chain("forwarded", forwardedElement(client, authority));
  headers.set("x-real-ip", client);
  headers.set("x-forwarded-proto", "https");
  if (authority === null) headers.delete("x-forwarded-host");
  else headers.set("x-forwarded-host", authority);
}

export function reverseProxyHandler(opts: ProxyOptions): HttpsHandler {
  const base = opts.upstream.href.replace(/\/$/, "");
  const internal = opts.internalAuthorities ?? new Set<string>();
  return {
    async fetch(req, info) {
      const url = URL.parse(req.url);
      const authority = url ? authorityOf(req, url, info, internal) : undefined;
      if (!url || authority === undefined) return new Response("bad Host\n", { status: 400 });
      const target = base + url.pathname + url.search;
      const client = displayAddress(info.remoteAddr).address;
      const trusted = opts.trustedForwarders.some((c) => cidrContains(c, client));
      const headers = withoutHopByHop(req.headers);
      setForwarding(headers, client, authority, trusted);

      if (req.headers.get("upgrade")?.toLowerCase() === "websocket") {
        return relayWebSocket(req, target.replace(/^http/, "ws"), headers);
      }
      let upstream: Response;
      try {
        upstream = await fetch(target, {
          method: req.method,
          headers,
          body: req.body,
          redirect: "manual",
          signal: AbortSignal.timeout(opts.timeoutMs),
        });
      } catch (e) {
        const timedOut = e instanceof DOMException && e.name === "TimeoutError";
        return new Response(timedOut ? "upstream timed out\n" : "upstream unreachable\n", {
          status: timedOut ? 504 : 502,
        });
      }
      return new Response(upstream.body, {
        status: upstream.status,
        statusText: upstream.statusText,
        headers: withoutHopByHop(upstream.headers),
      });
    },
  };
}

/** Accepts the client's WebSocket once the upstream's is open, then relays
 * messages and closes both ways. */
function relayWebSocket(req: Request, target: string, headers: Headers): Promise<Response> {
  return new Promise((resolve) => {
    const protocols = req.headers.get("sec-websocket-protocol")?.split(",").map((p) => p.trim());
    // Deno's WebSocket takes headers: the upstream learns the client too.
    // The handshake's own fields are made anew for the upstream.
    const forward = new Headers(headers);
    for (const name of [...forward.keys()]) {
      if (name === "host" || name.startsWith("sec-websocket-")) forward.delete(name);
    }
    const upstream = new WebSocket(target, {
      ...(protocols ? { protocols } : {}),
      headers: forward,
    } as unknown as string[]); // Deno's options form of the second argument
    upstream.binaryType = "arraybuffer";
    upstream.onerror = () => resolve(new Response("upstream WebSocket refused\n", { status: 502 }));
    upstream.onopen = () => {
      const { socket, response } = Deno.upgradeWebSocket(
        req,
        upstream.protocol ? { protocol: upstream.protocol } : {},
      );
      socket.binaryType = "arraybuffer";
      // The upstream may speak before the client's side is open: hold its
      // messages until then, in order.
      const early: (string | ArrayBuffer)[] = [];
      upstream.onmessage = (e) => {
        if (socket.readyState === WebSocket.OPEN) socket.send(e.data);
        else if (socket.readyState === WebSocket.CONNECTING) early.push(e.data);
      };
      socket.onopen = () => {
        for (const m of early.splice(0)) socket.send(m);
      };
      socket.onmessage = (e) => upstream.readyState === WebSocket.OPEN && upstream.send(e.data);
      socket.onclose = (e) => closeLike(upstream, e);
      upstream.onclose = (e) => closeLike(socket, e);
      resolve(response);
    };
  });
}

/** Closes ws the way the other side closed: with its code when that may be
 * sent (1000, 3000-4999; RFC 6455 §7.4), plainly otherwise (1006 "abnormal"
 * and the like cannot be sent). Never throws: it runs in an event handler,
 * where an exception would take the whole daemon down. */
function closeLike(ws: WebSocket, e: CloseEvent): void {
  if (ws.readyState === WebSocket.CLOSING || ws.readyState === WebSocket.CLOSED) return;
  try {
    if (e.code === 1000 || (e.code >= 3000 && e.code <= 4999)) ws.close(e.code, e.reason);
    else ws.close();
  } catch { /* closing already */ }
}
