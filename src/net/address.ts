/** Helpers for the TCP addresses Deno reports. */

export interface Address {
  readonly address: string;
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
