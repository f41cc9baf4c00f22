/**
 * The configuration: YAML text in, typed and validated values out, once, at
 * start. Every mistake becomes one ConfigError line naming the field and,
 * where the parser knows it, the file and line. config/example.yaml
 * documents every option read here.
 */
import { isMap, isPair, isScalar, isSeq, LineCounter, parseDocument } from "yaml";
import type { Node as YamlNode } from "yaml";
import { isAbsolute, join, resolve } from "node:path";
import { type Cidr, ipBytes, isLoopback, parseCidr } from "../net/ip.ts";
import { isProtocolName, PROTOCOL_NAMES, type ProtocolName } from "../detect/registry.ts";
import { type BytePattern, type ByteRegex, parseBytePattern } from "../detect/private.ts";
import { type NamePattern, parseNamePattern } from "../route/name_pattern.ts";

/** What a route asks of a connection; every condition given must hold. */
export interface RouteMatch {
  /** A protocol from the detector registry (src/detect/registry.ts). */
  readonly protocol?: ProtocolName;
  /** TLS server names (exact or "*.example.com"); any of them. */
  readonly sni?: readonly NamePattern[];
  /** TLS ALPN protocols; the client must offer one of them. */
  readonly alpn?: readonly string[];
  /** HTTP/1.x Host header names; any of them. */
  readonly host?: readonly NamePattern[];
  /** Client addresses (after the PROXY protocol); any of them. */
  readonly source?: readonly Cidr[];
  readonly prefix?: Uint8Array;
  readonly pattern?: BytePattern;
  readonly regex?: ByteRegex;
  readonly minLength?: number;
}

export interface Service {
  readonly name: string;
  /** The Unix sockets of its instances (handoffs are spread over them). */
  readonly sockets: readonly string[];
  /** The uid the service must run as (SO_PEERCRED); -1 accepts any. */
  readonly uid: number;
  /** The gid it must run as; -1 accepts any. */
  readonly gid: number;
  /** A file holding the pid the service must have; null: any pid. */
  readonly pidFile: string | null;
  /** Set when portmux runs a built-in service itself ("echo"). */
  readonly builtin?: "echo";
}

export interface Upstream {
  readonly hostname: string;
  readonly port: number;
}

export type Action =
  | { readonly kind: "https" }
  | {
    readonly kind: "handoff";
    readonly service: Service;
    /** How long a connection may wait for the service to take it. */
    readonly waitMs: number;
    /** The route taken when it does not: "close" or a route's name. */
    readonly fallback: string;
  }
  | {
    readonly kind: "proxy";
    readonly upstream: Upstream;
    /** Send a PROXY protocol v2 header with the client's address first. */
    readonly proxyProtocol: boolean;
  }
  | { readonly kind: "close" };

export interface Route {
  readonly name: string;
  /** null: never matched directly; only a fallback, default or on_timeout
   * names it. */
  readonly match: RouteMatch | null;
  readonly action: Action;
}

/** Where a connection goes when no route matches (or nothing arrives):
 * a route, or just closing ("default" when it is the default, "close"
 * when a handoff falls back to it). */
export type DefaultRoute =
  | Route
  | { readonly name: "default" | "close"; readonly action: { kind: "close" } };

/** Bounds on what clients can make the daemon hold. When one is reached
 * the newest connection (the one that would exceed it) is closed. */
export interface Limits {
  /** Connections held at once: waiting in preread, or relayed (proxy,
   * HTTPS bridge). Handed-off and injected ones belong to others. */
  readonly maxConnections: number;
  /** Connections waiting for their first bytes at once. */
  readonly maxPreread: number;
  /** Connections held at once per client address. */
  readonly maxPerSource: number;
}

export interface Listen {
  readonly address: string;
  readonly port: number;
  /** Clients from these addresses must start with a PROXY protocol header
   * (v1 or v2), which portmux reads and removes; null: no PROXY protocol. */
  readonly proxyProtocol: { readonly trusted: readonly Cidr[] } | null;
}

/** A certificate and the server names (SNI) it is for. */
export interface Certificate {
  /** Empty: only the default (for no SNI, or a name no other matches). */
  readonly names: readonly NamePattern[];
  readonly cert: string;
  readonly key: string;
}

/** The first certificate is the default. */
export type TlsSource =
  | { readonly kind: "files"; readonly certificates: readonly Certificate[] }
  | { readonly kind: "self_signed" };

export interface Config {
  /** Where the config came from, for messages. */
  readonly source: string;
  readonly listen: readonly Listen[];
  readonly dataDir: string;
  readonly preread: {
    readonly timeoutMs: number;
    readonly maxBytes: number;
    /** Let the express lane (src/route/express_lane.ts) take what it can. */
    readonly express: boolean;
    /** Accept a connection once its first bytes are in (TCP_DEFER_ACCEPT),
     * or after about a second for a client that waits for the server.
     * "auto" (the default) is resolved here: on unless a route serves the
     * clients that send nothing (on_timeout), who would wait that second. */
    readonly deferAccept: boolean;
  };
  readonly limits: Limits;
  /** How long a stop lets HTTPS requests and relays finish. */
  readonly drainTimeoutMs: number;
  /** Where /metrics and /healthz are served (plain HTTP); null: nowhere. */
  /** token: required off loopback (src/ops/admin.ts). */
  readonly admin:
    | { readonly address: string; readonly port: number; readonly token: string | null }
    | null;
  readonly tls: TlsSource | null;
  readonly https: {
    readonly handler: string | null;
    readonly hsts: string | null;
    /** Requests go on to this upstream instead of a handler module. */
    readonly proxy: {
      readonly upstream: URL;
      readonly timeoutMs: number;
      /** Peers whose X-Forwarded-For and Forwarded are kept and added to;
       * anyone else's are replaced. */
      readonly trustedForwarders: readonly Cidr[];
    } | null;
    /** Files from this folder are served instead. */
    readonly static: string | null;
    /** A file for the access log (Combined Log Format); null: none. */
    readonly accessLog: string | null;
  };
  readonly services: ReadonlyMap<string, Service>;
  readonly routes: readonly Route[];
  readonly defaultRoute: DefaultRoute;
  /** Taken when nothing at all arrived before the deadline (clients that
   * wait for the server to speak first, like some SSH clients). */
  readonly timeoutRoute: DefaultRoute;
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
      // The parser's message ends with an excerpt of the lines and a caret:
      // kept, indented under the one-line summary.
      const [summary, ...excerpt] = first.message.trimEnd().split("\n");
      const shown = excerpt.filter((l) => l.trim() !== "").map((l) => `  | ${l}`).join("\n");
      throw new ConfigError(
        `${where}: invalid YAML: ${summary!.replace(/:$/, "")}${shown ? `\n${shown}` : ""}`,
      );
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

/** The default data folder: $PORTMUX_DATA_DIR, else the XDG state folder
 * ($XDG_STATE_HOME or ~/.local/state), else /var/lib/portmux. */
export function defaultDataDir(): string {
  const env = Deno.env.get("PORTMUX_DATA_DIR");
  if (env) return resolve(env);
  const xdg = Deno.env.get("XDG_STATE_HOME");
  if (xdg) return join(xdg, "portmux");
  const home = Deno.env.get("HOME");
  return home ? join(home, ".local", "state", "portmux") : "/var/lib/portmux";
}

const TOP_KEYS = [
  "listen",
  "data_dir",
  "preread",
  "limits",
  "drain_timeout_ms",
  "admin",
  "tls",
  "https",
  "services",
  "routes",
  "default",
  "on_timeout",
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
    const at = ["listen", i];
    r.keys(at, ["address", "port", "proxy_protocol"]);
    const address = r.required([...at, "address"], r.string([...at, "address"]));
    if (!ipBytes(address)) {
      r.fail([...at, "address"], `"${address}" is not an IPv4 or IPv6 address`);
    }
    const port = r.required([...at, "port"], r.integer([...at, "port"], 0, 65535));
    let proxyProtocol: Listen["proxyProtocol"] = null;
    if (r.value([...at, "proxy_protocol"]) !== undefined) {
      r.keys([...at, "proxy_protocol"], ["trusted"]);
      const trusted = readCidrs(r, [...at, "proxy_protocol", "trusted"]);
      if (!trusted) r.fail([...at, "proxy_protocol", "trusted"], "is required");
      proxyProtocol = { trusted };
    }
    listen.push({ address, port, proxyProtocol });
  }

  const dataDirText = r.string(["data_dir"]);
  const dataDir = dataDirText ? path(dataDirText) : defaultDataDir();

  r.keys(["preread"], ["timeout_ms", "max_bytes", "express", "defer_accept"]);
  const preread = {
    timeoutMs: r.integer(["preread", "timeout_ms"], 1, 600_000) ?? 5000,
    maxBytes: r.integer(["preread", "max_bytes"], 16, 65536) ?? 16384,
    express: r.boolean(["preread", "express"]) ?? true,
    deferAccept: false, // resolved below, once on_timeout is known
  };

  r.keys(["limits"], ["max_connections", "max_preread", "max_per_source"]);
  const limits: Limits = {
    maxConnections: r.integer(["limits", "max_connections"], 1, 10_000_000) ?? 50_000,
    maxPreread: r.integer(["limits", "max_preread"], 1, 10_000_000) ?? 20_000,
    maxPerSource: r.integer(["limits", "max_per_source"], 1, 10_000_000) ?? 1000,
  };

  const drainTimeoutMs = r.integer(["drain_timeout_ms"], 0, 600_000) ?? 10_000;

  let admin: Config["admin"] = null;
  if (r.value(["admin"]) !== undefined) {
    r.keys(["admin"], ["address", "port", "token"]);
    const address = r.string(["admin", "address"]) ?? "127.0.0.1";
    if (!ipBytes(address)) {
      r.fail(["admin", "address"], `"${address}" is not an IPv4 or IPv6 address`);
    }
    const token = r.string(["admin", "token"]) ?? null;
    if (token === null && !isLoopback(address)) {
      r.fail(
        ["admin", "token"],
        `is required when the admin address is not loopback (${address}): anyone who can ` +
          "reach it could read the metrics",
      );
    }
    if (token !== null && !/^[\x21-\x7e]{16,}$/.test(token)) {
      r.fail(["admin", "token"], "must be at least 16 printable characters, without spaces");
    }
    admin = {
      address,
      port: r.required(["admin", "port"], r.integer(["admin", "port"], 0, 65535)),
      token,
    };
  }

  let tls: TlsSource | null = null;
  if (r.value(["tls"]) !== undefined) {
    refuseOcsp(r, ["tls"]);
    const keys = r.keys(["tls"], ["cert", "key", "self_signed", "certificates"]);
    const file = (at: Path) => {
      const f = path(r.required(at, r.string(at)));
      try {
        Deno.statSync(f);
      } catch {
        r.fail(at, `cannot read ${f}`);
      }
      return f;
    };
    if (r.boolean(["tls", "self_signed"])) {
      if (keys.length > 1) {
        r.fail(["tls", "self_signed"], "cannot be combined with cert, key or certificates");
      }
      tls = { kind: "self_signed" };
    } else if (keys.includes("certificates")) {
      if (keys.includes("cert") || keys.includes("key")) {
        r.fail(["tls", "certificates"], "give cert and key, or certificates, not both");
      }
      const n = r.length(["tls", "certificates"]);
      if (n === 0 || n > 30) r.fail(["tls", "certificates"], "give from 1 to 30 certificates");
      const certificates: Certificate[] = [];
      for (let i = 0; i < n; i++) {
        const at = ["tls", "certificates", i];
        refuseOcsp(r, at);
        r.keys(at, ["names", "cert", "key"]);
        const names = readNames(r, [...at, "names"]) ?? [];
        if (names.length === 0 && i > 0) {
          r.fail(
            [...at, "names"],
            "is required (only the first certificate, the default, may have none)",
          );
        }
        certificates.push({ names, cert: file([...at, "cert"]), key: file([...at, "key"]) });
      }
      tls = { kind: "files", certificates };
    } else {
      tls = {
        kind: "files",
        certificates: [{ names: [], cert: file(["tls", "cert"]), key: file(["tls", "key"]) }],
      };
    }
  }

  refuseOcsp(r, ["https"]);
  const served = r.keys(["https"], ["handler", "hsts", "proxy", "static", "access_log"])
    .filter((k) => k === "handler" || k === "proxy" || k === "static");
  if (served.length > 1) r.fail(["https", served[1]!], "give one of handler, proxy or static");
  let staticFolder: string | null = null;
  const staticText = r.string(["https", "static"]);
  if (staticText !== undefined) {
    staticFolder = path(staticText);
    try {
      if (!Deno.statSync(staticFolder).isDirectory) throw new Error("not a folder");
    } catch {
      r.fail(["https", "static"], `${staticFolder} is not a folder portmux can read`);
    }
  }
  let proxy: Config["https"]["proxy"] = null;
  if (r.value(["https", "proxy"]) !== undefined) {
    r.keys(["https", "proxy"], ["upstream", "timeout_ms", "trusted_forwarders"]);
    const text = r.required(
      ["https", "proxy", "upstream"],
      r.string(["https", "proxy", "upstream"]),
    );
    let upstream: URL | null = null;
    try {
      upstream = new URL(text);
    } catch { /* below */ }
    if (!upstream || !/^https?:$/.test(upstream.protocol) || upstream.search || upstream.hash) {
      r.fail(["https", "proxy", "upstream"], `expected an http:// or https:// URL, got "${text}"`);
    }
    proxy = {
      upstream,
      timeoutMs: r.integer(["https", "proxy", "timeout_ms"], 1, 3_600_000) ?? 30_000,
      trustedForwarders: readCidrs(r, ["https", "proxy", "trusted_forwarders"]) ?? [],
    };
  }
  const hsts = r.string(["https", "hsts"]) ?? null;
  if (hsts !== null && !/^max-age=\d+(\s*;\s*(includeSubDomains|preload))*$/i.test(hsts)) {
    r.fail(
      ["https", "hsts"],
      `expected a Strict-Transport-Security value like "max-age=31536000; includeSubDomains"`,
    );
  }
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
    r.keys(at, ["socket", "uid", "gid", "pid_file", "builtin"]);
    const builtin = r.string([...at, "builtin"]);
    if (builtin !== undefined && builtin !== "echo") {
      r.fail([...at, "builtin"], `unknown built-in service "${builtin}" (expected: echo)`);
    }
    const listed = readStrings(r, [...at, "socket"]);
    if (!listed && !builtin) r.fail([...at, "socket"], "is required");
    if (listed && builtin) {
      r.fail([...at, "socket"], "a built-in service's socket is made by portmux");
    }
    const sockets = listed?.map(path) ?? [join(dataDir, `${name}.sock`)];
    for (const socket of sockets) {
      if (new TextEncoder().encode(socket).length > 107) {
        r.fail([...at, "socket"], `${socket} is longer than a Unix socket path may be (107 bytes)`);
      }
    }
    const uid = r.integer([...at, "uid"], -1, 2 ** 31 - 1) ?? Deno.uid() ?? -1;
    const gid = r.integer([...at, "gid"], -1, 2 ** 31 - 1) ?? -1;
    const pidFileText = r.string([...at, "pid_file"]);
    services.set(name, {
      name,
      sockets,
      uid,
      gid,
      pidFile: pidFileText ? path(pidFileText) : null,
      ...(builtin ? { builtin: "echo" as const } : {}),
    });
  }

  const routes: Route[] = [];
  const nRoutes = r.length(["routes"]);
  for (let i = 0; i < nRoutes; i++) {
    const at = ["routes", i];
    r.keys(at, [
      "name",
      "match",
      "action",
      "service",
      "wait_ms",
      "fallback",
      "upstream",
      "proxy_protocol",
    ]);
    const name = r.required([...at, "name"], r.string([...at, "name"]));
    if (name === "close" || routes.some((x) => x.name === name)) {
      r.fail([...at, "name"], `route name "${name}" is ${name === "close" ? "reserved" : "taken"}`);
    }
    const match = r.value([...at, "match"]) === undefined ? null : readMatcher(r, [...at, "match"]);
    const action = readAction(r, at, services);
    if (action.kind === "https" && !tls) {
      r.fail([...at, "action"], "an https route needs a tls section");
    }
    routes.push({ name, match, action });
  }

  // A fallback names close or a route, and following fallbacks must end.
  routes.forEach((route, i) => {
    const seen = new Set<string>();
    for (let at: Route | undefined = route; at?.action.kind === "handoff";) {
      const next: string = at.action.fallback;
      if (next === "close") break;
      const found: Route | undefined = routes.find((x) => x.name === next);
      if (!found) {
        r.fail(
          ["routes", i, "fallback"],
          `no route named "${next}" (expected close or a route's name)`,
        );
      }
      if (seen.has(next) || next === route.name) {
        r.fail(["routes", i, "fallback"], `fallbacks go round in a circle through "${next}"`);
      }
      seen.add(next);
      at = found;
    }
  });

  const namedRoute = (key: "default" | "on_timeout", fallback: DefaultRoute): DefaultRoute => {
    const name = r.string([key]);
    if (name === undefined) return fallback;
    if (name === "close") return { name: "default", action: { kind: "close" } };
    const named = routes.find((x) => x.name === name);
    if (!named) r.fail([key], `no route named "${name}" (expected close or a route's name)`);
    return named;
  };
  const defaultRoute = namedRoute("default", { name: "default", action: { kind: "close" } });
  const timeoutRoute = namedRoute("on_timeout", defaultRoute);
  const deferAccept = r.value(["preread", "defer_accept"]) ?? "auto";
  if (deferAccept === "auto") preread.deferAccept = timeoutRoute.action.kind === "close";
  else if (typeof deferAccept === "boolean") preread.deferAccept = deferAccept;
  else r.fail(["preread", "defer_accept"], "expected true, false or auto");

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
    limits,
    drainTimeoutMs,
    admin,
    tls,
    https: {
      handler,
      hsts,
      proxy,
      static: staticFolder,
      accessLog: r.string(["https", "access_log"]) === undefined
        ? null
        : path(r.string(["https", "access_log"])!),
    },
    services,
    routes,
    defaultRoute,
    timeoutRoute,
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

const MATCH_KEYS = [
  "protocol",
  "sni",
  "alpn",
  "host",
  "source",
  "prefix",
  "prefix_hex",
  "pattern",
  "regex",
  "min_length",
] as const;

/** A string or a list of strings, as a list; undefined if absent. */
function readStrings(r: Reader, at: Path): string[] | undefined {
  const v = r.value(at);
  if (v === undefined) return undefined;
  const list = Array.isArray(v) ? v : [v];
  if (list.length === 0 || !list.every((x) => typeof x === "string" && x !== "")) {
    r.fail(at, "expected a non-empty string or a list of them");
  }
  return list;
}

function readCidrs(r: Reader, at: Path): Cidr[] | undefined {
  return readStrings(r, at)?.map((text) =>
    parseCidr(text) ?? r.fail(at, `"${text}" is not an address or CIDR block (e.g. 10.0.0.0/8)`)
  );
}

/** OCSP stapling is asked for often enough to deserve its own answer. */
function refuseOcsp(r: Reader, at: Path): void {
  const v = r.value(at);
  const key = v && typeof v === "object" ? Object.keys(v).find((k) => /^ocsp/i.test(k)) : undefined;
  if (key === undefined) return;
  r.fail(
    [...at, key],
    "OCSP stapling is not supported: HTTPS is served by Deno.serve, which takes a certificate " +
      "and key but no OCSP response. To staple, route the site's SNI to a server that does " +
      "(action: proxy or handoff, TLS passthrough)",
  );
}

function readNames(r: Reader, at: Path): NamePattern[] | undefined {
  return readStrings(r, at)?.map((text) =>
    parseNamePattern(text) ??
      r.fail(at, `"${text}" is not a host name or a wildcard like *.example.com`)
  );
}

function readMatcher(r: Reader, at: Path): RouteMatch {
  const keys = r.keys(at, MATCH_KEYS);
  if (keys.length === 0) r.fail(at, `give at least one of ${MATCH_KEYS.join(", ")}`);
  const m: { -readonly [K in keyof RouteMatch]: RouteMatch[K] } = {};
  const protocol = r.string([...at, "protocol"]);
  if (protocol !== undefined) {
    if (!isProtocolName(protocol)) {
      r.fail(
        [...at, "protocol"],
        `unknown protocol "${protocol}" (expected one of: ${PROTOCOL_NAMES.join(", ")})`,
      );
    }
    m.protocol = protocol;
  }
  const needs = (key: string, proto: ProtocolName) => {
    if (r.value([...at, key]) !== undefined && protocol !== proto) {
      r.fail([...at, key], `only a route with protocol: ${proto} can match on ${key}`);
    }
  };
  needs("sni", "tls");
  needs("alpn", "tls");
  needs("host", "http");
  const sni = readNames(r, [...at, "sni"]);
  if (sni) m.sni = sni;
  const alpn = readStrings(r, [...at, "alpn"]);
  if (alpn) m.alpn = alpn;
  const host = readNames(r, [...at, "host"]);
  if (host) m.host = host;
  const source = readCidrs(r, [...at, "source"]);
  if (source) m.source = source;

  if (keys.includes("prefix") && keys.includes("prefix_hex")) {
    r.fail([...at, "prefix_hex"], "give prefix or prefix_hex, not both");
  }
  const prefix = r.string([...at, "prefix"]);
  if (prefix !== undefined) m.prefix = new TextEncoder().encode(prefix);
  const hex = r.string([...at, "prefix_hex"]);
  if (hex !== undefined) {
    if (!/^([0-9a-fA-F]{2})+$/.test(hex)) {
      r.fail([...at, "prefix_hex"], "expected an even number of hex digits");
    }
    m.prefix = Uint8Array.from(hex.match(/../g)!.map((h) => parseInt(h, 16)));
  }
  if (r.value([...at, "pattern"]) !== undefined) {
    const pat = [...at, "pattern"];
    r.keys(pat, ["bytes", "offset"]);
    const text = r.required([...pat, "bytes"], r.string([...pat, "bytes"]));
    const bytes = parseBytePattern(text);
    if (!bytes) r.fail([...pat, "bytes"], `expected hex byte pairs or ?? (e.g. "50 52 ?? 56")`);
    m.pattern = { offset: r.integer([...pat, "offset"], 0, 65535) ?? 0, bytes };
  }
  if (r.value([...at, "regex"]) !== undefined) {
    const rx = [...at, "regex"];
    r.keys(rx, ["expression", "max_bytes"]);
    const text = r.required([...rx, "expression"], r.string([...rx, "expression"]));
    let expression: RegExp;
    try {
      expression = new RegExp(text, "s");
    } catch (e) {
      r.fail([...rx, "expression"], `not a valid regular expression: ${(e as Error).message}`);
    }
    m.regex = { expression, maxBytes: r.integer([...rx, "max_bytes"], 1, 65536) ?? 256 };
  }
  const minLength = r.integer([...at, "min_length"], 1, 65536);
  if (minLength !== undefined) m.minLength = minLength;
  return m;
}

const ACTIONS = ["https", "handoff", "proxy", "close"];

function readAction(r: Reader, at: Path, services: ReadonlyMap<string, Service>): Action {
  const kind = r.required([...at, "action"], r.string([...at, "action"]));
  if (!ACTIONS.includes(kind)) {
    r.fail([...at, "action"], `unknown action "${kind}" (expected ${ACTIONS.join(", ")})`);
  }
  const only = (key: string, action: string) => {
    if (r.value([...at, key]) !== undefined && kind !== action) {
      r.fail([...at, key], `only a ${action} route has ${key}`);
    }
  };
  only("service", "handoff");
  only("wait_ms", "handoff");
  only("fallback", "handoff");
  only("upstream", "proxy");
  only("proxy_protocol", "proxy");
  switch (kind) {
    case "handoff": {
      const name = r.required([...at, "service"], r.string([...at, "service"]));
      const service = services.get(name);
      if (!service) r.fail([...at, "service"], `no service named "${name}" under services`);
      return {
        kind: "handoff",
        service,
        waitMs: r.integer([...at, "wait_ms"], 0, 600_000) ?? 1000,
        fallback: r.string([...at, "fallback"]) ?? "close",
      };
    }
    case "proxy": {
      const text = r.required([...at, "upstream"], r.string([...at, "upstream"]));
      const m = /^(\[[0-9a-fA-F:.]+\]|[^:\s]+):(\d{1,5})$/.exec(text);
      if (!m || Number(m[2]) < 1 || Number(m[2]) > 65535) {
        r.fail([...at, "upstream"], `expected host:port (e.g. 127.0.0.1:22 or [::1]:22)`);
      }
      const pp = r.string([...at, "proxy_protocol"]);
      if (pp !== undefined && pp !== "v2") {
        r.fail([...at, "proxy_protocol"], `expected v2 (or leave it out)`);
      }
      return {
        kind: "proxy",
        upstream: { hostname: m[1]!.replace(/^\[|\]$/g, ""), port: Number(m[2]) },
        proxyProtocol: pp === "v2",
      };
    }
    default:
      return { kind: kind as "https" | "close" };
  }
}

/** Reads and parses a config file. Throws ConfigError. */
/** file: relative to the folder the command was typed in. Under `deno
 * task` that is INIT_CWD (deno task runs in the project's folder). */
export function loadConfigFile(
  file: string,
  env: (name: string) => string | undefined = (n) => Deno.env.get(n),
): Config {
  const path = resolve(env("INIT_CWD") ?? Deno.cwd(), file);
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound ? "no such file" : (e as Error).message;
    throw new ConfigError(`${path}: cannot read the config file: ${why}`);
  }
  return parseConfig(text, path, resolve(path, ".."));
}

/**
 * The settings operators change per host, from the environment (see
 * src/ops/cli.ts): PORTMUX_LISTEN and PORTMUX_LOG_LEVEL. Throws ConfigError
 * naming the variable.
 */
export function applyEnvironment(
  config: Config,
  env: (name: string) => string | undefined,
): Config {
  let { listen, log } = config;
  const listenText = env("PORTMUX_LISTEN");
  if (listenText !== undefined) {
    const proxyProtocol = config.listen[0]?.proxyProtocol ?? null;
    listen = listenText.split(",").map((item) => {
      const m = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):(\d{1,5})$/.exec(item.trim());
      const address = m?.[1] ?? m?.[2];
      if (!m || !address || !ipBytes(address) || Number(m[3]) > 65535) {
        throw new ConfigError(
          `PORTMUX_LISTEN: "${item}" is not ADDRESS:PORT (IPv6 in brackets, e.g. [::]:443)`,
        );
      }
      return { address, port: Number(m[3]), proxyProtocol };
    });
  }
  const level = env("PORTMUX_LOG_LEVEL");
  if (level !== undefined) {
    if (!(LOG_LEVELS as readonly string[]).includes(level)) {
      throw new ConfigError(`PORTMUX_LOG_LEVEL: expected one of ${LOG_LEVELS.join(", ")}`);
    }
    log = { level: level as LogLevel };
  }
  return { ...config, listen, log };
}

/** The config as portmux reads it, as plain data (for `portmux check`). */
export function describeConfig(c: Config): Record<string, unknown> {
  const text = (b: Uint8Array) =>
    [...b].every((x) => x >= 0x20 && x < 0x7f)
      ? { prefix: new TextDecoder().decode(b) }
      : { prefix_hex: [...b].map((x) => x.toString(16).padStart(2, "0")).join("") };
  const names = (ps: readonly NamePattern[]) =>
    ps.map((p) => "exact" in p ? p.exact : `*${p.suffix}`);
  const match = (m: RouteMatch) => ({
    ...(m.protocol ? { protocol: m.protocol } : {}),
    ...(m.sni ? { sni: names(m.sni) } : {}),
    ...(m.alpn ? { alpn: m.alpn } : {}),
    ...(m.host ? { host: names(m.host) } : {}),
    ...(m.source ? { source: m.source.map((s) => s.text) } : {}),
    ...(m.prefix ? text(m.prefix) : {}),
    ...(m.pattern
      ? {
        pattern: {
          offset: m.pattern.offset,
          bytes: m.pattern.bytes.map((b) => b === null ? "??" : b.toString(16).padStart(2, "0"))
            .join(" "),
        },
      }
      : {}),
    ...(m.regex
      ? { regex: { expression: m.regex.expression.source, max_bytes: m.regex.maxBytes } }
      : {}),
    ...(m.minLength !== undefined ? { min_length: m.minLength } : {}),
  });
  const action = (a: Action) => {
    switch (a.kind) {
      case "handoff":
        return { action: a.kind, service: a.service.name, wait_ms: a.waitMs, fallback: a.fallback };
      case "proxy":
        return {
          action: a.kind,
          upstream: `${
            a.upstream.hostname.includes(":") ? `[${a.upstream.hostname}]` : a.upstream.hostname
          }:${a.upstream.port}`,
          proxy_protocol: a.proxyProtocol ? "v2" : "none",
        };
      default:
        return { action: a.kind };
    }
  };
  return {
    listen: c.listen.map((l) => ({
      address: l.address,
      port: l.port,
      ...(l.proxyProtocol
        ? { proxy_protocol: { trusted: l.proxyProtocol.trusted.map((t) => t.text) } }
        : {}),
    })),
    data_dir: c.dataDir,
    preread: {
      timeout_ms: c.preread.timeoutMs,
      max_bytes: c.preread.maxBytes,
      express: c.preread.express,
      defer_accept: c.preread.deferAccept,
    },
    drain_timeout_ms: c.drainTimeoutMs,
    admin: c.admin && { ...c.admin, token: c.admin.token === null ? null : "(set)" },
    limits: {
      max_connections: c.limits.maxConnections,
      max_preread: c.limits.maxPreread,
      max_per_source: c.limits.maxPerSource,
    },
    tls: c.tls === null ? null : c.tls.kind === "files"
      ? {
        certificates: c.tls.certificates.map((x) => ({
          names: names(x.names),
          cert: x.cert,
          key: x.key,
        })),
      }
      : { self_signed: true },
    https: {
      handler: c.https.handler,
      hsts: c.https.hsts,
      proxy: c.https.proxy && {
        upstream: c.https.proxy.upstream.href,
        timeout_ms: c.https.proxy.timeoutMs,
        trusted_forwarders: c.https.proxy.trustedForwarders.map((t) => t.text),
      },
      static: c.https.static,
      access_log: c.https.accessLog,
    },
    services: Object.fromEntries(
      [...c.services.values()].map((s) => [
        s.name,
        s.builtin
          ? { builtin: s.builtin, socket: s.sockets }
          : { socket: s.sockets, uid: s.uid, gid: s.gid, pid_file: s.pidFile },
      ]),
    ),
    routes: c.routes.map((r) => ({
      name: r.name,
      ...(r.match ? { match: match(r.match) } : {}),
      ...action(r.action),
    })),
    default: c.defaultRoute.name === "default" ? "close" : c.defaultRoute.name,
    on_timeout: c.timeoutRoute.name === "default" ? "close" : c.timeoutRoute.name,
    log: { level: c.log.level },
  };
}
