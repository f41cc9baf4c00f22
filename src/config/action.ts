/** A route's action: what is done with a connection that matched it. */
import type { Path, Reader } from "./reader.ts";
import type { Service } from "./services.ts";

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

const ACTIONS = ["https", "handoff", "proxy", "close"];

/** The keys an action reads from its route besides action itself. */
export const ACTION_KEYS = ["service", "wait_ms", "fallback", "upstream", "proxy_protocol"];

/** at: the route, whose keys the action's settings sit beside. */
export function readAction(r: Reader, at: Path, services: ReadonlyMap<string, Service>): Action {
  const kind = r.required([...at, "action"], r.string([...at, "action"]));
  if (!ACTIONS.includes(kind)) {
    r.fail([...at, "action"], `unknown action "${kind}" (expected ${ACTIONS.join(", ")})`);
  }
  refuseOthersKeys(r, at, kind);
  switch (kind) {
    case "handoff":
      return readHandoff(r, at, services);
    case "proxy":
      return readProxy(r, at);
    default:
      return { kind: kind as "https" | "close" };
  }
}

/** A key of another action's is a mistake, not something to ignore. */
function refuseOthersKeys(r: Reader, at: Path, kind: string): void {
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
}

/** The fallback is checked once every route is read (routes.ts). */
function readHandoff(r: Reader, at: Path, services: ReadonlyMap<string, Service>): Action {
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

function readProxy(r: Reader, at: Path): Action {
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

export function describeAction(a: Action): Record<string, unknown> {
  switch (a.kind) {
    case "handoff":
      return { action: a.kind, service: a.service.name, wait_ms: a.waitMs, fallback: a.fallback };
    case "proxy":
      return {
        action: a.kind,
        upstream: describeUpstream(a.upstream),
        proxy_protocol: a.proxyProtocol ? "v2" : "none",
      };
    default:
      return { action: a.kind };
  }
}

/** host:port, an IPv6 address in brackets. */
function describeUpstream(u: Upstream): string {
  return `${u.hostname.includes(":") ? `[${u.hostname}]` : u.hostname}:${u.port}`;
}
