/** Helpers for the TCP addresses Deno reports. */

/**
 * An address and TCP port, as the record gives them.
 *
 * @example
 * ```ts
 * import type { Address } from "@portmux/portmux/service";
 *
 * const where: Address = { address: "2001:db8::7", port: 50412 };
 * const text = where.address.includes(":")
 *   ? `[${where.address}]:${where.port}`
 *   : `${where.address}:${where.port}`;
 * console.log(text); // [2001:db8::7]:50412
 * ```
 */
export interface Address {
  /** IPv4 dotted (`203.0.113.9`) or IPv6 without brackets
   * (`2001:db8::7`). A dual-stack listener's IPv4 clients are given as
   * IPv4, not as `::ffff:203.0.113.9`. */
  readonly address: string;
  /** The TCP port. */
  readonly port: number;
}

/** The address a person expects: a dual-stack listener reports IPv4
 * clients as IPv4-mapped IPv6 ("::ffff:192.0.2.1"); show them as IPv4. */
export function displayAddress(addr: Deno.NetAddr): Address {
  return normalizeAddress({ address: addr.hostname, port: addr.port });
}

export function normalizeAddress(a: Address): Address {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(a.address);
  return m ? { address: m[1]!, port: a.port } : a;
}

export function addressText(a: Address): string {
  return a.address.includes(":") ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
}
