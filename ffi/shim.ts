/**
 * Deno.dlopen bindings for the C shim (c/), and nothing else: the library's
 * path, and Shim, which loads it once and gives its C functions as methods
 * of groups that follow the C files: shim.fds (any fd), shim.listeners (TCP
 * listening sockets), shim.waiter (the preread waiter), shim.channels
 * (handoff channels, both sides), shim.inject (the runtime's accept),
 * shim.lane (the express lane), shim.relay, shim.receiver (the handoff
 * receiver). Each group's file holds its part of the symbol table. Beside
 * them: the one place where a C return code becomes a named error
 * (errors.ts), the express lane's records (lane_records.ts), text to and
 * from C (c_text.ts).
 */
import { CHANNEL_SYMBOLS, Channels } from "./channels.ts";
import { FD_SYMBOLS, Fds } from "./fds.ts";
import { Inject, INJECT_SYMBOLS } from "./inject.ts";
import { Lane, LANE_SYMBOLS, laneContractMismatches } from "./lane.ts";
import { LISTENER_SYMBOLS, Listeners } from "./listeners.ts";
import { Receiver, RECEIVER_SYMBOLS } from "./receiver.ts";
import { Relay, RELAY_SYMBOLS } from "./relay.ts";
import { Waiter, WAITER_SYMBOLS } from "./waiter.ts";

export { ShimError } from "./errors.ts";
export type { Endpoint } from "./fds.ts";
export type { AcceptedSocket } from "./listeners.ts";
export type { RelayEnd } from "./relay.ts";
export type { ExpressEvent } from "./lane_records.ts";
export { contractMismatch, EVENT_LAYOUT, LANE_TABLE_LIMITS } from "./lane_records.ts";

/** The shim's symbol table for Deno.dlopen: each C function with its
 * parameters, the groups' parts together. */
const SYMBOLS = {
  ...FD_SYMBOLS,
  ...LISTENER_SYMBOLS,
  ...WAITER_SYMBOLS,
  ...CHANNEL_SYMBOLS,
  ...INJECT_SYMBOLS,
  ...LANE_SYMBOLS,
  ...RELAY_SYMBOLS,
  ...RECEIVER_SYMBOLS,
} as const satisfies Deno.ForeignLibraryInterface;

/** Where the library is: PORTMUX_SHIM, else the copy named in LD_PRELOAD
 * (so dlopen reaches the preloaded instance), else the build folder. */
export function shimPath(): string {
  return Deno.env.get("PORTMUX_SHIM") || preloadedShim() ||
    new URL("../build/libportmux.so", import.meta.url).pathname;
}

/** The shim named in LD_PRELOAD, if any. */
export function preloadedShim(): string | undefined {
  return (Deno.env.get("LD_PRELOAD") ?? "").split(/[: ]/).find((p) => p.endsWith("/libportmux.so"));
}

/** The loaded shim, its functions in groups; each method throws ShimError
 * on failure. */
export class Shim {
  readonly path: string;
  readonly fds: Fds;
  readonly listeners: Listeners;
  readonly waiter: Waiter;
  readonly channels: Channels;
  readonly inject: Inject;
  readonly lane: Lane;
  readonly relay: Relay;
  readonly receiver: Receiver;

  constructor(path: string = shimPath()) {
    this.path = path;
    let lib: Deno.DynamicLibrary<typeof SYMBOLS>;
    try {
      lib = Deno.dlopen(path, SYMBOLS);
    } catch (e) {
      throw new Error(
        `cannot load the portmux shim at ${path} (run \`deno task build\`): ${
          (e as Error).message
        }`,
      );
    }
    const symbols = lib.symbols;
    const wrong = laneContractMismatches(symbols);
    if (wrong.length) {
      throw new Error(
        `the shim at ${path} does not match ffi/lane_records.ts (${
          wrong.join("; ")
        }); rebuild it: deno task build`,
      );
    }
    this.fds = new Fds(symbols);
    this.listeners = new Listeners(symbols);
    this.waiter = new Waiter(symbols);
    this.channels = new Channels(symbols);
    this.inject = new Inject(symbols);
    this.lane = new Lane(symbols);
    this.relay = new Relay(symbols);
    this.receiver = new Receiver(symbols);
  }
}
