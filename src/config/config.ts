/**
 * The configuration: YAML text in, typed and validated values out, once, at
 * start. Every mistake becomes one ConfigError line naming the field and,
 * where the parser knows it, the file and line. config/example.yaml
 * documents every option read here.
 *
 * Each section is read and described by its own file beside this one
 * (listen.ts, preread.ts, limits.ts, admin.ts, tls.ts, https.ts,
 * services.ts, routes.ts with match.ts and action.ts, log.ts), all with the
 * Reader of reader.ts; this file puts them together.
 */
import { join, resolve } from "node:path";
import { type Admin, describeAdmin, readAdmin } from "./admin.ts";
import { describeHttps, type Https, readHttps } from "./https.ts";
import { describeLimits, type Limits, readLimits } from "./limits.ts";
import { describeListen, type Listen, listenFromEnvironment, readListen } from "./listen.ts";
import { describeLog, logFromEnvironment, type LogSettings, readLog } from "./log.ts";
import { describePreread, type Preread, readPreread, resolveDeferAccept } from "./preread.ts";
import { ConfigError, Reader } from "./reader.ts";
import {
  type DefaultRoute,
  describeDefaultRoute,
  describeRoutes,
  readDefaultRoutes,
  readRoutes,
  type Route,
} from "./routes.ts";
import { describeServices, readServices, type Service } from "./services.ts";
import { describeTls, readTls, type TlsSource } from "./tls.ts";

export { ConfigError } from "./reader.ts";
export type { Action, Upstream } from "./action.ts";
export type { Admin } from "./admin.ts";
export type { Https, HttpsProxy } from "./https.ts";
export type { Limits } from "./limits.ts";
export type { Listen } from "./listen.ts";
export { LOG_LEVELS, type LogLevel, type LogSettings } from "./log.ts";
export type { RouteMatch } from "./match.ts";
export type { Preread } from "./preread.ts";
export type { DefaultRoute, Route } from "./routes.ts";
export type { Service } from "./services.ts";
export type { Certificate, TlsSource } from "./tls.ts";

export interface Config {
  /** Where the config came from, for messages. */
  readonly source: string;
  readonly listen: readonly Listen[];
  readonly dataDir: string;
  readonly preread: Preread;
  readonly limits: Limits;
  /** How long a stop lets HTTPS requests and relays finish. */
  readonly drainTimeoutMs: number;
  /** Where /metrics and /healthz are served (plain HTTP); null: nowhere. */
  readonly admin: Admin | null;
  readonly tls: TlsSource | null;
  readonly https: Https;
  readonly services: ReadonlyMap<string, Service>;
  readonly routes: readonly Route[];
  readonly defaultRoute: DefaultRoute;
  /** Taken when nothing at all arrived before the deadline (clients that
   * wait for the server to speak first, like some SSH clients). */
  readonly timeoutRoute: DefaultRoute;
  readonly log: LogSettings;
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
  const r = new Reader(source, text, baseDir);
  if (r.value([]) === undefined) r.fail([], "the config is empty");
  r.keys([], TOP_KEYS);
  // In config/example.yaml's order, so that of several mistakes the one
  // highest in such a file is reported. Each needs only what came before.
  const listen = readListen(r);
  const dataDirText = r.string(["data_dir"]);
  const dataDir = dataDirText ? r.resolve(dataDirText) : defaultDataDir();
  const preread = readPreread(r);
  const limits = readLimits(r);
  const drainTimeoutMs = r.integer(["drain_timeout_ms"], 0, 600_000) ?? 10_000;
  const admin = readAdmin(r);
  const tls = readTls(r);
  const https = readHttps(r);
  const services = readServices(r, dataDir);
  const routes = readRoutes(r, services, tls !== null);
  const { defaultRoute, timeoutRoute } = readDefaultRoutes(r, routes);
  const deferAccept = resolveDeferAccept(r, timeoutRoute.action.kind === "close");
  const log = readLog(r);
  return {
    source,
    listen,
    dataDir,
    preread: { ...preread, deferAccept },
    limits,
    drainTimeoutMs,
    admin,
    tls,
    https,
    services,
    routes,
    defaultRoute,
    timeoutRoute,
    log,
  };
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
  const listenText = env("PORTMUX_LISTEN");
  const listen = listenText === undefined
    ? config.listen
    : listenFromEnvironment(listenText, config.listen[0]?.proxyProtocol ?? null);
  const level = env("PORTMUX_LOG_LEVEL");
  const log = level === undefined ? config.log : logFromEnvironment(level);
  return { ...config, listen, log };
}

/** The config as portmux reads it, as plain data (for `portmux check`). */
export function describeConfig(c: Config): Record<string, unknown> {
  return {
    listen: describeListen(c.listen),
    data_dir: c.dataDir,
    preread: describePreread(c.preread),
    drain_timeout_ms: c.drainTimeoutMs,
    admin: describeAdmin(c.admin),
    limits: describeLimits(c.limits),
    tls: describeTls(c.tls),
    https: describeHttps(c.https),
    services: describeServices(c.services),
    routes: describeRoutes(c.routes),
    default: describeDefaultRoute(c.defaultRoute),
    on_timeout: describeDefaultRoute(c.timeoutRoute),
    log: describeLog(c.log),
  };
}
