/**
 * Bindings for the express lane (c/express_lane.c and the lane_*.c
 * beside it): its routing table, the listeners it accepts on, the channels
 * it sends on, what it did, its decision on given bytes, and the contract
 * its records keep with ffi/lane_records.ts, checked when the shim loads.
 */
import { cstr } from "./c_text.ts";
import { check } from "./errors.ts";
import {
  contractMismatch,
  EVENT_LAYOUT,
  type ExpressEvent,
  LANE_TABLE_LIMITS,
  readExpressEvent,
} from "./lane_records.ts";

export const LANE_SYMBOLS = {
  // int pm_express_table(char *text)
  pm_express_table: { parameters: ["buffer"], result: "i32" },
  // int pm_express_listen(int listener_fd)
  pm_express_listen: { parameters: ["i32"], result: "i32" },
  // int pm_express_stop(int listener_fd)
  pm_express_stop: { parameters: ["i32"], result: "i32" },
  // int pm_express_pass_all(int listener_fd, int on)
  pm_express_pass_all: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_express_waiting(void)
  pm_express_waiting: { parameters: [], result: "i32" },
  // double pm_express_age_ms(int fd)
  pm_express_age_ms: { parameters: ["i32"], result: "f64" },
  // int pm_express_channels(int id, int32_t *pairs, int n)
  pm_express_channels: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  // int pm_express_next_instance(int id)
  pm_express_next_instance: { parameters: ["i32"], result: "i32" },
  // int pm_express_events(uint8_t *out, int max, int32_t *dropped)
  pm_express_events: { parameters: ["buffer", "i32", "buffer"], result: "i32" },
  // int pm_express_event_size(void)
  pm_express_event_size: { parameters: [], result: "i32" },
  // int pm_express_event_layout(int32_t *out, int max)
  pm_express_event_layout: { parameters: ["buffer", "i32"], result: "i32" },
  // int pm_express_table_limits(int32_t *out, int max)
  pm_express_table_limits: { parameters: ["buffer", "i32"], result: "i32" },
  // int pm_express_decide(char *table, uint8_t *bytes, int n, struct event *out)
  pm_express_decide: { parameters: ["buffer", "buffer", "i32", "buffer"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;
type C = Deno.DynamicLibrary<typeof LANE_SYMBOLS>["symbols"];

/** Where the lane's records in C differ from ffi/lane_records.ts (its event
 * record, its table's limits), each as "what: how"; empty when they agree. */
export function laneContractMismatches(c: C): string[] {
  const numbers = (read: (out: Int32Array, max: number) => number) => {
    const out = new Int32Array(32);
    return [...out.subarray(0, Math.max(read(out, out.length), 0))];
  };
  return [
    ["its event record", contractMismatch(EVENT_LAYOUT, numbers(c.pm_express_event_layout))],
    [
      "its table's limits",
      contractMismatch(LANE_TABLE_LIMITS, numbers(c.pm_express_table_limits)),
    ],
  ].flatMap(([what, w]) => w === null ? [] : [`${what}: ${w}`]);
}

/** shim.lane: the express lane; each method throws ShimError on failure. */
export class Lane {
  readonly #c: C;
  #events = new Uint8Array(0);
  /** sizeof(struct event), asked once. */
  #eventSize: number | null = null;
  readonly #dropped = new Int32Array(1);

  constructor(symbols: C) {
    this.#c = symbols;
  }

  /** Installs the express lane's routing table (src/route/express_lane.ts writes
   * it); the lane's thread starts with the first. */
  table(text: string): void {
    check("express_table", this.#c.pm_express_table(cstr(text)));
  }

  /** Lets the express lane accept the runtime's listener's connections
   * (needs the shim preloaded). */
  listen(listenerFd: number): void {
    check("express_listen", this.#c.pm_express_listen(listenerFd));
  }

  /** Stops the lane accepting on the listener; returns how many
   * connections it still holds for it (call until 0). */
  stop(listenerFd: number): number {
    return check("express_stop", this.#c.pm_express_stop(listenerFd));
  }

  /** on: the lane passes every connection of the listener to the daemon. */
  passAll(listenerFd: number, on: boolean): void {
    check("express_pass_all", this.#c.pm_express_pass_all(listenerFd, on ? 1 : 0));
  }

  /** Connections waiting for their first bytes in the express lane. */
  waiting(): number {
    return this.#c.pm_express_waiting();
  }

  /** For a connection the lane passed on: ms since the lane accepted it;
   * null for any other fd. */
  ageMs(fd: number): number | null {
    const age = this.#c.pm_express_age_ms(fd);
    return age < 0 ? null : age;
  }

  /** The channels the lane may send on for service id: [fd, instance]. */
  channels(id: number, channels: readonly (readonly [number, number])[]): void {
    const pairs = new Int32Array(channels.flat());
    check("express_channels", this.#c.pm_express_channels(id, pairs, channels.length));
  }

  /** The instance the lane sends to next for this service id (-1: none). */
  nextInstance(id: number): number {
    return this.#c.pm_express_next_instance(id);
  }

  /** What the lane did since the last call (at most max connections), and
   * how many events were lost to a full ring. */
  events(max = 1024): { events: ExpressEvent[]; dropped: number } {
    const size = this.#eventSize ??= this.#c.pm_express_event_size();
    if (this.#events.length < size * max) this.#events = new Uint8Array(size * max);
    const n = this.#c.pm_express_events(this.#events, max, this.#dropped);
    const view = new DataView(this.#events.buffer);
    const events: ExpressEvent[] = [];
    for (let i = 0; i < n; i++) events.push(readExpressEvent(this.#events, view, i * size));
    return { events, dropped: this.#dropped[0]! };
  }

  /** The lane's decision on bytes, for tests: the route index, "more", or
   * "daemon" (the lane would pass it on); the SNI and ALPN it read; the
   * index of the site an https route picks (null for another action). */
  decide(table: string, bytes: Uint8Array<ArrayBuffer>): {
    route: number | "more" | "daemon";
    sni: string;
    alpn: string[];
    site: number | null;
  } {
    const size = this.#eventSize ??= this.#c.pm_express_event_size();
    const out = new Uint8Array(size);
    const route = this.#c.pm_express_decide(cstr(table), bytes, bytes.length, out);
    if (route < -3) check("express_decide", route);
    const { tls, target } = readExpressEvent(out, new DataView(out.buffer), 0);
    return {
      route: route >= 0 ? route : route === -2 ? "more" : "daemon",
      sni: tls?.sni ?? "",
      alpn: tls?.alpn ?? [],
      site: target >= 0 ? target : null,
    };
  }
}
