/** The proxy action: a connection to the upstream (with a PROXY v2 header
 * if asked), then a C thread copies both ways. */
import type { DefaultRoute, Route } from "../../config/config.ts";
import type { ActionContext, Connection, Relay } from "../act.ts";
import { detachConn, relay } from "./relay.ts";
import { openUpstream } from "./upstream.ts";

export async function proxy(
  _route: Route | DefaultRoute,
  action: Extract<Route["action"], { kind: "proxy" }>,
  c: Connection,
  ctx: ActionContext,
): Promise<Relay> {
  const { conn, client, local } = c;
  const target = `${action.upstream.hostname}:${action.upstream.port}`;
  let upstream: Deno.TcpConn;
  try {
    upstream = await openUpstream(action.upstream, action.proxyProtocol ? { client, local } : null);
  } catch (e) {
    conn.close();
    throw new Error(`upstream ${target} unreachable (${(e as Error).message}); connection closed`);
  }
  let server: number, own: number;
  try {
    server = detachConn(ctx.shim, upstream);
  } catch (e) {
    conn.close();
    throw new Error(`taking over the upstream socket: ${e}`);
  }
  try {
    own = conn.detach();
  } catch (e) {
    ctx.shim.fds.close(server);
    throw new Error(`taking over the client socket: ${e}`);
  }
  c.done("proxied", { upstream: target });
  // As long as the two talk; a relay that cannot start closes both.
  return { ended: relay(ctx.shim, own, server).then(() => {}, () => {}) };
}
