/**
 * Bindings for the relay (c/relay.c): the shim's thread that copies bytes
 * both ways between two sockets, for the proxy action and the HTTPS
 * bridge.
 */
import { check, errnoName } from "./errors.ts";

export const RELAY_SYMBOLS = {
  // int pm_relay_start(int a, int b)
  pm_relay_start: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_relay_to_loopback(int a, int port, int32_t *local_port)
  pm_relay_to_loopback: { parameters: ["i32", "i32", "buffer"], result: "i32" },
  // int pm_relay_wait(int64_t *out, int max, int timeout_ms): blocks
  pm_relay_wait: { parameters: ["buffer", "i32", "i32"], result: "i32", nonblocking: true },
} as const satisfies Deno.ForeignLibraryInterface;
type C = Deno.DynamicLibrary<typeof RELAY_SYMBOLS>["symbols"];

/** How a relay ended: error null when both directions ended, else what
 * ended it early (the errno name); the bytes copied each way. */
export interface RelayEnd {
  id: number;
  error: string | null;
  aToB: number;
  bToA: number;
}

/** shim.relay: each method throws ShimError on failure. */
export class Relay {
  readonly #c: C;
  readonly #localPort = new Int32Array(1);

  constructor(symbols: C) {
    this.#c = symbols;
  }

  /** Copies a to b and b to a in the shim's relay thread (c/relay.c) until
   * both ways ended, then closes both; returns the relay's id. The relay
   * owns a and b from here on; if this throws, the caller still does. */
  start(a: number, b: number): number {
    return check("relay_start", this.#c.pm_relay_start(a, b));
  }

  /** The same, with b a new connection to 127.0.0.1:port made by the
   * shim; returns the relay's id and b's own port. The relay owns a from
   * here on; if this throws, the caller still does. */
  toLoopback(a: number, port: number): { id: number; localPort: number } {
    const id = check("relay_to_loopback", this.#c.pm_relay_to_loopback(a, port, this.#localPort));
    return { id, localPort: this.#localPort[0]! };
  }

  /** Waits up to timeoutMs for relays to end; out holds 4 numbers per
   * report. */
  async wait(out: BigInt64Array<ArrayBuffer>, timeoutMs: number): Promise<RelayEnd[]> {
    const n = check("relay_wait", await this.#c.pm_relay_wait(out, out.length / 4, timeoutMs));
    const ends: RelayEnd[] = [];
    for (let i = 0; i < n; i++) {
      const errno = Number(out[4 * i + 1]);
      ends.push({
        id: Number(out[4 * i]),
        error: errno === 0 ? null : errnoName(errno),
        aToB: Number(out[4 * i + 2]),
        bToA: Number(out[4 * i + 3]),
      });
    }
    return ends;
  }
}
