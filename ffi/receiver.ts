/**
 * Bindings for the handoff receiver (c/handoff_receiver.c), used by
 * src/service/receiver.ts: with the shim preloaded, a service's loopback
 * listener accepts the clients handed off to it, each with its record.
 */
import { check } from "./errors.ts";

export const RECEIVER_SYMBOLS = {
  // int pm_receiver_open(int port, int unix_fd, int sender_uid)
  pm_receiver_open: { parameters: ["i32", "i32", "i32"], result: "i32" },
  // int pm_receiver_take(int listener, int remote_port, char *out, int cap)
  pm_receiver_take: { parameters: ["i32", "i32", "buffer", "i32"], result: "i32" },
  // int pm_receiver_problems(int listener, char *out, int cap)
  pm_receiver_problems: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  // int pm_receiver_close(int listener)
  pm_receiver_close: { parameters: ["i32"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;
type C = Deno.DynamicLibrary<typeof RECEIVER_SYMBOLS>["symbols"];

/** shim.receiver: each method throws ShimError on failure. */
export class Receiver {
  readonly #c: C;
  readonly #record = new Uint8Array(64 * 1024);
  readonly #decoder = new TextDecoder();

  constructor(symbols: C) {
    this.#c = symbols;
  }

  /** Makes our listener on 127.0.0.1:port accept the clients handed off on
   * the channels that connect to unixFd (which it now owns), from processes
   * of senderUid (-1: anyone). Needs the shim preloaded
   * (c/handoff_receiver.c). Returns the listener's fd. */
  open(port: number, unixFd: number, senderUid: number): number {
    return check("receiver_open", this.#c.pm_receiver_open(port, unixFd, senderUid));
  }

  /** The record of a client the receiver's listener just accepted, by the
   * client's port; null if it has none. */
  take(listener: number, remotePort: number): string | null {
    const n = this.#c.pm_receiver_take(listener, remotePort, this.#record, this.#record.length);
    if (n === -2) return null; // ENOENT
    return this.#decoder.decode(this.#record.subarray(0, check("receiver_take", n)));
  }

  /** What went wrong in the receiver since the last call. */
  problems(listener: number): string[] {
    const n = check(
      "receiver_problems",
      this.#c.pm_receiver_problems(listener, this.#record, this.#record.length),
    );
    return n === 0 ? [] : this.#decoder.decode(this.#record.subarray(0, n)).trimEnd().split("\n");
  }

  /** Stops the receiver (before its listener is closed). */
  close(listener: number): void {
    check("receiver_close", this.#c.pm_receiver_close(listener));
  }
}
