/**
 * TLS ClientHello detection and parsing (RFC 8446 §4.1.2 and §5.1; RFC 6066
 * §3 for SNI; RFC 7301 §3.1 for ALPN; RFC 8701 for GREASE). Pure: bytes in,
 * verdict out; malformed input is a verdict, never an exception.
 *
 * The hello may be split over several TCP segments (then the verdict is
 * "more" until it is all there) and over several TLS records (the handshake
 * message is reassembled). A hello that declares more bytes than `limit`
 * is still TLS, but its SNI and ALPN are unknown (`complete: false`): the
 * caller can route it on "tls" alone without waiting for bytes that would
 * exceed what it may peek.
 */
import type { Detection } from "./detection.ts";

export interface ClientHello {
  /** False when the hello is larger than the limit: sni/alpn unknown. */
  readonly complete: boolean;
  /** The record layer version of the first record (0x0301 for most clients). */
  readonly recordVersion: number;
  /** legacy_version in the hello (0x0303 for TLS 1.2 and 1.3 clients). */
  readonly legacyVersion: number;
  /** supported_versions, GREASE removed; empty if the extension is absent. */
  readonly versions: readonly number[];
  /** The host_name in server_name, lower case; null if absent. */
  readonly sni: string | null;
  /** ALPN protocol names in client order, GREASE removed. */
  readonly alpn: readonly string[];
  /** Bytes of the records that carry the hello. */
  readonly length: number;
}

const RECORD_HEADER = 5;
const HANDSHAKE_HEADER = 4;
const MAX_RECORD = 1 << 14; // RFC 8446 §5.1: a plaintext record never exceeds 2^14
const CONTENT_HANDSHAKE = 22;
const CLIENT_HELLO = 1;
const EXT_SERVER_NAME = 0;
const EXT_ALPN = 16;
const EXT_SUPPORTED_VERSIONS = 43;

const NO: Detection<never> = { verdict: "no" };
const MORE: Detection<never> = { verdict: "more" };

/** RFC 8701: GREASE values are 0x?A?A with both bytes equal. */
export function isGrease(v: number): boolean {
  return (v & 0x0f0f) === 0x0a0a && (v >> 8) === (v & 0xff);
}

function ascii(b: Uint8Array, from: number, to: number, lower: boolean): string | null {
  let s = "";
  for (let i = from; i < to; i++) {
    let c = b[i]!;
    if (c < 0x21 || c > 0x7e) return null;
    if (lower && c >= 0x41 && c <= 0x5a) c += 0x20;
    s += String.fromCharCode(c);
  }
  return s;
}

function u16(b: Uint8Array, i: number): number {
  return (b[i]! << 8) | b[i + 1]!;
}

/**
 * Parses a ClientHello from the first bytes of a connection. `limit` is
 * the most bytes the caller can ever have (its peek limit).
 */
export function detectTls(bytes: Uint8Array, limit = 16384): Detection<ClientHello> {
  // The first record header: handshake content, version 3.x (SSL 3.0 to
  // TLS 1.3 all write 3.x; 3.0 is the SSL 3.0 record some clients still use).
  if (bytes.length < 1) return MORE;
  if (bytes[0] !== CONTENT_HANDSHAKE) return NO;
  if (bytes.length < 2) return MORE;
  if (bytes[1] !== 3) return NO;
  if (bytes.length < 3) return MORE;
  if (bytes[2]! > 4) return NO;
  if (bytes.length < RECORD_HEADER) return MORE;
  const recordVersion = u16(bytes, 1);
  const firstLength = u16(bytes, 3);
  if (firstLength === 0 || firstLength > MAX_RECORD) return NO;
  if (bytes.length < RECORD_HEADER + 1) return MORE;
  if (bytes[RECORD_HEADER] !== CLIENT_HELLO) return NO;

  // Common case: the whole handshake message in the first record.
  if (firstLength >= HANDSHAKE_HEADER) {
    if (bytes.length < RECORD_HEADER + HANDSHAKE_HEADER) return MORE;
    const bodyLength = (bytes[6]! << 16) | (bytes[7]! << 8) | bytes[8]!;
    if (bodyLength + HANDSHAKE_HEADER <= firstLength) {
      if (bytes.length < RECORD_HEADER + firstLength) {
        return RECORD_HEADER + firstLength > limit ? tooLarge(recordVersion) : MORE;
      }
      const start = RECORD_HEADER + HANDSHAKE_HEADER;
      return parseBody(
        bytes,
        start,
        start + bodyLength,
        recordVersion,
        RECORD_HEADER + firstLength,
      );
    }
  }
  return reassemble(bytes, limit, recordVersion);
}

function tooLarge(recordVersion: number): Detection<ClientHello> {
  return {
    verdict: "match",
    info: {
      complete: false,
      recordVersion,
      legacyVersion: 0,
      versions: [],
      sni: null,
      alpn: [],
      length: 0,
    },
  };
}

/** The hello spans several records: gather their fragments. */
function reassemble(
  bytes: Uint8Array,
  limit: number,
  recordVersion: number,
): Detection<ClientHello> {
  const fragments: Uint8Array[] = [];
  let have = 0;
  let need = -1; // handshake message length (header included), once known
  let at = 0;
  for (;;) {
    if (need >= 0 && have >= need) break;
    if (bytes.length < at + RECORD_HEADER) {
      return estimate(at, need, have) > limit ? tooLarge(recordVersion) : MORE;
    }
    // Every record of the hello: handshake content, version 3.x, sane length.
    if (bytes[at] !== CONTENT_HANDSHAKE || bytes[at + 1] !== 3 || bytes[at + 2]! > 4) return NO;
    const len = u16(bytes, at + 3);
    if (len === 0 || len > MAX_RECORD) return NO;
    if (bytes.length < at + RECORD_HEADER + len) {
      // The known part of the hello alone already exceeds what we may read.
      if (need >= 0 && at + RECORD_HEADER + (need - have) > limit) return tooLarge(recordVersion);
      return at + RECORD_HEADER + len > limit ? tooLarge(recordVersion) : MORE;
    }
    fragments.push(bytes.subarray(at + RECORD_HEADER, at + RECORD_HEADER + len));
    have += len;
    at += RECORD_HEADER + len;
    if (need < 0 && have >= HANDSHAKE_HEADER) {
      const head = concat(fragments, HANDSHAKE_HEADER);
      if (head[0] !== CLIENT_HELLO) return NO;
      need = HANDSHAKE_HEADER + ((head[1]! << 16) | (head[2]! << 8) | head[3]!);
      if (need > limit) return tooLarge(recordVersion);
    }
  }
  const message = concat(fragments, need);
  return parseBody(message, HANDSHAKE_HEADER, need, recordVersion, at);
}

/** A lower bound of the bytes the whole hello will take. */
function estimate(at: number, need: number, have: number): number {
  return need < 0 ? at : at + RECORD_HEADER + (need - have);
}

function concat(parts: Uint8Array[], length: number): Uint8Array {
  const out = new Uint8Array(length);
  let at = 0;
  for (const p of parts) {
    if (at >= length) break;
    const take = Math.min(p.length, length - at);
    out.set(p.subarray(0, take), at);
    at += take;
  }
  return out;
}

/** Parses the ClientHello body in b[start..end). */
function parseBody(
  b: Uint8Array,
  start: number,
  end: number,
  recordVersion: number,
  length: number,
): Detection<ClientHello> {
  let i = start;
  if (end - i < 2 + 32 + 1) return NO;
  const legacyVersion = u16(b, i);
  if (b[i] !== 3) return NO;
  i += 2 + 32; // legacy_version, random
  const sessionIdLength = b[i]!;
  if (sessionIdLength > 32) return NO;
  i += 1 + sessionIdLength;
  if (end - i < 2) return NO;
  const suitesLength = u16(b, i);
  if (suitesLength < 2 || suitesLength % 2 !== 0) return NO;
  i += 2 + suitesLength;
  if (end - i < 1) return NO;
  const compressionLength = b[i]!;
  if (compressionLength < 1) return NO;
  i += 1 + compressionLength;
  if (i > end) return NO;

  let sni: string | null = null;
  let alpn: string[] = [];
  let versions: number[] = [];
  if (i < end) { // extensions are optional before TLS 1.3
    if (end - i < 2) return NO;
    const extEnd = i + 2 + u16(b, i);
    if (extEnd !== end) return NO;
    i += 2;
    while (i < extEnd) {
      if (extEnd - i < 4) return NO;
      const type = u16(b, i);
      const len = u16(b, i + 2);
      const dataStart = i + 4;
      const dataEnd = dataStart + len;
      if (dataEnd > extEnd) return NO;
      if (type === EXT_SERVER_NAME) {
        const parsed = parseServerName(b, dataStart, dataEnd);
        if (parsed === undefined) return NO;
        sni = parsed;
      } else if (type === EXT_ALPN) {
        const parsed = parseAlpn(b, dataStart, dataEnd);
        if (!parsed) return NO;
        alpn = parsed;
      } else if (type === EXT_SUPPORTED_VERSIONS) {
        const parsed = parseVersions(b, dataStart, dataEnd);
        if (!parsed) return NO;
        versions = parsed;
      }
      i = dataEnd;
    }
  }
  return {
    verdict: "match",
    info: { complete: true, recordVersion, legacyVersion, versions, sni, alpn, length },
  };
}

/** RFC 6066 §3: the host_name entry; null if none; undefined if malformed. */
function parseServerName(b: Uint8Array, i: number, end: number): string | null | undefined {
  if (end === i) return null; // an empty extension (servers send these; clients may too)
  if (end - i < 2 || i + 2 + u16(b, i) !== end) return undefined;
  i += 2;
  let name: string | null = null;
  while (i < end) {
    if (end - i < 3) return undefined;
    const type = b[i]!;
    const len = u16(b, i + 1);
    if (i + 3 + len > end || len === 0) return undefined;
    if (type === 0 && name === null) {
      name = ascii(b, i + 3, i + 3 + len, true);
      if (name === null) return undefined;
    }
    i += 3 + len;
  }
  return name;
}

/** RFC 7301 §3.1: ProtocolNameList, GREASE entries dropped. */
function parseAlpn(b: Uint8Array, i: number, end: number): string[] | null {
  if (end - i < 2 || i + 2 + u16(b, i) !== end) return null;
  i += 2;
  const names: string[] = [];
  while (i < end) {
    const len = b[i]!;
    if (len === 0 || i + 1 + len > end) return null;
    if (!(len === 2 && isGrease(u16(b, i + 1)))) {
      const name = ascii(b, i + 1, i + 1 + len, false);
      if (name === null) return null;
      names.push(name);
    }
    i += 1 + len;
  }
  return names;
}

/** RFC 8446 §4.2.1 (client form): a 1-byte length, then 2-byte versions. */
function parseVersions(b: Uint8Array, i: number, end: number): number[] | null {
  const len = b[i];
  if (len === undefined || len % 2 !== 0 || i + 1 + len !== end) return null;
  const versions: number[] = [];
  for (let j = i + 1; j < end; j += 2) {
    const v = u16(b, j);
    if (!isGrease(v)) versions.push(v);
  }
  return versions;
}
