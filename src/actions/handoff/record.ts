/**
 * The handoff record: the metadata that travels with each client socket
 * (docs/handoff.md). Sending is src/actions/handoff/channels.ts.
 */
import type { Address } from "../../net/address.ts";

/**
 * What portmux sends with each client: one JSON line (docs/handoff.md),
 * parsed and checked. Fields portmux adds later within version 1 may be
 * present too; ignore them.
 *
 * @example Who the client is, and why it came here
 * ```ts
 * import type { HandoffRecord } from "@portmux/portmux/service";
 *
 * const record: HandoffRecord = {
 *   v: 1,
 *   route: "kv",
 *   service: "kv",
 *   client: { address: "203.0.113.9", port: 50412 },
 *   local: { address: "192.0.2.1", port: 443 },
 *   peeked: 4,
 * };
 * console.log(`${record.client.address} came to port ${record.local.port}, route ${record.route}`);
 * ```
 */
export interface HandoffRecord {
  /** The contract's version: 1. */
  readonly v: 1;
  /** The name of the route that matched the client (portmux's config). */
  readonly route: string;
  /** The name of this service in portmux's config. */
  readonly service: string;
  /** The client's address and port: who connected (the socket's
   * `remoteAddress` and `remotePort` say the same). */
  readonly client: Address;
  /** The address and port the client connected to (portmux's listener). */
  readonly local: Address;
  /** How many of the client's first bytes portmux looked at to choose the
   * route. Nothing was consumed: the socket gives them first. */
  readonly peeked: number;
}

export function encodeRecord(record: HandoffRecord): Uint8Array<ArrayBuffer> {
  return new TextEncoder().encode(JSON.stringify(record) + "\n");
}

/** Parses one record line; throws on anything that is not a v1 record. */
export function decodeRecord(line: string): HandoffRecord {
  const r = JSON.parse(line);
  const isAddress = (a: unknown) =>
    typeof a === "object" && a !== null && typeof (a as Address).address === "string" &&
    Number.isInteger((a as Address).port);
  if (
    r?.v !== 1 || typeof r.route !== "string" || typeof r.service !== "string" ||
    !isAddress(r.client) || !isAddress(r.local) || !Number.isInteger(r.peeked)
  ) throw new Error(`not a portmux handoff record: ${line.slice(0, 200)}`);
  return r;
}
