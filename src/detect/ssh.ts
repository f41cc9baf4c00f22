/**
 * SSH detection by the client's identification string (RFC 4253 §4.2):
 * "SSH-protoversion-softwareversion". Many clients send it at once; some
 * wait for the server's first: route those with the timeout route.
 */
import type { Detection } from "./detection.ts";

export interface SshBanner {
  /** "2.0", or "1.99" for clients that also speak SSH 1. */
  readonly protocol: string;
  readonly software: string;
}

const PREFIXES = ["SSH-2.0-", "SSH-1.99-"].map((p) => new TextEncoder().encode(p));
const MAX_BANNER = 255; // RFC 4253 §4.2: at most 255 characters with CRLF

export function detectSsh(b: Uint8Array): Detection<SshBanner> {
  let prefix: Uint8Array | null = null;
  let undecided = false;
  for (const p of PREFIXES) {
    const n = Math.min(b.length, p.length);
    let same = true;
    for (let i = 0; i < n && same; i++) same = b[i] === p[i];
    if (!same) continue;
    if (b.length >= p.length) prefix = p;
    else undecided = true;
  }
  if (!prefix) return undecided ? { verdict: "more" } : { verdict: "no" };
  // The prefix decides; the software version (to CR LF) is only for the
  // log, so it is not waited for: take what has arrived, if printable.
  let end = prefix.length;
  while (end < b.length && end < MAX_BANNER && b[end] !== 0x0d && b[end] !== 0x0a) {
    if (b[end]! < 0x20 || b[end]! > 0x7e) return { verdict: "no" };
    end++;
  }
  let software = "";
  for (let i = prefix.length; i < end; i++) software += String.fromCharCode(b[i]!);
  const protocol = prefix.length === 8 ? "2.0" : "1.99";
  return { verdict: "match", info: { protocol, software: software.split(" ")[0]! } };
}
