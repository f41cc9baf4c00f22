/** Text the shim writes into buffers. */

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
