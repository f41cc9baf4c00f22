/**
 * Bindings for the runtime's own accept (c/interposer.c, with the shim
 * preloaded): clients injected into an internal listener's accept, and a
 * held socket taking the place of the runtime's listener.
 */
import { check, ECONNABORTED } from "./errors.ts";

export const INJECT_SYMBOLS = {
  // int pm_interposer_active(void)
  pm_interposer_active: { parameters: [], result: "i32" },
  // int pm_inject_register(int port)
  pm_inject_register: { parameters: ["i32"], result: "i32" },
  // int pm_inject_push(int listener_fd, int client_fd)
  pm_inject_push: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_inject_fail_next(int listener_fd, int errno)
  pm_inject_fail_next: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_inject_unregister(int listener_fd, int only_if_gone)
  pm_inject_unregister: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_adopt_listener(int runtime_fd, int held_fd)
  pm_adopt_listener: { parameters: ["i32", "i32"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;
type C = Deno.DynamicLibrary<typeof INJECT_SYMBOLS>["symbols"];

/** shim.inject: the runtime's accept; each method throws ShimError on
 * failure. */
export class Inject {
  readonly #c: C;

  constructor(symbols: C) {
    this.#c = symbols;
  }

  /** True when the library was preloaded, so accept injection works. */
  active(): boolean {
    return this.#c.pm_interposer_active() === 1;
  }

  /** Registers the internal listener on this loopback port; returns its fd. */
  register(port: number): number {
    return check("inject_register", this.#c.pm_inject_register(port));
  }

  /** Queues clientFd (non-blocking and close-on-exec, as every socket the
   * daemon holds) to be returned by the listener's next accept; the
   * listener owns clientFd only if this returns without throwing. */
  push(listenerFd: number, clientFd: number): void {
    check("inject_push", this.#c.pm_inject_push(listenerFd, clientFd));
  }

  /** For tests only: the runtime's next accept on the injected listener
   * fails with ECONNABORTED (src/ops/faults.ts). */
  failNext(listenerFd: number): void {
    check("inject_fail_next", this.#c.pm_inject_fail_next(listenerFd, ECONNABORTED));
  }

  /** Forgets the listener (call before it closes); closes what was queued
   * and returns how many. onlyIfGone: the runtime closed it already, so
   * its number may be a newer registration's, which is left alone. */
  unregister(listenerFd: number, onlyIfGone = false): number {
    return check("inject_unregister", this.#c.pm_inject_unregister(listenerFd, onlyIfGone ? 1 : 0));
  }

  /** Makes the runtime's listener with fd runtimeFd (a placeholder from
   * Deno.listen) accept on the socket heldFd instead (c/interposer.c).
   * The caller closes heldFd. */
  adoptListener(runtimeFd: number, heldFd: number): void {
    check("adopt_listener", this.#c.pm_adopt_listener(runtimeFd, heldFd));
  }
}
