/**
 * The actions a route can take, behind one table keyed by action kind:
 * each serves a classified connection and logs its one line through done.
 */
import type { Shim } from "../../ffi/shim.ts";
import type { ClientSocket } from "../accept/client_socket.ts";
import type { DefaultRoute, Route } from "../config/config.ts";
import type { Address } from "../net/address.ts";
import type { Metrics } from "../ops/metrics.ts";
import type { ServiceChannels } from "./handoff/channels.ts";
import { handOff } from "./handoff/act.ts";
import { serveHttps } from "./https/act.ts";
import type { HttpsSites } from "./https/sites.ts";
import { proxy } from "./proxy/act.ts";

/** What became of a connection, as the log says it. */
export type Outcome = "handed-off" | "https" | "proxied" | "closed" | "failed";

/** Bytes copied between a client and an upstream until both are done.
 * (Wrapped: an async function returning the bare promise would wait for it.) */
export interface Relay {
  readonly ended: Promise<void>;
}

/** A classified connection, as the actions get it. */
export interface Connection {
  readonly conn: ClientSocket;
  readonly fd: number;
  readonly client: Address;
  readonly local: Address;
  readonly peeked: number;
  /** The server name of a TLS ClientHello, when a route looked for one. */
  readonly sni: string | null;
  /** The ALPN protocols the ClientHello offered (same). */
  readonly alpn: readonly string[];
  /** Logs the connection's one line. */
  readonly done: (outcome: Outcome, more?: Record<string, unknown>) => void;
}

/** What the actions use of the daemon, read when they run (a reload may
 * change it). */
export interface ActionContext {
  readonly shim: Shim;
  readonly metrics: Metrics;
  readonly https: () => HttpsSites | null;
  readonly channels: (service: string) => ServiceChannels;
  /** Whether a connection Deno accepted can be let go of without a FIN
   * (the runtime check of release passed). */
  readonly releaseWorks: () => boolean;
  readonly routeNamed: (name: string) => Route | DefaultRoute;
}

type Action<K extends Route["action"]["kind"]> = (
  route: Route | DefaultRoute,
  action: Extract<Route["action"], { kind: K }>,
  c: Connection,
  ctx: ActionContext,
) => Promise<Relay | void>;

const ACTIONS: { [K in Route["action"]["kind"]]: Action<K> } = {
  close: (_route, _action, c) => {
    c.conn.close();
    return Promise.resolve(c.done("closed"));
  },
  https: serveHttps,
  handoff: handOff,
  proxy,
};

/** Carries out a route's action; returns the relay it leaves running. An
 * error is the connection's failure, logged: never thrown. */
export async function act(
  route: Route | DefaultRoute,
  c: Connection,
  ctx: ActionContext,
): Promise<Relay | void> {
  const action = route.action;
  try {
    return await (ACTIONS[action.kind] as Action<typeof action.kind>)(route, action, c, ctx);
  } catch (e) {
    return c.done("failed", { error: String(e) });
  }
}

/** Serves the connection by the route named fallback, its line saying why
 * the first route could not. */
export function actFallback(
  fallback: string,
  note: Record<string, unknown>,
  c: Connection,
  ctx: ActionContext,
): Promise<Relay | void> {
  const route = ctx.routeNamed(fallback);
  return act(route, {
    ...c,
    done: (outcome, more = {}) => c.done(outcome, { ...note, fallback: route.name, ...more }),
  }, ctx);
}
