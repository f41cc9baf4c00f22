/**
 * Waiting for an fd that Deno does not own (an epoll set, a Unix channel)
 * without a thread hop. A nonblocking FFI call blocks a pool thread, which
 * then wakes the event loop: two wake-ups per wait. Here the event loop
 * sees the fd itself: a private loopback listener has the fd added to the
 * runtime's epoll set under its token, and the preloaded shim makes its
 * accept fail with ECONNABORTED while the fd is readable (c/portmux_shim.c,
 * "readiness signals"). The rejected accept() is the signal.
 *
 * Needs the shim preloaded (src/launch.ts does it); open() returns null
 * without it, and the caller waits with a nonblocking FFI call instead.
 */
import type { Shim } from "../ffi/shim.ts";

const RETRY_MS = 100;

export class ReadySignal {
  readonly #shim: Shim;
  readonly #listener: Deno.TcpListener;
  readonly #fd: number;
  #closed = false;

  private constructor(shim: Shim, listener: Deno.TcpListener, fd: number) {
    this.#shim = shim;
    this.#listener = listener;
    this.#fd = fd;
  }

  /** A signal for watched; null when the shim is not preloaded. Throws
   * when it is but the signal cannot be set up (never a silent fallback). */
  static open(shim: Shim, watched: number): ReadySignal | null {
    if (!shim.interposerActive()) return null;
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    try {
      return new ReadySignal(shim, listener, shim.signalRegister(listener.addr.port, watched));
    } catch (e) {
      listener.close();
      throw e;
    }
  }

  /** Resolves true when the watched fd is readable (at once if it is
   * already), false once the signal is closed. */
  async readable(): Promise<boolean> {
    while (!this.#closed) {
      try {
        (await this.#listener.accept()).close(); // a stranger: nothing is served here
      } catch (e) {
        if (e instanceof Deno.errors.ConnectionAborted) return true;
        // Out of fds for a stranger, say: the signal is checked again first.
        if (!this.#closed) await new Promise((r) => setTimeout(r, RETRY_MS));
      }
    }
    return false;
  }

  /** Stops signalling (call before the watched fd is closed); a pending
   * readable() resolves false. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#shim.signalUnregister(this.#fd);
    this.#listener.close();
  }
}
