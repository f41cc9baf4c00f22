/**
 * Bindings for the preread waiter (c/portmux_shim.c): an epoll set of
 * connections waiting for their first bytes (src/accept/preread.ts).
 */
import { check } from "./errors.ts";

export const WAITER_SYMBOLS = {
  // int pm_waiter_create(void)
  pm_waiter_create: { parameters: [], result: "i32" },
  // int pm_waiter_add(int ep, int fd)
  pm_waiter_add: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_waiter_del(int ep, int fd)
  pm_waiter_del: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_waiter_wait(int ep, int32_t *out, int max, int timeout_ms): blocks
  pm_waiter_wait: { parameters: ["i32", "buffer", "i32", "i32"], result: "i32", nonblocking: true },
} as const satisfies Deno.ForeignLibraryInterface;
type C = Deno.DynamicLibrary<typeof WAITER_SYMBOLS>["symbols"];

/** A readiness report from the waiter: the fd, and whether the peer has
 * closed its side (EPOLLRDHUP/EPOLLHUP/EPOLLERR). */
export interface Readiness {
  fd: number;
  hangup: boolean;
}

/** The (fd, hangup) pairs pm_waiter_wait wrote. */
function readiness(n: number, out: Int32Array): Readiness[] {
  const ready: Readiness[] = [];
  for (let i = 0; i < n; i++) ready.push({ fd: out[2 * i]!, hangup: out[2 * i + 1] !== 0 });
  return ready;
}

/** shim.waiter: the preread waiter; each method throws ShimError on
 * failure. */
export class Waiter {
  readonly #c: C;

  constructor(symbols: C) {
    this.#c = symbols;
  }

  create(): number {
    return check("waiter_create", this.#c.pm_waiter_create());
  }

  add(ep: number, fd: number): void {
    check("waiter_add", this.#c.pm_waiter_add(ep, fd));
  }

  remove(ep: number, fd: number): void {
    check("waiter_del", this.#c.pm_waiter_del(ep, fd));
  }

  /** Waits up to timeoutMs for connections with new bytes or a hangup. */
  async wait(ep: number, out: Int32Array<ArrayBuffer>, timeoutMs: number): Promise<Readiness[]> {
    const n = await this.#c.pm_waiter_wait(ep, out, out.length / 2, timeoutMs);
    return readiness(check("waiter_wait", n), out);
  }
}
