/**
 * The HTTPS access log, in the Combined Log Format (what Apache and nginx
 * write by default), with the real client's address:
 *
 *   127.0.0.1 - - [21/Nov/2026:06:46:03 +0000] "GET /x HTTP/2.0" 200 6 "-" "curl/7.88.1"
 *
 * Lines are written in batches, once per turn of the event loop, and
 * flushed before the process exits.
 */
import { escapeControls, unicodeEscape } from "../../ops/escape.ts";

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const encoder = new TextEncoder();

export interface AccessEntry {
  readonly client: string;
  readonly method: string;
  readonly target: string;
  readonly version: string;
  readonly status: number;
  /** The body size when known (Content-Length), else null. */
  readonly bytes: number | null;
  readonly referer: string | null;
  readonly userAgent: string | null;
}

/** [21/Nov/2026:06:46:03 +0000] */
export function clfTime(d: Date): string {
  const p = (n: number) => String(n).padStart(2, "0");
  return `[${p(d.getUTCDate())}/${MONTHS[d.getUTCMonth()]}/${d.getUTCFullYear()}:` +
    `${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())} +0000]`;
}

/** A control as nginx writes one, \x1b (header values are bytes, so C0, DEL
 * and C1 are all they can hold); a wider one (U+2028, bidi) as \u2028. */
function hexEscape(c: string): string {
  const code = c.charCodeAt(0);
  return code > 0xff ? unicodeEscape(c) : `\\x${code.toString(16).padStart(2, "0")}`;
}

/** Quoted as the format wants: " and \ escaped, controls (C1 too: U+009B
 * is a CSI to a terminal) in hex, so the line stays one harmless line. */
function quoted(s: string | null): string {
  if (s === null || s === "") return '"-"';
  return `"${escapeControls(s.replace(/[\\"]/g, "\\$&"), hexEscape)}"`;
}

export function combinedLine(e: AccessEntry, at: Date): string {
  return `${e.client} - - ${clfTime(at)} ${
    quoted(`${e.method} ${e.target} ${e.version}`)
  } ${e.status} ` +
    `${e.bytes ?? "-"} ${quoted(e.referer)} ${quoted(e.userAgent)}\n`;
}

export class AccessLog {
  readonly #file: Deno.FsFile;
  #pending: string[] = [];
  #scheduled = false;

  constructor(readonly path: string) {
    this.#file = Deno.openSync(path, { append: true, create: true, mode: 0o640 });
    globalThis.addEventListener("unload", () => this.flush());
  }

  write(entry: AccessEntry): void {
    this.#pending.push(combinedLine(entry, new Date()));
    if (!this.#scheduled) {
      this.#scheduled = true;
      setTimeout(() => this.flush(), 0);
    }
  }

  flush(): void {
    this.#scheduled = false;
    if (this.#pending.length === 0) return;
    const bytes = encoder.encode(this.#pending.join(""));
    this.#pending = [];
    for (let at = 0; at < bytes.length;) at += this.#file.writeSync(bytes.subarray(at));
  }
}
