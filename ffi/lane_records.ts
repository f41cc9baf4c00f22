/**
 * The express lane's records as C writes them (c/lane.h): its
 * events, and the numbers both sides must agree on, checked when the shim
 * loads.
 */
import { ADDR_TEXT, cText } from "./c_text.ts";
import { errnoName } from "./errors.ts";

/** What the express lane did with one connection (struct event in
 * c/lane.h). */
export interface ExpressEvent {
  readonly outcome:
    | "https"
    | "handed-off"
    | "lost"
    | "accept-failed"
    | "limit"
    | "reset"
    | "accept-recovered";
  /** Index of the route in the config's route list... */
  readonly route: number;
  /** ...of the config the table of this generation was made from. */
  readonly generation: number;
  /** The site (https) or the service instance (handed-off). */
  readonly target: number;
  /** Bytes peeked. */
  readonly peeked: number;
  /** For accept-recovered: the accepts that failed before one worked. */
  readonly failures: number;
  readonly client: { hostname: string; port: number };
  readonly local: { hostname: string; port: number };
  /** errno name, for lost and accept-failed. */
  readonly error: string;
  /** The limit, for limit: 1 max_connections, 2 max_preread, 3 max_per_source. */
  readonly limit: number;
  /** Set when the bytes were a ClientHello. */
  readonly tls: { sni: string | null; alpn: string[] } | null;
  readonly decideMs: number;
}

const EXPRESS_OUTCOMES = [
  ,
  "https",
  "handed-off",
  "lost",
  "accept-failed",
  "limit",
  "reset",
  "accept-recovered",
] as const;
export const EVENT_NAME = 256;

/** Where each field of the lane's event record (struct event in
 * c/lane.h) is, and its size. The C side says the same through
 * pm_express_event_layout, compared when the library loads: one contract,
 * checked, not mirrored by hand. */
export const EVENT_LAYOUT = {
  outcome: 0,
  route: 4,
  target: 8,
  peeked: 12,
  clientPort: 16,
  localPort: 20,
  error: 24,
  hasSni: 28,
  decideMs: 32,
  generation: 36,
  limit: 40,
  failures: 44,
  client: 48,
  local: 48 + ADDR_TEXT,
  sni: 48 + 2 * ADDR_TEXT,
  alpn: 48 + 2 * ADDR_TEXT + EVENT_NAME,
  size: 48 + 2 * ADDR_TEXT + 2 * EVENT_NAME,
} as const;

/** What the lane's routing table has room for (c/lane.h): rules,
 * names per condition, bytes per name or prefix, sites, bytes of a
 * record's head. The C side reports the same (pm_express_table_limits),
 * compared when the library loads. */
export const LANE_TABLE_LIMITS = {
  rules: 64,
  names: 16,
  nameBytes: 255,
  sites: 16,
  headBytes: 1023,
} as const;

/** What differs between numbers the C side reports and ours (in the order
 * of ours); null when they agree. */
export function contractMismatch(
  ours: Readonly<Record<string, number>>,
  reported: readonly number[],
): string | null {
  const entries = Object.entries(ours);
  if (reported.length !== entries.length) {
    return `${reported.length} numbers from C, ${entries.length} in ffi/lane_records.ts`;
  }
  const wrong = entries.flatMap(([name, at], i) =>
    reported[i] === at ? [] : [`${name}: C ${reported[i]}, ts ${at}`]
  );
  return wrong.length ? wrong.join(", ") : null;
}

export function readExpressEvent(buf: Uint8Array, view: DataView, at: number): ExpressEvent {
  const L = EVENT_LAYOUT;
  const i32 = (offset: number) => view.getInt32(at + offset, true);
  const hasSni = i32(L.hasSni);
  const alpnAt = at + L.alpn;
  const alpn: string[] = [];
  for (let i = alpnAt; buf[i]! > 0 && i < alpnAt + EVENT_NAME;) {
    const n = buf[i]!;
    alpn.push(cText(buf, i + 1, n));
    i += 1 + n;
  }
  return {
    outcome: EXPRESS_OUTCOMES[i32(L.outcome)] ?? "lost",
    route: i32(L.route),
    target: i32(L.target),
    peeked: i32(L.peeked),
    failures: i32(L.failures),
    client: { hostname: cText(buf, at + L.client), port: i32(L.clientPort) },
    local: { hostname: cText(buf, at + L.local), port: i32(L.localPort) },
    error: i32(L.error) ? errnoName(i32(L.error)) : "",
    limit: i32(L.limit),
    tls: hasSni < 0 ? null : {
      sni: hasSni ? cText(buf, at + L.sni, EVENT_NAME) : null,
      alpn,
    },
    decideMs: view.getFloat32(at + L.decideMs, true),
    generation: i32(L.generation),
  };
}
