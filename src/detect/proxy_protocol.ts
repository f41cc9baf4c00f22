/**
 * The PROXY protocol (HAProxy's spec, versions 1 and 2): the header an L4
 * load balancer puts in front of a connection to say who the client is.
 * Parsed here (portmux consumes it from trusted sources only), and
 * encoded (v2) for the proxy action's upstreams.
 */
import type { Address } from "../net/address.ts";
import { ipBytes, isCanonicalIpv4, isStrictIpv6 } from "../net/ip.ts";
import type { Detection } from "./detection.ts";

export interface ProxyHeader {
  readonly version: 1 | 2;
  /** Bytes the header takes: consume exactly these. */
  readonly length: number;
  /** The client and the address it connected to; null for LOCAL/UNKNOWN
   * (health checks: use the connection's own addresses). */
  readonly source: Address | null;
  readonly destination: Address | null;
}

const V1_PREFIX = new TextEncoder().encode("PROXY ");
const V1_MAX = 107; // the spec's longest v1 line, CRLF included
export const V2_SIGNATURE = Uint8Array.of(
  0x0d,
  0x0a,
  0x0d,
  0x0a,
  0x00,
  0x0d,
  0x0a,
  0x51,
  0x55,
  0x49,
  0x54,
  0x0a,
);
const V2_MAX = 4096; // far above any sane TLV set; more is refused

function startsWith(b: Uint8Array, p: Uint8Array): boolean | "more" {
  const n = Math.min(b.length, p.length);
  for (let i = 0; i < n; i++) if (b[i] !== p[i]) return false;
  return b.length >= p.length ? true : "more";
}

export function detectProxyHeader(b: Uint8Array): Detection<ProxyHeader> {
  const v2 = startsWith(b, V2_SIGNATURE);
  if (v2 === true) return parseV2(b);
  const v1 = startsWith(b, V1_PREFIX);
  if (v1 === true) return parseV1(b);
  return v1 === "more" || v2 === "more" ? { verdict: "more" } : { verdict: "no" };
}

function parseV1(b: Uint8Array): Detection<ProxyHeader> {
  let end = -1;
  for (let i = 0; i < Math.min(b.length, V1_MAX); i++) {
    if (b[i] === 0x0a) {
      end = i;
      break;
    }
  }
  if (end < 0) return b.length >= V1_MAX ? { verdict: "no" } : { verdict: "more" };
  if (end === 0 || b[end - 1] !== 0x0d) return { verdict: "no" };
  const line = String.fromCharCode(...b.subarray(0, end - 1));
  const parts = line.split(" ");
  if (parts[1] === "UNKNOWN") {
    return {
      verdict: "match",
      info: { version: 1, length: end + 1, source: null, destination: null },
    };
  }
  if (parts.length !== 6 || (parts[1] !== "TCP4" && parts[1] !== "TCP6")) return { verdict: "no" };
  const [, family, src, dst, sport, dport] = parts as [
    string,
    string,
    string,
    string,
    string,
    string,
  ];
  // As strict as the spec: what passes here is what v2 can encode upstream.
  const okAddress = family === "TCP4" ? isCanonicalIpv4 : isStrictIpv6;
  if (!okAddress(src) || !okAddress(dst) || !isV1Port(sport) || !isV1Port(dport)) {
    return { verdict: "no" };
  }
  return {
    verdict: "match",
    info: {
      version: 1,
      length: end + 1,
      source: { address: src.toLowerCase(), port: Number(sport) },
      destination: { address: dst.toLowerCase(), port: Number(dport) },
    },
  };
}

/** A port as v1 writes it: decimal 0-65535, no leading zeros. */
function isV1Port(p: string): boolean {
  return /^(0|[1-9]\d{0,4})$/.test(p) && Number(p) <= 65535;
}

function parseV2(b: Uint8Array): Detection<ProxyHeader> {
  if (b.length < 16) return { verdict: "more" };
  const verCmd = b[12]!;
  if (verCmd >> 4 !== 2) return { verdict: "no" };
  const command = verCmd & 0x0f; // 0 LOCAL, 1 PROXY
  if (command > 1) return { verdict: "no" };
  const family = b[13]!;
  const length = 16 + ((b[14]! << 8) | b[15]!);
  if (length > V2_MAX) return { verdict: "no" };
  if (b.length < length) return { verdict: "more" };
  if (command === 0 || family >> 4 === 0 || (family >> 4) > 2 || (family & 0x0f) !== 1) {
    // LOCAL, or an address family we do not route on (UNSPEC, UNIX, UDP)
    return { verdict: "match", info: { version: 2, length, source: null, destination: null } };
  }
  const v4 = family >> 4 === 1;
  const need = v4 ? 12 : 36;
  if (length - 16 < need) return { verdict: "no" };
  const at = 16;
  const addr = v4 ? ipv4(b, at) : ipv6(b, at);
  const dst = v4 ? ipv4(b, at + 4) : ipv6(b, at + 16);
  const portsAt = at + (v4 ? 8 : 32);
  return {
    verdict: "match",
    info: {
      version: 2,
      length,
      source: { address: addr, port: (b[portsAt]! << 8) | b[portsAt + 1]! },
      destination: { address: dst, port: (b[portsAt + 2]! << 8) | b[portsAt + 3]! },
    },
  };
}

function ipv4(b: Uint8Array, at: number): string {
  return `${b[at]}.${b[at + 1]}.${b[at + 2]}.${b[at + 3]}`;
}

/** RFC 5952 text form (shortest, lower case, longest zero run as "::"). */
function ipv6(b: Uint8Array, at: number): string {
  const mapped = b.subarray(at, at + 10).every((x) => x === 0) && b[at + 10] === 0xff &&
    b[at + 11] === 0xff;
  if (mapped) return `::ffff:${ipv4(b, at + 12)}`;
  const groups: number[] = [];
  for (let i = 0; i < 8; i++) groups.push((b[at + 2 * i]! << 8) | b[at + 2 * i + 1]!);
  let bestStart = -1, bestLen = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) [bestStart, bestLen] = [i, j - i];
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(":");
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLen).join(":")}`;
}

function parseIp(address: string): { v4: boolean; bytes: number[] } {
  const b = ipBytes(address);
  if (!b) throw new Error(`not an IP address: ${address}`);
  return { v4: b.length === 4, bytes: [...b] };
}

/** An IPv4 address as IPv4-mapped IPv6 (::ffff:a.b.c.d); IPv6 unchanged. */
function asIpv6(ip: { v4: boolean; bytes: number[] }): { v4: boolean; bytes: number[] } {
  return ip.v4 ? { v4: false, bytes: [...new Array(10).fill(0), 0xff, 0xff, ...ip.bytes] } : ip;
}

/** A v2 PROXY header for a TCP connection from source to destination. */
export function encodeProxyV2(source: Address, destination: Address): Uint8Array {
  let src = parseIp(source.address);
  let dst = parseIp(destination.address);
  if (src.v4 !== dst.v4) [src, dst] = [asIpv6(src), asIpv6(dst)]; // one family for both
  const body = [
    ...src.bytes,
    ...dst.bytes,
    source.port >> 8,
    source.port & 0xff,
    destination.port >> 8,
    destination.port & 0xff,
  ];
  return Uint8Array.from([
    ...V2_SIGNATURE,
    0x21, // version 2, PROXY
    src.v4 ? 0x11 : 0x21, // TCP over IPv4 / IPv6
    body.length >> 8,
    body.length & 0xff,
    ...body,
  ]);
}
