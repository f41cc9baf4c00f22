/**
 * The HTTPS sites: one internal Deno.serve (an HttpsFrontend) per
 * certificate, chosen by the server name (SNI) the ClientHello gave; the
 * first certificate is the default, for clients without SNI or with a name
 * no other matches.
 */
import type { Shim } from "../../../ffi/shim.ts";
import type { Config } from "../../config/config.ts";
import {
  HttpsFrontend,
  type HttpsHandler,
  loadHandlerModule,
  statusPageHandler,
} from "./frontend.ts";
import type { Logger } from "../../ops/log.ts";
import type { Metrics } from "../../ops/metrics.ts";
import { nameMatches, type NamePattern } from "../../route/name_pattern.ts";
import { reverseProxyHandler } from "./reverse_proxy.ts";
import { selfSignedCertIn } from "./self_signed_cert.ts";
import { staticFilesHandler } from "./static_files.ts";
import { AccessLog } from "./access_log.ts";
import type { LaneSite } from "../../route/express_lane.ts";

/** What the sites are made of: read from the files each time, so that a
 * reload notices a renewed certificate at the same path. */
export interface HttpsMaterial {
  readonly certificates: readonly { names: readonly NamePattern[]; cert: string; key: string }[];
  readonly handler: string | null;
  readonly hsts: string | null;
  readonly proxy: Config["https"]["proxy"];
  readonly static: string | null;
  readonly accessLog: string | null;
  /** Equal for equal material: a reload builds new sites only on a change. */
  readonly madeFrom: string;
}

/** The material the config names (null: no tls). */
export async function readHttps(config: Config): Promise<HttpsMaterial | null> {
  if (!config.tls) return null;
  const certificates = config.tls.kind === "files"
    ? await Promise.all(config.tls.certificates.map(async (c) => ({
      names: c.names,
      cert: await Deno.readTextFile(c.cert),
      key: await Deno.readTextFile(c.key),
    })))
    : [{ names: [], ...await selfSignedCertIn(config.dataDir) }];
  const handler = config.https.handler;
  // The module's size and time too: an edited module at the same path is new.
  const st = handler ? await Deno.stat(handler) : null;
  const module = st ? [st.size, st.mtime?.getTime()] : null;
  const hsts = config.https.hsts;
  const proxy = config.https.proxy;
  return {
    certificates,
    handler,
    hsts,
    proxy,
    static: config.https.static,
    accessLog: config.https.accessLog,
    madeFrom: JSON.stringify([
      config.https.accessLog,
      certificates,
      handler,
      module,
      hsts,
      proxy?.upstream.href,
      proxy?.timeoutMs,
      proxy?.trustedForwarders.map((c) => c.text),
      config.https.static,
    ]),
  };
}

/** The index of the site for this server name: the first whose names match,
 * else the first site, the default (also for no SNI: null). The express
 * lane's pick_site() decides the same. */
export function pickSite(sites: readonly { names: readonly NamePattern[] }[], sni: string | null) {
  const i = sni === null ? -1 : sites.findIndex((s) => s.names.some((p) => nameMatches(p, sni)));
  return Math.max(i, 0);
}

/** How logs and /healthz name a site: its first name, else its place. */
function siteName(names: readonly NamePattern[], index: number): string {
  const first = names[0];
  if (!first) return index === 0 ? "default" : `#${index}`;
  return "exact" in first ? first.exact : `*${first.suffix}`;
}

export class HttpsSites {
  private constructor(
    readonly madeFrom: string,
    readonly sites: readonly { names: readonly NamePattern[]; frontend: HttpsFrontend }[],
  ) {}

  /** restarted: called when a site's server was started again (its
   * listener is new: the express lane's table must name it). */
  static async start(
    m: HttpsMaterial,
    shim: Shim,
    log: Logger,
    metrics: Metrics,
    restarted: () => void,
  ): Promise<HttpsSites> {
    const internalAuthorities = new Set<string>();
    const accessLog = m.accessLog ? new AccessLog(m.accessLog) : null;
    let first: HttpsFrontend | null = null;
    const handler: HttpsHandler = m.handler
      ? await loadHandlerModule(m.handler)
      : m.proxy
      ? reverseProxyHandler({ ...m.proxy, internalAuthorities })
      : m.static
      ? staticFilesHandler(m.static)
      : statusPageHandler(() => first?.mode ?? "inject");
    const sites = m.certificates.map(({ names, cert, key }, i) => ({
      names,
      frontend: HttpsFrontend.start({
        internalAuthorities,
        site: siteName(names, i),
        restarted,
        cert,
        key,
        handler,
        hsts: m.hsts,
        accessLog,
        shim,
        log,
        metrics,
      }),
    }));
    first = sites[0]!.frontend;
    return new HttpsSites(m.madeFrom, sites);
  }

  /** The server for this server name (null: none given). */
  pick(sni: string | null): HttpsFrontend {
    return this.sites[pickSite(this.sites, sni)]!.frontend;
  }

  /** The sites as the express lane sees them (src/route/express_lane.ts). */
  get laneSites(): LaneSite[] {
    return this.sites.map((s) => ({ listenerFd: s.frontend.listenerFd, names: s.names }));
  }

  /** The sites that cannot accept now (their server stopped, and is not
   * started again yet). */
  get down(): string[] {
    return this.sites.filter((s) => s.frontend.down).map((s) => s.frontend.site);
  }

  get mode(): string {
    return this.sites[0]!.frontend.mode;
  }

  async stop(): Promise<void> {
    await Promise.all(this.sites.map((s) => s.frontend.stop()));
  }
}
