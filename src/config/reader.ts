/**
 * What every config section reads with: the YAML document, the error that
 * names a field and its line, and the checks shared by several sections.
 */
import { isMap, isPair, isScalar, isSeq, LineCounter, parseDocument } from "yaml";
import type { Node as YamlNode, YAMLError } from "yaml";
import { isAbsolute, resolve } from "node:path";
import { type Cidr, parseCidr } from "../net/ip.ts";
import { type NamePattern, parseNamePattern } from "../route/name_pattern.ts";

/** A config mistake; the message is one line meant for the operator. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/** Keys and list indexes from the document's root to a value. */
export type Path = readonly (string | number)[];

function pathText(path: Path): string {
  return path.reduce<string>(
    (s, p) => typeof p === "number" ? `${s}[${p}]` : s ? `${s}.${p}` : p,
    "",
  );
}

/** The parser's first error as one line, its excerpt indented under it. */
function yamlError(source: string, error: YAMLError): ConfigError {
  const line = error.linePos?.[0].line;
  const where = line ? `${source}:${line}` : source;
  // The message ends with an excerpt of the lines and a caret.
  const [summary, ...excerpt] = error.message.trimEnd().split("\n");
  const shown = excerpt.filter((l) => l.trim() !== "").map((l) => `  | ${l}`).join("\n");
  return new ConfigError(
    `${where}: invalid YAML: ${summary!.replace(/:$/, "")}${shown ? `\n${shown}` : ""}`,
  );
}

/** Reads one document and remembers where each value came from. */
export class Reader {
  readonly #lines = new LineCounter();
  readonly #root: unknown;
  /** baseDir: where relative paths start (the config file's folder). */
  constructor(readonly source: string, text: string, readonly baseDir: string) {
    const doc = parseDocument(text, { lineCounter: this.#lines, uniqueKeys: true });
    const first = doc.errors[0];
    if (first) throw yamlError(source, first);
    this.#root = doc.contents;
  }

  #node(path: Path): YamlNode | undefined {
    let node: unknown = this.#root;
    for (const key of path) {
      if (isMap(node)) {
        const pair = node.items.find((p) => isScalar(p.key) && p.key.value === key);
        node = pair?.value;
      } else if (isSeq(node) && typeof key === "number") node = node.items[key];
      else return undefined;
    }
    return node as YamlNode | undefined;
  }

  /** The line of the key (or value) at path, for messages; for a missing
   * key, the line of the nearest enclosing node. */
  #line(path: Path): number | null {
    const parent = this.#node(path.slice(0, -1));
    const last = path[path.length - 1];
    let start: number | undefined;
    if (isMap(parent)) {
      const pair = parent.items.find((p) => isPair(p) && isScalar(p.key) && p.key.value === last);
      start = (pair?.key as YamlNode | undefined)?.range?.[0];
    }
    start ??= this.#node(path)?.range?.[0];
    if (start === undefined) return path.length > 1 ? this.#line(path.slice(0, -1)) : null;
    return this.#lines.linePos(start).line;
  }

  fail(path: Path, message: string): never {
    const line = path.length ? this.#line(path) : null;
    const where = line ? `${this.source}:${line}` : this.source;
    const field = path.length ? `${pathText(path)}: ` : "";
    throw new ConfigError(`${where}: ${field}${message}`);
  }

  value(path: Path): unknown {
    const node = this.#node(path);
    if (node === undefined || node === null) return undefined;
    return isScalar(node) ? node.value : (node as { toJSON(): unknown }).toJSON();
  }

  /** A map's keys, refusing any not in allowed (a typo is an error). */
  keys(path: Path, allowed: readonly string[]): string[] {
    const v = this.value(path);
    if (v === undefined) return [];
    if (typeof v !== "object" || v === null || Array.isArray(v)) {
      this.fail(path, `expected a map of ${allowed.join(", ")}`);
    }
    const keys = Object.keys(v);
    for (const k of keys) {
      if (!allowed.includes(k)) {
        this.fail([...path, k], `unknown key (expected one of: ${allowed.join(", ")})`);
      }
    }
    return keys;
  }

  length(path: Path): number {
    const v = this.value(path);
    if (v === undefined) return 0;
    if (!Array.isArray(v)) this.fail(path, "expected a list");
    return v.length;
  }

  string(path: Path): string | undefined {
    const v = this.value(path);
    if (v === undefined) return undefined;
    if (typeof v !== "string" || v === "") this.fail(path, "expected a non-empty string");
    return v;
  }

  integer(path: Path, min: number, max: number): number | undefined {
    const v = this.value(path);
    if (v === undefined) return undefined;
    if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
      this.fail(path, `expected a whole number from ${min} to ${max}, got ${JSON.stringify(v)}`);
    }
    return v;
  }

  boolean(path: Path): boolean | undefined {
    const v = this.value(path);
    if (v === undefined) return undefined;
    if (typeof v !== "boolean") this.fail(path, "expected true or false");
    return v;
  }

  required<T>(path: Path, v: T | undefined): T {
    if (v === undefined) this.fail(path, "is required");
    return v;
  }

  /** A file or folder name, relative ones taken from baseDir. */
  resolve(file: string): string {
    return isAbsolute(file) ? file : resolve(this.baseDir, file);
  }

  /** A string or a list of strings, as a list; undefined if absent. */
  strings(at: Path): string[] | undefined {
    const v = this.value(at);
    if (v === undefined) return undefined;
    const list = Array.isArray(v) ? v : [v];
    if (list.length === 0 || !list.every((x) => typeof x === "string" && x !== "")) {
      this.fail(at, "expected a non-empty string or a list of them");
    }
    return list;
  }

  cidrs(at: Path): Cidr[] | undefined {
    return this.strings(at)?.map((text) =>
      parseCidr(text) ??
        this.fail(at, `"${text}" is not an address or CIDR block (e.g. 10.0.0.0/8)`)
    );
  }

  names(at: Path): NamePattern[] | undefined {
    return this.strings(at)?.map((text) =>
      parseNamePattern(text) ??
        this.fail(at, `"${text}" is not a host name or a wildcard like *.example.com`)
    );
  }
}

/** Server names as written: "a.example" or "*.example.com". */
export function describeNames(ps: readonly NamePattern[]): string[] {
  return ps.map((p) => "exact" in p ? p.exact : `*${p.suffix}`);
}
