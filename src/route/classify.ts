/**
 * Classification: peeked bytes (and the client's address) in, route out.
 * Pure, so it is tested without sockets.
 *
 * A route's conditions each answer "match", "no" or "more" (not enough
 * bytes yet); the route matches when all match. Routes are tried in order
 * and the first that matches wins, but only once every earlier route has
 * said "no": an earlier route still waiting for bytes holds the decision.
 * When no more bytes will come (deadline, end of stream, peek limit),
 * "more" counts as "no".
 */
import type { Address } from "../net/address.ts";
import type { DefaultRoute, Route, RouteMatch } from "../config/config.ts";
import type { Detection, Verdict } from "../detect/detection.ts";
import { matchMinLength, matchPattern, matchPrefix, matchRegex } from "../detect/private.ts";
import { DETECTORS, type ProtocolInfo, type ProtocolName } from "../detect/registry.ts";
import { cidrContains } from "../net/ip.ts";
import { nameMatches } from "./name_pattern.ts";
import type { PrereadFinal } from "../accept/preread.ts";

/** Why a route was chosen, for the log. */
export type Reason = "matched" | "no-match" | PrereadFinal;

/** What classification learnt about the connection, for the log. */
export interface Facts {
  protocol?: ProtocolName;
  sni?: string | null;
  alpn?: readonly string[];
  host?: string | null;
}

export interface Decision {
  readonly route: Route | DefaultRoute;
  readonly reason: Reason;
  readonly facts: Facts;
}

export interface ClassifyInput {
  readonly bytes: Uint8Array;
  readonly client: Address;
  /** The peek limit: TLS hellos larger than this are TLS without SNI. */
  readonly maxBytes: number;
}

/** The routes a decision can end in, besides the configured ones. */
export interface Fallbacks {
  readonly defaultRoute: DefaultRoute;
  /** For a client that sent nothing at all before the deadline. */
  readonly timeoutRoute: DefaultRoute;
}

/** Runs each protocol's detector at most once per look at the bytes. */
class Detections {
  readonly #seen = new Map<ProtocolName, Detection<unknown>>();
  constructor(readonly input: ClassifyInput) {}

  get<P extends ProtocolName>(p: P): Detection<ProtocolInfo[P]> {
    let d = this.#seen.get(p);
    if (!d) {
      d = DETECTORS[p](this.input.bytes, this.input.maxBytes);
      this.#seen.set(p, d);
    }
    return d as Detection<ProtocolInfo[P]>;
  }
}

/** Combines condition verdicts: any "no" wins, then any "more". */
function all(verdicts: Verdict[]): Verdict {
  if (verdicts.includes("no")) return "no";
  return verdicts.includes("more") ? "more" : "match";
}

/** Whether the connection satisfies m, and what was learnt on the way. */
function matchRoute(m: RouteMatch, d: Detections, facts: Facts): Verdict {
  const { bytes, client } = d.input;
  const v: Verdict[] = [];
  if (m.source && !m.source.some((c) => cidrContains(c, client.address))) return "no";
  if (m.protocol) {
    const found = d.get(m.protocol);
    v.push(found.verdict);
    if (found.verdict === "match") v.push(protocolConditions(m, m.protocol, found.info, facts));
  }
  if (m.prefix) v.push(matchPrefix(m.prefix, bytes));
  if (m.pattern) v.push(matchPattern(m.pattern, bytes));
  if (m.regex) v.push(matchRegex(m.regex, bytes));
  if (m.minLength !== undefined) v.push(matchMinLength(m.minLength, bytes));
  return all(v);
}

/** The SNI/ALPN/Host conditions, given the protocol's parsed info. */
function protocolConditions(
  m: RouteMatch,
  protocol: ProtocolName,
  info: ProtocolInfo[ProtocolName],
  facts: Facts,
): Verdict {
  facts.protocol = protocol;
  if (protocol === "tls") {
    const hello = info as ProtocolInfo["tls"];
    facts.sni = hello.sni;
    facts.alpn = hello.alpn;
    // A hello too large to read has no known SNI or ALPN: those cannot match.
    if (m.sni && (hello.sni === null || !m.sni.some((p) => nameMatches(p, hello.sni!)))) {
      return "no";
    }
    if (m.alpn && !m.alpn.some((a) => hello.alpn.includes(a))) return "no";
  } else if (protocol === "http") {
    const req = info as ProtocolInfo["http"];
    facts.host = req.host;
    if (m.host) {
      if (req.host !== null) return m.host.some((p) => nameMatches(p, req.host!)) ? "match" : "no";
      return req.headersComplete ? "no" : "more"; // the Host header may still come
    }
  }
  return "match";
}

/**
 * The route for this input, or null if more bytes could change the answer.
 * With final set, a route still saying "more" counts as "no"; a client that
 * sent nothing before the deadline takes the timeout route.
 */
export function decide(
  routes: readonly Route[],
  fallbacks: Fallbacks,
  input: ClassifyInput,
  final: PrereadFinal | null,
): Decision | null {
  const detections = new Detections(input);
  const facts: Facts = {};
  for (const route of routes) {
    if (!route.match) continue; // only reached as a fallback or default
    const v = matchRoute(route.match, detections, facts);
    if (v === "match") return { route, reason: "matched", facts };
    if (v === "more" && !final) return null;
  }
  if (final === "timeout" && input.bytes.length === 0) {
    return { route: fallbacks.timeoutRoute, reason: "timeout", facts };
  }
  return { route: fallbacks.defaultRoute, reason: final ?? "no-match", facts };
}
