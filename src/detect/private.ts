/**
 * Matchers for private protocols, configured without code. Each answers
 * "match", "no" or "more" for the bytes seen so far.
 */
import type { Verdict } from "./detection.ts";

/** The bytes start with prefix. */
export function matchPrefix(prefix: Uint8Array, b: Uint8Array): Verdict {
  const n = Math.min(prefix.length, b.length);
  for (let i = 0; i < n; i++) if (prefix[i] !== b[i]) return "no";
  return b.length >= prefix.length ? "match" : "more";
}

/** A byte pattern at an offset; null entries match any byte ("??"). */
export interface BytePattern {
  readonly offset: number;
  readonly bytes: readonly (number | null)[];
}

/** Parses "50 52 ?? 56" (spaces optional between pairs). */
export function parseBytePattern(text: string): (number | null)[] | null {
  const pairs = text.replace(/\s+/g, "").match(/../g);
  if (!pairs || pairs.join("") !== text.replace(/\s+/g, "")) return null;
  const out: (number | null)[] = [];
  for (const p of pairs) {
    if (p === "??") out.push(null);
    else if (/^[0-9a-fA-F]{2}$/.test(p)) out.push(parseInt(p, 16));
    else return null;
  }
  return out;
}

export function matchPattern(p: BytePattern, b: Uint8Array): Verdict {
  const end = Math.min(b.length, p.offset + p.bytes.length);
  for (let i = p.offset; i < end; i++) {
    const want = p.bytes[i - p.offset];
    if (want !== null && want !== b[i]) return "no";
  }
  return b.length >= p.offset + p.bytes.length ? "match" : "more";
}

/** A regular expression over the first maxBytes bytes, read as latin1
 * (one character per byte, so \x00-\xff in the expression are bytes). */
export interface ByteRegex {
  readonly expression: RegExp;
  readonly maxBytes: number;
}

export function matchRegex(r: ByteRegex, b: Uint8Array): Verdict {
  const n = Math.min(b.length, r.maxBytes);
  let text = "";
  for (let i = 0; i < n; i++) text += String.fromCharCode(b[i]!);
  if (r.expression.test(text)) return "match";
  // More bytes could still make it match, up to its bound.
  return b.length >= r.maxBytes ? "no" : "more";
}

export function matchMinLength(min: number, b: Uint8Array): Verdict {
  return b.length >= min ? "match" : "more";
}
