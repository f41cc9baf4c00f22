/** https: what serves the requests of the HTTPS routes. */
import type { Cidr } from "../net/ip.ts";
import type { Reader } from "./reader.ts";
import { refuseOcsp } from "./tls.ts";

/** Requests go on to this upstream instead of a handler module. */
export interface HttpsProxy {
  readonly upstream: URL;
  readonly timeoutMs: number;
  /** Peers whose X-Forwarded-For and Forwarded are kept and added to;
   * anyone else's are replaced. */
  readonly trustedForwarders: readonly Cidr[];
}

export interface Https {
  readonly handler: string | null;
  readonly hsts: string | null;
  readonly proxy: HttpsProxy | null;
  /** Files from this folder are served instead. */
  readonly static: string | null;
  /** A file for the access log (Combined Log Format); null: none. */
  readonly accessLog: string | null;
}

export function readHttps(r: Reader): Https {
  refuseOcsp(r, ["https"]);
  const served = r.keys(["https"], ["handler", "hsts", "proxy", "static", "access_log"])
    .filter((k) => k === "handler" || k === "proxy" || k === "static");
  if (served.length > 1) r.fail(["https", served[1]!], "give one of handler, proxy or static");
  const staticFolder = readStatic(r);
  const proxy = readProxy(r);
  const hsts = readHsts(r);
  const handler = readHandler(r);
  const accessLog = r.string(["https", "access_log"]);
  return {
    handler,
    hsts,
    proxy,
    static: staticFolder,
    accessLog: accessLog === undefined ? null : r.resolve(accessLog),
  };
}

function readStatic(r: Reader): string | null {
  const text = r.string(["https", "static"]);
  if (text === undefined) return null;
  const folder = r.resolve(text);
  try {
    if (!Deno.statSync(folder).isDirectory) throw new Error("not a folder");
  } catch {
    r.fail(["https", "static"], `${folder} is not a folder portmux can read`);
  }
  return folder;
}

function readProxy(r: Reader): HttpsProxy | null {
  const at = ["https", "proxy"];
  if (r.value(at) === undefined) return null;
  r.keys(at, ["upstream", "timeout_ms", "trusted_forwarders"]);
  const text = r.required([...at, "upstream"], r.string([...at, "upstream"]));
  let upstream: URL | null = null;
  try {
    upstream = new URL(text);
  } catch { /* below */ }
  if (!upstream || !/^https?:$/.test(upstream.protocol) || upstream.search || upstream.hash) {
    r.fail([...at, "upstream"], `expected an http:// or https:// URL, got "${text}"`);
  }
  return {
    upstream,
    timeoutMs: r.integer([...at, "timeout_ms"], 1, 3_600_000) ?? 30_000,
    trustedForwarders: r.cidrs([...at, "trusted_forwarders"]) ?? [],
  };
}

function readHsts(r: Reader): string | null {
  const hsts = r.string(["https", "hsts"]) ?? null;
  if (hsts !== null && !/^max-age=\d+(\s*;\s*(includeSubDomains|preload))*$/i.test(hsts)) {
    r.fail(
      ["https", "hsts"],
      `expected a Strict-Transport-Security value like "max-age=31536000; includeSubDomains"`,
    );
  }
  return hsts;
}

/** The handler module's file; it is imported later, once HTTPS starts. */
function readHandler(r: Reader): string | null {
  const text = r.string(["https", "handler"]);
  if (!text) return null;
  const handler = r.resolve(text);
  try {
    Deno.statSync(handler);
  } catch {
    r.fail(["https", "handler"], `cannot read ${handler}`);
  }
  return handler;
}

export function describeHttps(h: Https): Record<string, unknown> {
  return {
    handler: h.handler,
    hsts: h.hsts,
    proxy: h.proxy && {
      upstream: h.proxy.upstream.href,
      timeout_ms: h.proxy.timeoutMs,
      trusted_forwarders: h.proxy.trustedForwarders.map((t) => t.text),
    },
    static: h.static,
    access_log: h.accessLog,
  };
}
