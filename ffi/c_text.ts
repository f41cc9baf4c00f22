/** Text between TypeScript and the shim: C strings it reads, and text it
 * writes into buffers. */

/** Addresses as the shim writes them: NUL-ended text of ADDR_TEXT bytes
 * (PM_ADDR_TEXT). */
export const ADDR_TEXT = 48;

/** A NUL-ended ASCII string of at most max bytes at `at` (addresses:
 * digits, dots, colons; names from a ClientHello). */
export function cText(buf: Uint8Array, at: number, max = ADDR_TEXT): string {
  let s = "";
  for (let i = at; buf[i] !== 0 && i < at + max; i++) s += String.fromCharCode(buf[i]!);
  return s;
}

const encoder = new TextEncoder();
export function cstr(s: string): Uint8Array<ArrayBuffer> {
  return encoder.encode(s + "\0");
}

/** Addresses as C strings, kept: the same few (our listeners, busy clients)
 * come back on every connection. The C side only reads them. */
const hostStrings = new Map<string, Uint8Array<ArrayBuffer>>();
export function hostCstr(host: string): Uint8Array<ArrayBuffer> {
  let c = hostStrings.get(host);
  if (!c) {
    if (hostStrings.size >= 4096) hostStrings.clear();
    hostStrings.set(host, c = cstr(host));
  }
  return c;
}
