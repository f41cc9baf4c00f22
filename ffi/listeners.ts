/**
 * Bindings for TCP listening sockets (c/portmux_shim.c): the ones the
 * supervisor holds, the runtime's found by address, batches accepted
 * without waiting.
 */
import { ADDR_TEXT, cText, hostCstr } from "./c_text.ts";
import { check } from "./errors.ts";
import type { Endpoint } from "./fds.ts";

export const LISTENER_SYMBOLS = {
  // int pm_tcp_listen(char *host, int port, int backlog)
  pm_tcp_listen: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  // int pm_listener_info(int fd, int32_t out[2], char addr[PM_ADDR_TEXT])
  pm_listener_info: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  // int pm_listener_refuse_new(int fd)
  pm_listener_refuse_new: { parameters: ["i32"], result: "i32" },
  // int pm_listener_fd(char *host, int port)
  pm_listener_fd: { parameters: ["buffer", "i32"], result: "i32" },
  // int pm_defer_accept(int listener_fd, int seconds)
  pm_defer_accept: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_accept_batch(int listener, uint8_t *out, int max)
  pm_accept_batch: { parameters: ["i32", "buffer", "i32"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;
type C = Deno.DynamicLibrary<typeof LISTENER_SYMBOLS>["symbols"];

/** pm_accept_batch's entry: fd, peer port, local port, then both
 * addresses as NUL-ended text of ADDR_TEXT bytes. */
const ACCEPTED_BYTES = 12 + 2 * ADDR_TEXT;

/** A connection accepted by the shim: its fd (ours to close) and addresses. */
export interface AcceptedSocket {
  readonly fd: number;
  readonly remote: Endpoint;
  readonly local: Endpoint;
}

/** shim.listeners: TCP listening sockets; each method throws ShimError on
 * failure. */
export class Listeners {
  readonly #c: C;
  /** acceptBatch's output, reused (read before the next call). */
  #accepted = new Uint8Array(0);

  constructor(symbols: C) {
    this.#c = symbols;
  }

  /** A listening socket on host:port (0: any), close-on-exec: the
   * supervisor holds it, and lets only its workers inherit it
   * (src/accept/held_listeners.ts withInherited). */
  open(host: string, port: number, backlog = 4096): number {
    return check("tcp_listen", this.#c.pm_tcp_listen(hostCstr(host), port, backlog));
  }

  /** The address of a TCP listening socket's fd; null for an fd that is
   * something else. */
  address(fd: number): Endpoint | null {
    const out = new Int32Array(2);
    const addr = new Uint8Array(ADDR_TEXT);
    const rc = this.#c.pm_listener_info(fd, out, addr);
    if (rc === -88 || rc === -9 || (rc === 0 && out[0] !== 1)) return null; // ENOTSOCK, EBADF
    check("listener_info", rc);
    return { hostname: cText(addr, 0), port: out[1]! };
  }

  /** New clients of the listening socket fd go unanswered (and are
   * refused once it closes); those queued already can still be taken. */
  refuseNew(fd: number): void {
    check("listener_refuse_new", this.#c.pm_listener_refuse_new(fd));
  }

  /** The fd of our TCP listener at this address (ShimError ENOENT if none). */
  find(at: Endpoint): number {
    return check("listener_fd", this.#c.pm_listener_fd(hostCstr(at.hostname), at.port));
  }

  /** Makes the listener hold new connections in the kernel until their
   * first bytes arrive (or about a second), or stops it. */
  deferAccept(listenerFd: number, on: boolean): void {
    check("defer_accept", this.#c.pm_defer_accept(listenerFd, on ? 1 : 0));
  }

  /** Accepts, without waiting, up to `max` connections queued on the
   * listener (non-blocking sockets). Throws ShimError when accepting fails
   * (EMFILE and the like) before any was taken. */
  acceptBatch(listenerFd: number, max: number): AcceptedSocket[] {
    const need = max * ACCEPTED_BYTES;
    if (this.#accepted.length < need) this.#accepted = new Uint8Array(need);
    const out = this.#accepted;
    const n = check("accept_batch", this.#c.pm_accept_batch(listenerFd, out, max));
    const head = new DataView(out.buffer);
    const got: AcceptedSocket[] = [];
    for (let i = 0; i < n; i++) {
      const at = i * ACCEPTED_BYTES;
      got.push({
        fd: head.getInt32(at, true),
        remote: { hostname: cText(out, at + 12), port: head.getInt32(at + 4, true) },
        local: { hostname: cText(out, at + 12 + ADDR_TEXT), port: head.getInt32(at + 8, true) },
      });
    }
    return got;
  }
}
