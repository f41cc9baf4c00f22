/** IP addresses as bytes, and CIDR blocks ("10.0.0.0/8", "2001:db8::/32", a bare address = one host). */

export interface Cidr {
  readonly text: string;
  readonly v4: boolean;
  readonly bytes: Uint8Array;
  readonly bits: number;
}

function ipv4Bytes(s: string): Uint8Array | null {
  const parts = s.split(".");
  if (parts.length !== 4 || !parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) < 256)) {
    return null;
  }
  return Uint8Array.from(parts.map(Number));
}

function ipv6Bytes(s: string): Uint8Array | null {
  if (!/^[0-9a-fA-F:.]+$/.test(s) || !s.includes(":")) return null;
  let tail: Uint8Array | null = null;
  const lastColon = s.lastIndexOf(":");
  if (s.slice(lastColon + 1).includes(".")) { // an embedded IPv4 (::ffff:1.2.3.4)
    tail = ipv4Bytes(s.slice(lastColon + 1));
    if (!tail) return null;
    s = s.slice(0, lastColon + 1) + "0:0";
  }
  const halves = s.split("::");
  if (halves.length > 2) return null;
  const groups = (h: string) => (h === "" ? [] : h.split(":"));
  const head = groups(halves[0]!);
  const rest = halves.length === 2 ? groups(halves[1]!) : [];
  const fill = 8 - head.length - rest.length;
  if (halves.length === 1 ? head.length !== 8 : fill < 1) return null;
  const all = [...head, ...new Array(halves.length === 2 ? fill : 0).fill("0"), ...rest];
  if (!all.every((g) => /^[0-9a-fA-F]{1,4}$/.test(g))) return null;
  const out = new Uint8Array(16);
  all.forEach((g, i) => {
    const v = parseInt(g, 16);
    out[2 * i] = v >> 8;
    out[2 * i + 1] = v & 0xff;
  });
  if (tail) out.set(tail, 12);
  return out;
}

/** Whether s is an IPv4 address in its canonical text: four decimal octets
 * 0-255, no leading zeros (elsewhere those can mean octal). */
export function isCanonicalIpv4(s: string): boolean {
  const parts = s.split(".");
  return parts.length === 4 && parts.every((p) => /^(0|[1-9]\d{0,2})$/.test(p) && Number(p) < 256);
}

/** Whether s is an IPv6 address (RFC 4291 §2.2: hex groups, one "::" at
 * most, 128 bits); an embedded IPv4 must be canonical, as inet_pton wants. */
export function isStrictIpv6(s: string): boolean {
  const tail = s.slice(s.lastIndexOf(":") + 1);
  return ipv6Bytes(s) !== null && (!tail.includes(".") || isCanonicalIpv4(tail));
}

/** 127.0.0.0/8 and ::1 (IPv4-mapped loopback included): only this host. */
export function isLoopback(address: string): boolean {
  const b = ipBytes(address);
  if (!b) return false;
  return b.length === 4 ? b[0] === 127 : b.every((v, i) => v === (i === 15 ? 1 : 0));
}

/** The bytes of an IP address; IPv4-mapped IPv6 is turned into IPv4. */
export function ipBytes(address: string): Uint8Array | null {
  const v4 = ipv4Bytes(address);
  if (v4) return v4;
  const v6 = ipv6Bytes(address);
  if (!v6) return null;
  const mapped = v6.subarray(0, 10).every((b) => b === 0) && v6[10] === 0xff && v6[11] === 0xff;
  return mapped ? v6.slice(12) : v6;
}

export function parseCidr(text: string): Cidr | null {
  const [addr, bitsText, extra] = text.split("/");
  if (extra !== undefined || !addr) return null;
  const bytes = ipv4Bytes(addr) ?? ipv6Bytes(addr);
  if (!bytes) return null;
  const max = bytes.length * 8;
  const bits = bitsText === undefined ? max : /^\d{1,3}$/.test(bitsText) ? Number(bitsText) : -1;
  if (bits < 0 || bits > max) return null;
  return { text, v4: bytes.length === 4, bytes, bits };
}

export function cidrContains(c: Cidr, address: string): boolean {
  const b = ipBytes(address);
  if (!b || b.length !== c.bytes.length) return false;
  let bits = c.bits;
  for (let i = 0; bits > 0; i++, bits -= 8) {
    const mask = bits >= 8 ? 0xff : (0xff << (8 - bits)) & 0xff;
    if ((b[i]! & mask) !== (c.bytes[i]! & mask)) return false;
  }
  return true;
}
