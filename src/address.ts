/** Helpers for the TCP addresses Deno reports. */

export interface Address {
  readonly address: string;
  readonly port: number;
}

/** The address a person expects: a dual-stack listener reports IPv4
 * clients as IPv4-mapped IPv6 ("::ffff:192.0.2.1"); show them as IPv4. */
export function displayAddress(addr: Deno.NetAddr): Address {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(addr.hostname);
  return { address: m ? m[1]! : addr.hostname, port: addr.port };
}

export function addressText(a: Address): string {
  return a.address.includes(":") ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
}
