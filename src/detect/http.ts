/**
 * Plaintext HTTP detection: HTTP/1.x request lines (RFC 9112 §3) with the
 * Host header when the peeked bytes hold it, and the HTTP/2 connection
 * preface sent with prior knowledge (RFC 9113 §3.4).
 */
import type { Detection } from "./detection.ts";

export interface Http1Request {
  readonly method: string;
  readonly target: string;
  /** "HTTP/1.0" or "HTTP/1.1". */
  readonly version: string;
  /** The Host header, lower case, port removed; null if absent or not yet
   * seen (see headersComplete). */
  readonly host: string | null;
  /** True once the blank line ending the headers was seen. */
  readonly headersComplete: boolean;
}

const MAX_METHOD = 32;
const MAX_REQUEST_LINE = 8192; // past this without CRLF it is not a request we route

/** A method character. RFC 9110 §9 allows any tchar, but real methods are
 * upper-case letters, "_" and "-" (what nginx accepts too); the narrower
 * set keeps "SSH-2.0-" and binary protocols from looking like HTTP. */
function isMethodChar(c: number): boolean {
  return (c >= 0x41 && c <= 0x5a) || c === 0x5f || c === 0x2d;
}

function latin1(b: Uint8Array, from: number, to: number): string {
  let s = "";
  for (let i = from; i < to; i++) s += String.fromCharCode(b[i]!);
  return s;
}

const VERSION_PREFIX = "HTTP/1.";

export function detectHttp1(b: Uint8Array): Detection<Http1Request> {
  // method SP request-target SP HTTP-version CRLF
  let i = 0;
  while (i < b.length && i <= MAX_METHOD && isMethodChar(b[i]!)) i++;
  if (i === b.length) return i > MAX_METHOD ? { verdict: "no" } : { verdict: "more" };
  if (i === 0 || i > MAX_METHOD || b[i] !== 0x20) return { verdict: "no" };
  const method = latin1(b, 0, i);
  const targetStart = ++i;
  while (i < b.length && b[i]! > 0x20 && b[i]! < 0x7f) i++;
  if (i === b.length) return i > MAX_REQUEST_LINE ? { verdict: "no" } : { verdict: "more" };
  if (i === targetStart || b[i] !== 0x20) return { verdict: "no" };
  const target = latin1(b, targetStart, i);
  const versionStart = ++i;
  // "HTTP/1.x" then CRLF (a bare LF is tolerated, RFC 9112 §2.2).
  for (let k = 0; k < VERSION_PREFIX.length; k++, i++) {
    if (i === b.length) return { verdict: "more" };
    if (b[i] !== VERSION_PREFIX.charCodeAt(k)) return { verdict: "no" };
  }
  if (i === b.length) return { verdict: "more" };
  if (b[i] !== 0x30 && b[i] !== 0x31) return { verdict: "no" };
  const version = latin1(b, versionStart, ++i);
  if (i < b.length && b[i] === 0x0d) i++;
  if (i === b.length) return { verdict: "more" };
  if (b[i] !== 0x0a) return { verdict: "no" };
  i++;
  const { host, complete } = findHost(b, i);
  return { verdict: "match", info: { method, target, version, host, headersComplete: complete } };
}

/** Reads header lines from i; stops at the blank line or the bytes' end. */
function findHost(b: Uint8Array, i: number): { host: string | null; complete: boolean } {
  let host: string | null = null;
  while (i < b.length) {
    let end = i;
    while (end < b.length && b[end] !== 0x0a) end++;
    if (end === b.length) return { host, complete: false }; // a partial line
    const lineEnd = end > i && b[end - 1] === 0x0d ? end - 1 : end;
    if (lineEnd === i) return { host, complete: true }; // the blank line
    const line = latin1(b, i, lineEnd);
    const colon = line.indexOf(":");
    if (host === null && colon > 0 && line.slice(0, colon).toLowerCase() === "host") {
      host = stripPort(line.slice(colon + 1).trim().toLowerCase());
    }
    i = end + 1;
  }
  return { host, complete: false };
}

function stripPort(host: string): string {
  if (host.startsWith("[")) return host.slice(0, host.indexOf("]") + 1); // [v6]:port
  const colon = host.lastIndexOf(":");
  return colon >= 0 ? host.slice(0, colon) : host;
}

/** RFC 9113 §3.4: the client connection preface. */
const H2_PREFACE = new TextEncoder().encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

export function detectHttp2(b: Uint8Array): Detection<Record<never, never>> {
  const n = Math.min(b.length, H2_PREFACE.length);
  for (let i = 0; i < n; i++) if (b[i] !== H2_PREFACE[i]) return { verdict: "no" };
  return b.length >= H2_PREFACE.length ? { verdict: "match", info: {} } : { verdict: "more" };
}
