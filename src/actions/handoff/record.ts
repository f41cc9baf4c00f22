/**
 * The handoff record: the metadata that travels with each client socket
 * (docs/handoff.md). Sending is src/actions/handoff/channels.ts.
 */
import type { Address } from "../../net/address.ts";

/** The record sent with each fd: one JSON object and a newline. */
export interface HandoffRecord {
  /** Contract version. */
  readonly v: 1;
  readonly route: string;
  readonly service: string;
  readonly client: Address;
  readonly local: Address;
  /** Bytes the daemon peeked; they are still unread in the socket. */
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
