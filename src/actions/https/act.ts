/** The https action: the connection goes to the site its SNI picks. */
import type { DefaultRoute, Route } from "../../config/config.ts";
import type { ActionContext, Connection } from "../act.ts";

export function serveHttps(
  _route: Route | DefaultRoute,
  _action: Extract<Route["action"], { kind: "https" }>,
  c: Connection,
  ctx: ActionContext,
): Promise<void> {
  const https = ctx.https();
  if (!https) { // the config forbids it; never leave conn open
    c.conn.close();
    throw new Error("no HTTPS frontend");
  }
  const site = https.pick(c.sni);
  site.take(c.conn, c.client, c.alpn, c.local);
  return Promise.resolve(c.done("https", { delivery: site.mode }));
}
