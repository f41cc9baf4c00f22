/**
 * The HTTPS access log, in the Combined Log Format (what Apache and nginx
 * write by default), with the real client's address:
 *
 *   127.0.0.1 - - [21/Nov/2026:06:46:03 +0000] "GET /x HTTP/2.0" 200 6 "-" "curl/7.88.1"
 *
 * Lines are written in batches, once per turn of the event loop, and
 * flushed before the process exits.
 */
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

// Control bytes in a header must not break the line: matching them is
// the point of this expression.
// deno-lint-ignore no-control-regex
const CONTROL_BYTES = /[\x00-\x1f\x7f]/g;

/** Quoted as the format wants: " and \ escaped, control bytes hex. */
function quoted(s: string | null): string {
  if (s === null || s === "") return '"-"';
  return `"${
    s.replace(/[\\"]/g, "\\$&").replace(CONTROL_BYTES, (c) =>
      `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`)
  }"`;
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
