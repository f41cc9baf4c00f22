/**
 * Receive clients from portmux in a Deno protocol service: each client's
 * own TCP socket, from its first byte, with the record portmux sends with
 * it (who the client is, where it connected, which route).
 *
 * Import this module by path or URL; it needs no import map. It loads the
 * portmux shim from the repository it belongs to (building it with `cc`
 * when it is missing) and works without the shim preloaded. Preloaded
 * (`LD_PRELOAD=<repository>/build/libportmux.so`, an absolute path, from
 * any folder), the runtime's own accept takes the clients: faster.
 *
 * @example A line-echo service on /run/echo/echo.sock
 * ```ts ignore
 * import { serve } from "./src/service/mod.ts";
 *
 * const receiver = await serve("/run/echo/echo.sock", (client) => {
 *   const socket = client.adopt(); // a node:net Socket on the client's connection
 *   console.log("from", client.record.client.address, "on route", client.record.route);
 *   socket.pipe(socket);
 * });
 * Deno.addSignalListener("SIGTERM", async () => {
 *   await receiver.close(); // removes the socket file
 *   Deno.exit(0);
 * });
 * ```
 *
 * @module
 */
import { Shim, shimPath } from "../../ffi/shim.ts";
import { buildShim } from "../build_shim.ts";
import {
  type HandoffReceiver,
  type ReceivedConnection,
  type ReceiverOptions,
  serveHandoffs,
} from "./receiver.ts";

export type { HandoffRecord } from "../actions/handoff/record.ts";
export type { HandoffReceiver, ReceivedConnection, ReceiverOptions };

/**
 * Listens at the Unix socket path and calls onConnection with each client
 * portmux hands off there. Only a process of the sender's uid may hand
 * clients over (`opts.senderUid`, default: this service's own uid). A
 * stale socket file at path is replaced; one that a running service
 * answers on is not taken from it (throws). `close()` stops receiving and
 * removes the socket file; clients already given out stay open.
 *
 * @example
 * ```ts ignore
 * const receiver = await serve("/run/kv/kv.sock", ({ record, adopt }) => {
 *   const socket = adopt();
 *   socket.write(`hello ${record.client.address}\n`);
 * }, { senderUid: 997, onProblem: (m) => console.error(m) });
 * ```
 */
export async function serve(
  path: string,
  onConnection: (connection: ReceivedConnection) => void,
  opts: ReceiverOptions = {},
): Promise<HandoffReceiver> {
  return serveHandoffs(await loadShim(), path, onConnection, opts);
}

/** The shim this module belongs with: the preloaded one, or the
 * repository's build (built first when it is missing). */
async function loadShim(): Promise<Shim> {
  const path = shimPath();
  try {
    await Deno.stat(path);
  } catch {
    try {
      await buildShim();
    } catch (e) {
      throw new Error(
        `the portmux shim is missing at ${path} and could not be built (${
          (e as Error).message
        }); build it with \`deno task build\` in the portmux repository`,
      );
    }
  }
  return new Shim(path);
}
