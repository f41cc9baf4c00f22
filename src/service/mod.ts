/**
 * Receive clients from portmux in a Deno protocol service: each client's
 * own TCP socket, from its first byte, with the record portmux sends with
 * it (who the client is, where it connected, which route). The contract
 * underneath is docs/handoff.md.
 *
 * Import this module by path or `file:` URL, from any folder; it needs no
 * import map and no deno.json. Run the service with `deno run -A`.
 *
 * **The shim.** The module loads the portmux shim of the checkout it
 * belongs to (`<checkout>/build/libportmux.so`, found from this file, not
 * from the service's folder), and builds it with the C compiler (`cc`, or
 * `$CC`) when it is missing. When that cannot be done, {@linkcode serve}
 * throws an error that says what to do: build it once with
 * `deno task --cwd <checkout> build`, or set `PORTMUX_SHIM` to a built
 * `libportmux.so`.
 *
 * **The faster path.** It works as it is: JavaScript reads the channels.
 * With the shim preloaded, the runtime's own accept takes the handed-off
 * clients instead, as it takes direct ones (no thread, no JavaScript
 * between the channel and the accept). Preload it by its absolute path,
 * which works from any folder:
 *
 * ```sh
 * deno task --cwd /opt/portmux build    # once, if it was never built
 * LD_PRELOAD=/opt/portmux/build/libportmux.so deno run -A my_service.ts
 * ```
 *
 * {@linkcode HandoffReceiver.port} tells which path a receiver is on.
 *
 * @example A line-echo service
 * ```ts
 * // From elsewhere: import { serve } from "/opt/portmux/src/service/mod.ts";
 * import { serve } from "./mod.ts";
 *
 * const path = `${await Deno.makeTempDir()}/echo.sock`; // e.g. /run/echo/echo.sock
 * const receiver = await serve(path, (client) => {
 *   console.log("from", client.record.client.address, "on route", client.record.route);
 *   const socket = client.adopt(); // a node:net Socket on the client's own connection
 *   socket.on("error", () => socket.destroy());
 *   socket.pipe(socket);
 * });
 * // A service runs until it is stopped:
 * // Deno.addSignalListener("SIGTERM", () => receiver.close().then(() => Deno.exit(0)));
 * await receiver.close(); // here at once: no more clients, the socket file is removed
 * ```
 *
 * @module
 */
import type net from "node:net";
import type { HandoffRecord } from "../actions/handoff/record.ts";
import { loadShim } from "./load_shim.ts";
import { serveHandoffs } from "./receiver.ts";

export type { HandoffRecord } from "../actions/handoff/record.ts";
export type { Address } from "../net/address.ts";

/**
 * Listens on a Unix socket at `path` and calls `onConnection` with each
 * client portmux hands off there (`services.<name>.socket` in portmux's
 * config), from the client's first byte, with its record.
 *
 * Only a process of `opts.senderUid` (default: this service's own uid)
 * may hand clients over: a channel from any other is refused. A stale
 * socket file at `path` (left by a service that was killed) is replaced;
 * one that a running service answers on is not taken from it (throws).
 * The socket's folder must be one that only root or portmux's user can
 * write, or portmux refuses to send there.
 *
 * `onConnection` is called on the event loop, one client at a time: serve
 * each client asynchronously (events, promises), never in a blocking
 * loop, or every client behind it waits. An exception it throws is
 * thrown on as uncaught, as from a `node:net` server's listener (it ends
 * the process, unless an `error` event listener prevents that); the
 * client, unless adopted, is closed first.
 *
 * Throws when the path cannot be listened on, when `opts.senderUid` is
 * not a uid, and when the shim can be neither found nor built (the error
 * says what to do).
 *
 * @param path Where to listen: the Unix socket file to create.
 * @param onConnection Called with each client handed off.
 * @param opts The sender's uid; where to tell problems.
 * @returns The receiver, to close.
 *
 * @example A greeting service, for a portmux that runs as uid 997
 * ```ts
 * import { serve } from "./mod.ts";
 *
 * const path = `${await Deno.makeTempDir()}/kv.sock`; // e.g. /run/kv/kv.sock
 * const receiver = await serve(path, ({ record, adopt }) => {
 *   const socket = adopt();
 *   socket.end(`hello ${record.client.address} ${record.client.port}\n`);
 * }, { senderUid: 997, onProblem: (message) => console.error(`kv: ${message}`) });
 * console.log(receiver.port === null ? "JavaScript reads the channels" : "preloaded");
 * await receiver.close(); // stops; removes the socket file
 * ```
 */
export async function serve(
  path: string,
  onConnection: (connection: ReceivedConnection) => void,
  opts: ReceiverOptions = {},
): Promise<HandoffReceiver> {
  return serveHandoffs(await loadShim(), path, onConnection, opts);
}

/**
 * One client handed off to the service: its record, and its connection,
 * to take with {@linkcode ReceivedConnection.adopt}.
 *
 * @example Serve a client from its first byte
 * ```ts
 * import type { ReceivedConnection } from "./mod.ts";
 *
 * function onConnection({ record, adopt }: ReceivedConnection): void {
 *   const socket = adopt(); // the client's own TCP connection
 *   socket.on("error", () => socket.destroy());
 *   socket.once("data", (first) => {
 *     // first starts with the record.peeked bytes portmux matched
 *     socket.end(`hello ${record.client.address}, you sent ${first.length} bytes\n`);
 *   });
 * }
 * console.log(typeof onConnection); // given to serve()
 * ```
 */
export interface ReceivedConnection {
  /** The record portmux sent with this client. */
  readonly record: HandoffRecord;
  /**
   * The client's connection as a `node:net` Socket, which the service now
   * owns: reads start at the client's very first byte (the `peeked` ones
   * included), writes go straight to the client, and ending or destroying
   * it ends the client's connection. Called again, it returns the same
   * Socket. It may be called after `onConnection` returned (once the
   * record is checked, say), but not after the receiver's `close()`: a
   * connection not adopted by then is closed, and adopt() throws.
   *
   * @returns The client's connection.
   */
  adopt(): net.Socket;
}

/**
 * Options of {@linkcode serve}.
 *
 * @example For a portmux that runs as uid 997
 * ```ts
 * import type { ReceiverOptions } from "./mod.ts";
 *
 * const opts: ReceiverOptions = {
 *   senderUid: 997,
 *   onProblem: (message) => console.error(`kv: ${message}`),
 * };
 * console.log(opts.senderUid);
 * ```
 */
export interface ReceiverOptions {
  /**
   * The uid portmux runs as. A channel opened by a process of any other
   * uid (root's included, unless this is 0) is refused when it is
   * accepted (`SO_PEERCRED`), and whatever was sent on it is dropped,
   * its clients closed. portmux, which writes on a channel as soon as it
   * has opened it, logs those clients as handed off: `onProblem` is where
   * a wrong senderUid shows. Default: this service's own uid. Set it when
   * portmux runs as another user than the service (and set
   * `services.<name>.uid` in portmux's config to the service's uid).
   */
  readonly senderUid?: number;
  /**
   * Told, in a sentence, of each channel refused and each record that
   * could not be used (its client is closed). Default: nothing is told.
   */
  readonly onProblem?: (message: string) => void;
}

/**
 * A running receiver, as {@linkcode serve} returns it.
 *
 * @example Stop on SIGTERM
 * ```ts
 * import type { HandoffReceiver } from "./mod.ts";
 *
 * function stopOnSigterm(receiver: HandoffReceiver): void {
 *   Deno.addSignalListener("SIGTERM", async () => {
 *     await receiver.close(); // no more clients; the socket file is gone
 *     Deno.exit(0); // this ends the clients still open too
 *   });
 * }
 * console.log(typeof stopOnSigterm);
 * ```
 */
export interface HandoffReceiver {
  /** With the shim preloaded: the private loopback port whose accept the
   * shim feeds with handed-off clients (anyone who connects to it is
   * refused). `null` without the preload: JavaScript reads the
   * channels. */
  readonly port: number | null;
  /**
   * Stops receiving. The socket file is removed at once, so that portmux
   * opens no channel here any more. The promise resolves when the
   * receiver has stopped: the Unix socket and every channel are closed,
   * and `onConnection` is not called again. Records portmux sent that
   * were not read yet are dropped, their clients closed (they see their
   * connection end, as when a service exits; portmux logged them as
   * handed off); so are connections given to `onConnection` but not
   * adopted. Clients already adopted stay open: they are the service's
   * to finish and end (exiting ends them). Calling it again returns the
   * same promise.
   *
   * @returns When the receiver has stopped.
   */
  close(): Promise<void>;
}
