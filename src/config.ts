/**
 * The configuration: YAML text in, typed and validated values out, once, at
 * start. Every mistake becomes one ConfigError line naming the field and,
 * where the parser knows it, the file and line. config/example.yaml
 * documents every option read here.
 */
import { isMap, isPair, isScalar, isSeq, LineCounter, parseDocument } from "yaml";
import type { Node as YamlNode } from "yaml";
import { isAbsolute, join, resolve } from "node:path";
import { homedir } from "node:os";

export type Matcher =
  | { readonly protocol: "tls" }
  | { readonly prefix: Uint8Array };

export interface Service {
  readonly name: string;
  /** The Unix socket the service listens on. */
  readonly socket: string;
  /** The uid the service must run as (SO_PEERCRED); -1 accepts any. */
  readonly uid: number;
  /** Set when portmux runs a built-in service itself ("echo"). */
  readonly builtin?: "echo";
}

export type Action =
  | { readonly kind: "https" }
  | { readonly kind: "handoff"; readonly service: Service }
  | { readonly kind: "close" };

export interface Route {
  readonly name: string;
  readonly match: Matcher;
  readonly action: Action;
}

/** Where a connection goes when no route matches (or nothing arrives). */
export type DefaultRoute = Route | { readonly name: "default"; readonly action: { kind: "close" } };

export interface Listen {
  readonly address: string;
  readonly port: number;
}

export type TlsSource =
  | { readonly kind: "files"; readonly cert: string; readonly key: string }
  | { readonly kind: "self_signed" };

export interface Config {
  /** Where the config came from, for messages. */
  readonly source: string;
  readonly listen: readonly Listen[];
  readonly dataDir: string;
  readonly preread: { readonly timeoutMs: number; readonly maxBytes: number };
  readonly tls: TlsSource | null;
  readonly https: { readonly handler: string | null };
  readonly services: ReadonlyMap<string, Service>;
  readonly routes: readonly Route[];
  readonly defaultRoute: DefaultRoute;
  readonly log: { readonly level: LogLevel };
}

export const LOG_LEVELS = ["debug", "info", "warn", "error"] as const;
export type LogLevel = typeof LOG_LEVELS[number];

/** A config mistake; the message is one line meant for the operator. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

type Path = readonly (string | number)[];

function pathText(path: Path): string {
  return path.reduce<string>(
    (s, p) => typeof p === "number" ? `${s}[${p}]` : s ? `${s}.${p}` : p,
    "",
  );
}

/** Reads one document and remembers where each value came from. */
class Reader {
  readonly #lines = new LineCounter();
  readonly #root: unknown;
  constructor(readonly source: string, readonly text: string) {
    const doc = parseDocument(text, { lineCounter: this.#lines, uniqueKeys: true });
    const first = doc.errors[0];
    if (first) {
      const line = first.linePos?.[0].line;
      const where = line ? `${source}:${line}` : source;
      throw new ConfigError(`${where}: invalid YAML: ${first.message.split("\n")[0]}`);
    }
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
}

/** The default data folder: $PORTMUX_DATA_DIR, else the XDG state folder. */
export function defaultDataDir(): string {
  const env = Deno.env.get("PORTMUX_DATA_DIR");
  if (env) return resolve(env);
  const state = Deno.env.get("XDG_STATE_HOME") ?? join(homedir(), ".local", "state");
  return join(state, "portmux");
}

function isIpLiteral(s: string): boolean {
  return /^\d{1,3}(\.\d{1,3}){3}$/.test(s) && s.split(".").every((o) => Number(o) <= 255) ||
    /^[0-9a-fA-F:.]+$/.test(s) && s.includes(":");
}

const TOP_KEYS = [
  "listen",
  "data_dir",
  "preread",
  "tls",
  "https",
  "services",
  "routes",
  "default",
  "log",
] as const;

/**
 * Parses and validates config text. Relative paths are resolved against
 * baseDir (the config file's folder). Throws ConfigError.
 */
export function parseConfig(text: string, source: string, baseDir: string): Config {
  const r: Reader = new Reader(source, text);
  if (r.value([]) === undefined) r.fail([], "the config is empty");
  r.keys([], TOP_KEYS);
  const path = (p: string) => isAbsolute(p) ? p : resolve(baseDir, p);

  const listen: Listen[] = [];
  const nListen = r.length(["listen"]);
  if (nListen === 0) r.fail(["listen"], "at least one listener is required");
  for (let i = 0; i < nListen; i++) {
    r.keys(["listen", i], ["address", "port"]);
    const address = r.required(["listen", i, "address"], r.string(["listen", i, "address"]));
    if (!isIpLiteral(address)) {
      r.fail(["listen", i, "address"], `"${address}" is not an IPv4 or IPv6 address`);
    }
    const port = r.required(["listen", i, "port"], r.integer(["listen", i, "port"], 0, 65535));
    listen.push({ address, port });
  }

  const dataDirText = r.string(["data_dir"]);
  const dataDir = dataDirText ? path(dataDirText) : defaultDataDir();

  r.keys(["preread"], ["timeout_ms", "max_bytes"]);
  const preread = {
    timeoutMs: r.integer(["preread", "timeout_ms"], 1, 600_000) ?? 5000,
    maxBytes: r.integer(["preread", "max_bytes"], 16, 65536) ?? 16384,
  };

  let tls: TlsSource | null = null;
  if (r.value(["tls"]) !== undefined) {
    r.keys(["tls"], ["cert", "key", "self_signed"]);
    if (r.boolean(["tls", "self_signed"])) {
      if (r.value(["tls", "cert"]) !== undefined || r.value(["tls", "key"]) !== undefined) {
        r.fail(["tls", "self_signed"], "cannot be combined with cert and key");
      }
      tls = { kind: "self_signed" };
    } else {
      const files = { cert: "", key: "" };
      for (const k of ["cert", "key"] as const) {
        const file = path(r.required(["tls", k], r.string(["tls", k])));
        try {
          Deno.statSync(file);
        } catch {
          r.fail(["tls", k], `cannot read ${file}`);
        }
        files[k] = file;
      }
      tls = { kind: "files", ...files };
    }
  }

  r.keys(["https"], ["handler"]);
  const handlerText = r.string(["https", "handler"]);
  let handler: string | null = null;
  if (handlerText) {
    handler = path(handlerText);
    try {
      Deno.statSync(handler);
    } catch {
      r.fail(["https", "handler"], `cannot read ${handler}`);
    }
  }

  const services = new Map<string, Service>();
  for (const name of Object.keys(serviceMap(r))) {
    const at = ["services", name];
    r.keys(at, ["socket", "uid", "builtin"]);
    const builtin = r.string([...at, "builtin"]);
    if (builtin !== undefined && builtin !== "echo") {
      r.fail([...at, "builtin"], `unknown built-in service "${builtin}" (expected: echo)`);
    }
    const socketText = r.string([...at, "socket"]);
    if (!socketText && !builtin) r.fail([...at, "socket"], "is required");
    const socket = socketText ? path(socketText) : join(dataDir, `${name}.sock`);
    if (new TextEncoder().encode(socket).length > 107) {
      r.fail([...at, "socket"], `path is longer than a Unix socket path may be (107 bytes)`);
    }
    const uid = r.integer([...at, "uid"], -1, 2 ** 31 - 1) ?? Deno.uid() ?? -1;
    services.set(name, { name, socket, uid, ...(builtin ? { builtin: "echo" as const } : {}) });
  }

  const routes: Route[] = [];
  const nRoutes = r.length(["routes"]);
  for (let i = 0; i < nRoutes; i++) {
    const at = ["routes", i];
    r.keys(at, ["name", "match", "action", "service"]);
    const name = r.required([...at, "name"], r.string([...at, "name"]));
    if (name === "close" || routes.some((x) => x.name === name)) {
      r.fail([...at, "name"], `route name "${name}" is ${name === "close" ? "reserved" : "taken"}`);
    }
    const match = readMatcher(r, [...at, "match"]);
    const action = readAction(r, at, services);
    if (action.kind === "https" && !tls) {
      r.fail([...at, "action"], "an https route needs a tls section");
    }
    routes.push({ name, match, action });
  }

  const defaultName = r.string(["default"]) ?? "close";
  let defaultRoute: DefaultRoute;
  if (defaultName === "close") defaultRoute = { name: "default", action: { kind: "close" } };
  else {
    const named = routes.find((x) => x.name === defaultName);
    if (!named) {
      r.fail(["default"], `no route named "${defaultName}" (expected close or a route's name)`);
    }
    defaultRoute = named;
  }

  r.keys(["log"], ["level"]);
  const level = r.string(["log", "level"]) ?? "info";
  if (!(LOG_LEVELS as readonly string[]).includes(level)) {
    r.fail(["log", "level"], `expected one of ${LOG_LEVELS.join(", ")}`);
  }

  return {
    source,
    listen,
    dataDir,
    preread,
    tls,
    https: { handler },
    services,
    routes,
    defaultRoute,
    log: { level: level as LogLevel },
  };
}

function serviceMap(r: Reader): Record<string, unknown> {
  const v = r.value(["services"]);
  if (v === undefined) return {};
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    r.fail(["services"], "expected a map of service names");
  }
  return v as Record<string, unknown>;
}

function readMatcher(r: Reader, at: Path): Matcher {
  const keys = r.keys(at, ["protocol", "prefix", "prefix_hex"]);
  if (keys.length !== 1) r.fail(at, "give exactly one of protocol, prefix, prefix_hex");
  if (keys[0] === "protocol") {
    const p = r.string([...at, "protocol"]);
    if (p !== "tls") r.fail([...at, "protocol"], `unknown protocol "${p}" (expected: tls)`);
    return { protocol: "tls" };
  }
  if (keys[0] === "prefix") {
    return { prefix: new TextEncoder().encode(r.string([...at, "prefix"])) };
  }
  const hex = r.string([...at, "prefix_hex"]) ?? "";
  if (!/^([0-9a-fA-F]{2})+$/.test(hex)) {
    r.fail([...at, "prefix_hex"], "expected an even number of hex digits");
  }
  return { prefix: Uint8Array.from(hex.match(/../g)!.map((h) => parseInt(h, 16))) };
}

function readAction(r: Reader, at: Path, services: ReadonlyMap<string, Service>): Action {
  const kind = r.required([...at, "action"], r.string([...at, "action"]));
  const serviceName = r.string([...at, "service"]);
  switch (kind) {
    case "https":
    case "close":
      if (serviceName !== undefined) {
        r.fail([...at, "service"], `only a handoff route names a service`);
      }
      return { kind };
    case "handoff": {
      const name = r.required([...at, "service"], serviceName);
      const service = services.get(name);
      if (!service) r.fail([...at, "service"], `no service named "${name}" under services`);
      return { kind: "handoff", service };
    }
    default:
      return r.fail(
        [...at, "action"],
        `unknown action "${kind}" (expected https, handoff or close)`,
      );
  }
}

/** Reads and parses a config file. Throws ConfigError. */
export function loadConfigFile(file: string): Config {
  let text: string;
  try {
    text = Deno.readTextFileSync(file);
  } catch (e) {
    throw new ConfigError(`${file}: cannot read the config file: ${(e as Error).message}`);
  }
  return parseConfig(text, file, resolve(file, ".."));
}
