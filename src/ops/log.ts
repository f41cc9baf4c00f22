/**
 * Logging: one JSON object per line on stdout, so that every decision can
 * be read back by a machine (the tests do) and by grep; plain text lines
 * when stdout is a terminal.
 *
 * Info and debug lines are written in batches, once per turn of the event
 * loop (a write per connection costs as much as a good part of handling
 * it); warnings and errors go out at once, and everything is flushed
 * before the process exits.
 */
import { LOG_LEVELS, type LogLevel } from "../config/config.ts";
import { escapeControls, HAS_CONTROL } from "./escape.ts";

export type Fields = Record<string, unknown>;

export type LogFormat = "json" | "text";

/** The format for stdout: $PORTMUX_LOG_FORMAT, else text on a terminal
 * (for a person) and JSON otherwise (for machines). */
export function logFormat(): LogFormat {
  const asked = Deno.env.get("PORTMUX_LOG_FORMAT");
  if (asked === "json" || asked === "text") return asked;
  return Deno.stdout.isTerminal() ? "text" : "json";
}

// What cannot be written bare in a key=value pair: what would split it,
// and the controls (quoted and escaped, so the line stays one harmless line).
const NEEDS_QUOTES = new RegExp(`[\\s"=]|${HAS_CONTROL.source}`);

/** A key or a string value: bare if it can be, else a JSON string with
 * every control escaped (JSON.stringify leaves DEL and C1 raw). */
function textWord(s: string): string {
  return s !== "" && !NEEDS_QUOTES.test(s) ? s : escapeControls(JSON.stringify(s));
}

/** One line for a person: time, level, event, then key=value pairs. */
export function formatText(entry: Fields & { time: string; level: string; event: string }): string {
  const { time, level, event, ...rest } = entry;
  const pairs = Object.entries(rest).map(([k, v]) =>
    // String(): JSON.stringify(undefined) is undefined, written as such.
    `${textWord(k)}=${
      typeof v === "string" ? textWord(v) : escapeControls(String(JSON.stringify(v)))
    }`
  );
  return [time.slice(11, 23), level.toUpperCase().padEnd(5), textWord(event), ...pairs].join(" ");
}

/** One JSON line. JSON.stringify escapes C0 but leaves DEL and C1 raw;
 * outside strings JSON is ASCII, so escaping the whole line only touches
 * strings, and it still parses to the same values. */
export function formatJson(entry: Fields): string {
  return escapeControls(JSON.stringify(entry));
}

const encoder = new TextEncoder();

let isoAt = 0, iso = "";
/** The time as ISO 8601, formatted once per millisecond (lines come in
 * bursts). */
function isoNow(): string {
  const now = Date.now();
  if (now !== isoAt) [isoAt, iso] = [now, new Date(now).toISOString()];
  return iso;
}
const FLUSH_AT = 64 * 1024; // characters held before writing anyway

export class Logger {
  #min: number;
  #pending: string[] = [];
  #pendingChars = 0;
  #scheduled = false;

  readonly #format: LogFormat;

  readonly #context: Fields;

  /** context: fields on every line (the worker's number, with --parallel). */
  constructor(level: LogLevel = "info", format: LogFormat = logFormat(), context: Fields = {}) {
    this.#min = LOG_LEVELS.indexOf(level);
    this.#format = format;
    this.#context = context;
    globalThis.addEventListener("unload", () => this.flush());
  }

  set level(level: LogLevel) {
    this.#min = LOG_LEVELS.indexOf(level);
  }

  /** Writes every line held back. */
  flush(): void {
    this.#scheduled = false;
    if (this.#pending.length === 0) return;
    const text = this.#pending.join("");
    this.#pending = [];
    this.#pendingChars = 0;
    const bytes = encoder.encode(text);
    for (let at = 0; at < bytes.length;) at += Deno.stdout.writeSync(bytes.subarray(at));
  }

  #write(level: LogLevel, event: string, fields: Fields): void {
    const rank = LOG_LEVELS.indexOf(level);
    if (rank < this.#min) return;
    const entry = { time: isoNow(), level, event, ...this.#context, ...fields };
    const line = (this.#format === "json" ? formatJson(entry) : formatText(entry)) + "\n";
    this.#pending.push(line);
    this.#pendingChars += line.length;
    if (rank >= LOG_LEVELS.indexOf("warn") || this.#pendingChars >= FLUSH_AT) this.flush();
    else if (!this.#scheduled) {
      this.#scheduled = true;
      setTimeout(() => this.flush(), 0);
    }
  }

  debug(event: string, fields: Fields = {}): void {
    this.#write("debug", event, fields);
  }
  info(event: string, fields: Fields = {}): void {
    this.#write("info", event, fields);
  }
  warn(event: string, fields: Fields = {}): void {
    this.#write("warn", event, fields);
  }
  error(event: string, fields: Fields = {}): void {
    this.#write("error", event, fields);
  }
}
