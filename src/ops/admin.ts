/**
 * The admin listener: /metrics (Prometheus text) and /healthz, plain HTTP.
 * It answers GET and HEAD only. On an address other than loopback it needs
 * a token (the config refuses one without), sent as
 * `Authorization: Bearer <token>`: the metrics name routes, services and
 * client counts, which are nobody else's business.
 */
import { addressText, displayAddress } from "../net/address.ts";
import { isLoopback } from "../net/ip.ts";
import type { Logger } from "./log.ts";

/** What /healthz says: ok, or why not (stopping, an HTTPS site down). */
export interface Health {
  readonly ok: boolean;
  readonly text: string;
}

export interface AdminOptions {
  readonly address: string;
  readonly port: number;
  readonly token: string | null;
  readonly metrics: () => string;
  readonly health: () => Health;
  readonly log: Logger;
}

const encoder = new TextEncoder();

/** Compares in time that does not depend on where the first difference is
 * (a token must not be guessable byte by byte from response times). */
function sameSecret(given: string, token: string): boolean {
  const a = encoder.encode(given), b = encoder.encode(token);
  let diff = a.length ^ b.length;
  for (let i = 0; i < b.length; i++) diff |= (a[i] ?? 0) ^ b[i]!;
  return diff === 0;
}

function text(body: string, status: number, headers: Record<string, string> = {}): Response {
  return new Response(body, {
    status,
    headers: { "content-type": "text/plain; charset=utf-8", ...headers },
  });
}

export function startAdmin(o: AdminOptions): Deno.HttpServer {
  if (!isLoopback(o.address)) {
    o.log.warn("admin-exposed", {
      address: addressText({ address: o.address, port: o.port }),
      message: "the admin listener is reachable from other hosts; requests need its token",
    });
  }
  return Deno.serve({
    hostname: o.address,
    port: o.port,
    // During an upgrade the old and the new generation's worker i both
    // serve admin port + i for a moment.
    reusePort: true,
    onListen: (addr) =>
      o.log.info("admin", { address: addressText(displayAddress(addr as Deno.NetAddr)) }),
  }, (req) => {
    if (req.method !== "GET" && req.method !== "HEAD") {
      return text("only GET and HEAD\n", 405, { allow: "GET, HEAD" });
    }
    if (o.token !== null) {
      const given = req.headers.get("authorization")?.match(/^Bearer (.+)$/)?.[1] ?? "";
      if (!sameSecret(given, o.token)) {
        return text("a token is needed: Authorization: Bearer <token>\n", 401, {
          "www-authenticate": 'Bearer realm="portmux admin"',
        });
      }
    }
    const path = new URL(req.url).pathname;
    if (path === "/metrics") {
      return new Response(o.metrics(), {
        headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
      });
    }
    if (path === "/healthz") {
      const h = o.health();
      return text(h.text + "\n", h.ok ? 200 : 503);
    }
    return text("not found: try /metrics or /healthz\n", 404);
  });
}
