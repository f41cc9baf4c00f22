/**
 * Classification: peeked bytes in, route out. Pure (no I/O), so it is tested
 * without sockets. Each matcher answers "match", "no", or "more" (not enough
 * bytes yet to say), like sslh's probes; routes are tried in order and the
 * first match wins, but only once every earlier route has said "no".
 */
import type { DefaultRoute, Matcher, Route } from "./config.ts";
import type { PrereadFinal } from "./preread.ts";

export type Verdict = "match" | "no" | "more";

/** TLS record header of a ClientHello: content type 22 (handshake), major
 * version 3 (SSL 3.0 to TLS 1.3 all write 3.x here, RFC 8446 §5.1), then a
 * handshake of type 1 (client_hello, RFC 8446 §4). */
export function matchTlsClientHello(bytes: Uint8Array): Verdict {
  const expect: [number, (b: number) => boolean][] = [
    [0, (b) => b === 0x16],
    [1, (b) => b === 0x03],
    [2, (b) => b <= 0x04],
    [5, (b) => b === 0x01],
  ];
  for (const [at, ok] of expect) {
    const b = bytes[at];
    if (b === undefined) return "more";
    if (!ok(b)) return "no";
  }
  return "match";
}

export function matchPrefix(prefix: Uint8Array, bytes: Uint8Array): Verdict {
  const n = Math.min(prefix.length, bytes.length);
  for (let i = 0; i < n; i++) if (prefix[i] !== bytes[i]) return "no";
  return bytes.length >= prefix.length ? "match" : "more";
}

export function runMatcher(m: Matcher, bytes: Uint8Array): Verdict {
  return "protocol" in m ? matchTlsClientHello(bytes) : matchPrefix(m.prefix, bytes);
}

/** Why a route was chosen, for the log. */
export type Reason = "matched" | "no-match" | PrereadFinal;

export interface Decision {
  readonly route: Route | DefaultRoute;
  readonly reason: Reason;
}

/**
 * The route for these bytes, or null if more bytes could change the answer.
 * With final set (deadline passed, end of stream, peek limit reached) a
 * route still saying "more" counts as "no", and the default is taken.
 */
export function decide(
  routes: readonly Route[],
  fallback: DefaultRoute,
  bytes: Uint8Array,
  final: PrereadFinal | null,
): Decision | null {
  for (const route of routes) {
    const v = runMatcher(route.match, bytes);
    if (v === "match") return { route, reason: "matched" };
    if (v === "more" && !final) return null;
  }
  return { route: fallback, reason: final ?? "no-match" };
}
