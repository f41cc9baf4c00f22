/**
 * The reverse-proxy HTTPS handler: requests go on to an upstream HTTP(S)
 * server, bodies streamed both ways, with the real client's address in
 * X-Forwarded-For and Forwarded (RFC 7239); WebSocket upgrades are relayed
 * message by message.
 */
import type { HttpsHandler } from "./https.ts";

export interface ProxyOptions {
  /** The upstream's base URL, http: or https: (its path is prefixed). */
  readonly upstream: URL;
  /** How long a request may take to get its response headers. */
  readonly timeoutMs: number;
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

/** RFC 7239 §6: an IPv6 node is quoted and bracketed. */
function forwardedNode(address: string): string {
  return address.includes(":") ? `"[${address}]"` : address;
}

export function reverseProxyHandler(opts: ProxyOptions): HttpsHandler {
  const base = opts.upstream.href.replace(/\/$/, "");
  return {
    async fetch(req, info) {
      const url = new URL(req.url);
      const target = base + url.pathname + url.search;
      const client = info.remoteAddr.hostname;
      const headers = withoutHopByHop(req.headers);
      const prior = req.headers.get("x-forwarded-for");
      headers.set("x-forwarded-for", prior ? `${prior}, ${client}` : client);
      headers.set("x-forwarded-proto", "https");
      headers.set("x-forwarded-host", url.host);
      const forwarded = `for=${forwardedNode(client)};proto=https;host="${url.host}"`;
      const priorForwarded = req.headers.get("forwarded");
      headers.set("forwarded", priorForwarded ? `${priorForwarded}, ${forwarded}` : forwarded);

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
