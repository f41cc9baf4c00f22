/** The handoff action: the connection's fd and its record go to the
 * service; if no instance takes it within the route's wait, the route's
 * fallback serves it. */
import type { DefaultRoute, Route } from "../../config/config.ts";
import { actFallback, type ActionContext, type Connection, type Relay } from "../act.ts";
import { encodeRecord } from "./record.ts";

export async function handOff(
  route: Route | DefaultRoute,
  action: Extract<Route["action"], { kind: "handoff" }>,
  c: Connection,
  ctx: ActionContext,
): Promise<Relay | void> {
  const service = action.service.name;
  if (c.conn.acceptedBy === "deno" && !ctx.releaseWorks()) {
    // Closing its Deno object would cut the service's copy (a FIN,
    // docs/design.md R2): not handed off.
    ctx.metrics.inc("portmux_handoff_fallbacks_total", { service });
    return await actFallback(
      action.fallback,
      {
        handoff_error: "not handed off: release failed its runtime check (a FIN would cut it)",
      },
      c,
      ctx,
    );
  }
  const { client, local, peeked } = c;
  const record = encodeRecord({ v: 1, route: route.name, service, client, local, peeked });
  const sent = await ctx.channels(service).send(c.fd, record, action.waitMs);
  const waited = { waited_ms: Math.round(sent.waitedMs * 100) / 100 };
  if (sent.sent) {
    // The service has the socket now. Let go of ours without a FIN
    // (docs/design.md R2): release, then close.
    c.conn.release();
    return c.done("handed-off", { service, socket: sent.socket, ...waited });
  }
  ctx.metrics.inc("portmux_handoff_fallbacks_total", { service });
  return await actFallback(
    action.fallback,
    {
      ...waited,
      handoff_error: `service "${service}" did not take it: ${sent.reason}`,
    },
    c,
    ctx,
  );
}
