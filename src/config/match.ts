/** A route's match: what a connection's first bytes must show. */
import type { Cidr } from "../net/ip.ts";
import { isProtocolName, PROTOCOL_NAMES, type ProtocolName } from "../detect/registry.ts";
import { type BytePattern, type ByteRegex, parseBytePattern } from "../detect/private.ts";
import type { NamePattern } from "../route/name_pattern.ts";
import { describeNames, type Path, type Reader } from "./reader.ts";

/** What a route asks of a connection; every condition given must hold. */
export interface RouteMatch {
  /** A protocol from the detector registry (src/detect/registry.ts). */
  readonly protocol?: ProtocolName;
  /** TLS server names (exact or "*.example.com"); any of them. */
  readonly sni?: readonly NamePattern[];
  /** TLS ALPN protocols; the client must offer one of them. */
  readonly alpn?: readonly string[];
  /** HTTP/1.x Host header names; any of them. */
  readonly host?: readonly NamePattern[];
  /** Client addresses (after the PROXY protocol); any of them. */
  readonly source?: readonly Cidr[];
  readonly prefix?: Uint8Array;
  readonly pattern?: BytePattern;
  readonly regex?: ByteRegex;
  readonly minLength?: number;
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

const MATCH_KEYS = [
  "protocol",
  "sni",
  "alpn",
  "host",
  "source",
  "prefix",
  "prefix_hex",
  "pattern",
  "regex",
  "min_length",
] as const;

export function readMatch(r: Reader, at: Path): RouteMatch {
  const keys = r.keys(at, MATCH_KEYS);
  if (keys.length === 0) r.fail(at, `give at least one of ${MATCH_KEYS.join(", ")}`);
  const m: Mutable<RouteMatch> = {};
  const protocol = readProtocol(r, at);
  if (protocol !== undefined) m.protocol = protocol;
  readProtocolFields(r, at, protocol, m);
  const prefix = readPrefix(r, at, keys);
  if (prefix !== undefined) m.prefix = prefix;
  const pattern = readPattern(r, [...at, "pattern"]);
  if (pattern !== undefined) m.pattern = pattern;
  const regex = readRegex(r, [...at, "regex"]);
  if (regex !== undefined) m.regex = regex;
  const minLength = r.integer([...at, "min_length"], 1, 65536);
  if (minLength !== undefined) m.minLength = minLength;
  return m;
}

function readProtocol(r: Reader, at: Path): ProtocolName | undefined {
  const protocol = r.string([...at, "protocol"]);
  if (protocol === undefined || isProtocolName(protocol)) return protocol;
  r.fail(
    [...at, "protocol"],
    `unknown protocol "${protocol}" (expected one of: ${PROTOCOL_NAMES.join(", ")})`,
  );
}

/** sni, alpn and host, each only where its protocol is detected; and source. */
function readProtocolFields(
  r: Reader,
  at: Path,
  protocol: ProtocolName | undefined,
  m: Mutable<RouteMatch>,
): void {
  const needs = (key: string, proto: ProtocolName) => {
    if (r.value([...at, key]) !== undefined && protocol !== proto) {
      r.fail([...at, key], `only a route with protocol: ${proto} can match on ${key}`);
    }
  };
  needs("sni", "tls");
  needs("alpn", "tls");
  needs("host", "http");
  const sni = r.names([...at, "sni"]);
  if (sni) m.sni = sni;
  const alpn = r.strings([...at, "alpn"]);
  if (alpn) m.alpn = alpn;
  const host = r.names([...at, "host"]);
  if (host) m.host = host;
  const source = r.cidrs([...at, "source"]);
  if (source) m.source = source;
}

/** prefix (text) or prefix_hex (bytes), as bytes. */
function readPrefix(r: Reader, at: Path, keys: readonly string[]): Uint8Array | undefined {
  if (keys.includes("prefix") && keys.includes("prefix_hex")) {
    r.fail([...at, "prefix_hex"], "give prefix or prefix_hex, not both");
  }
  const text = r.string([...at, "prefix"]);
  const hex = r.string([...at, "prefix_hex"]);
  if (hex === undefined) return text === undefined ? undefined : new TextEncoder().encode(text);
  if (!/^([0-9a-fA-F]{2})+$/.test(hex)) {
    r.fail([...at, "prefix_hex"], "expected an even number of hex digits");
  }
  return Uint8Array.from(hex.match(/../g)!.map((h) => parseInt(h, 16)));
}

function readPattern(r: Reader, at: Path): BytePattern | undefined {
  if (r.value(at) === undefined) return undefined;
  r.keys(at, ["bytes", "offset"]);
  const text = r.required([...at, "bytes"], r.string([...at, "bytes"]));
  const bytes = parseBytePattern(text);
  if (!bytes) r.fail([...at, "bytes"], `expected hex byte pairs or ?? (e.g. "50 52 ?? 56")`);
  return { offset: r.integer([...at, "offset"], 0, 65535) ?? 0, bytes };
}

function readRegex(r: Reader, at: Path): ByteRegex | undefined {
  if (r.value(at) === undefined) return undefined;
  r.keys(at, ["expression", "max_bytes"]);
  const text = r.required([...at, "expression"], r.string([...at, "expression"]));
  let expression: RegExp;
  try {
    // "s": a dot matches any byte, newlines too.
    expression = new RegExp(text, "s");
  } catch (e) {
    r.fail([...at, "expression"], `not a valid regular expression: ${(e as Error).message}`);
  }
  return { expression, maxBytes: r.integer([...at, "max_bytes"], 1, 65536) ?? 256 };
}

export function describeMatch(m: RouteMatch): Record<string, unknown> {
  return {
    ...(m.protocol ? { protocol: m.protocol } : {}),
    ...(m.sni ? { sni: describeNames(m.sni) } : {}),
    ...(m.alpn ? { alpn: m.alpn } : {}),
    ...(m.host ? { host: describeNames(m.host) } : {}),
    ...(m.source ? { source: m.source.map((s) => s.text) } : {}),
    ...(m.prefix ? describePrefix(m.prefix) : {}),
    ...(m.pattern ? { pattern: describePattern(m.pattern) } : {}),
    ...(m.regex
      ? { regex: { expression: m.regex.expression.source, max_bytes: m.regex.maxBytes } }
      : {}),
    ...(m.minLength !== undefined ? { min_length: m.minLength } : {}),
  };
}

/** As text when it is printable ASCII, else as hex. */
function describePrefix(b: Uint8Array): Record<string, string> {
  return [...b].every((x) => x >= 0x20 && x < 0x7f)
    ? { prefix: new TextDecoder().decode(b) }
    : { prefix_hex: [...b].map((x) => x.toString(16).padStart(2, "0")).join("") };
}

function describePattern(p: BytePattern): Record<string, unknown> {
  const bytes = p.bytes.map((b) => b === null ? "??" : b.toString(16).padStart(2, "0"));
  return { offset: p.offset, bytes: bytes.join(" ") };
}
