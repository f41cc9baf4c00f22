/**
 * The wait for a client's first bytes. Bytes are peeked, never consumed, so
 * whoever gets the connection reads it from its first byte. A peek without
 * waiting comes first (the bytes are usually there already); otherwise the
 * connection joins one shared epoll set that one thread waits on, so an idle
 * client costs no thread (docs/design.md R8), and a timer enforces the
 * deadline.
 *
 * An idle client costs little memory: all connections peek into one shared
 * scratch buffer (a peek and the decision on it run synchronously, so no
 * other connection can overwrite it in between), and each keeps only how
 * many bytes it has shown.
 */
import { type Shim, ShimError } from "../../ffi/shim.ts";

/** Why the wait ended without more bytes to come (or to look at). */
export type PrereadFinal = "timeout" | "eof" | "peek-limit";
export type PrereadEnd = "decided" | "error" | PrereadFinal;

export interface PrereadResult<T> {
  /** What decide() returned, or null if it never settled. */
  readonly decision: T | null;
  readonly end: PrereadEnd;
  /** How many bytes had arrived (and were looked at). */
  readonly peeked: number;
  readonly error?: Error;
}

/** Called with the bytes so far (valid only during the call); returns a
 * decision, or null for "more". */
export type Decide<T> = (bytes: Uint8Array, final: PrereadFinal | null) => T | null;

const POLL_MS = 250; // how long the waiter blocks before checking for stop

export class Preread {
  readonly #shim: Shim;
  readonly #ep: number;
  #scratch: Uint8Array<ArrayBuffer>;
  readonly #waiting = new Map<number, (hangup: boolean) => void>();
  #stopped = false;
  readonly #loop: Promise<void>;

  /** maxBytes: the most any read() will ask for. */
  constructor(shim: Shim, maxBytes: number) {
    this.#shim = shim;
    this.#ep = shim.waiter.create();
    this.#scratch = new Uint8Array(maxBytes);
    this.#loop = this.#run();
  }

  /** Makes room for reads of up to maxBytes (a reload may raise it). Reads
   * under way keep the buffer they started with. */
  ensureCapacity(maxBytes: number): void {
    if (maxBytes > this.#scratch.length) this.#scratch = new Uint8Array(maxBytes);
  }

  /** Connections waiting for bytes now. */
  get waiting(): number {
    return this.#waiting.size;
  }

  async #run(): Promise<void> {
    const out = new Int32Array(2 * 256);
    while (!this.#stopped) {
      const ready = await this.#shim.waiter.wait(this.#ep, out, POLL_MS);
      for (const { fd, hangup } of ready) this.#waiting.get(fd)?.(hangup);
    }
  }

  /**
   * Peeks fd until decide() settles, the peer closes, maxBytes are there, or
   * timeoutMs passes; then asks decide() once more with final set.
   */
  read<T>(
    fd: number,
    maxBytes: number,
    timeoutMs: number,
    decide: Decide<T>,
  ): Promise<PrereadResult<T>> {
    const buf = this.#scratch.subarray(0, maxBytes);
    let peeked = 0;

    // Peeks afresh and decides; returns a result when done, null to wait.
    // With forced set (the deadline), it decides with whatever is there.
    const step = (hangup: boolean, forced: PrereadFinal | null): PrereadResult<T> | null => {
      let bytes: Uint8Array | null;
      try {
        bytes = this.#shim.fds.peek(fd, buf);
      } catch (e) {
        // A client that resets has ended its stream, like one that closes.
        if (e instanceof ShimError && e.code === "ECONNRESET") bytes = buf.subarray(0, 0);
        else return { decision: null, end: "error", peeked, error: e as Error };
      }
      const eof = bytes?.length === 0 || hangup;
      bytes ??= buf.subarray(0, 0); // nothing yet
      if (bytes.length > 0) peeked = bytes.length;
      const end: PrereadFinal | null = forced ??
        (eof ? "eof" : bytes.length >= maxBytes ? "peek-limit" : null);
      const decision = decide(bytes, end);
      if (decision !== null) return { decision, end: end ?? "decided", peeked };
      return end ? { decision: null, end, peeked } : null;
    };

    const first = step(false, null);
    if (first) return Promise.resolve(first);

    return new Promise((resolve) => {
      const finish = (result: PrereadResult<T>) => {
        clearTimeout(timer);
        this.#waiting.delete(fd);
        try {
          this.#shim.waiter.remove(this.#ep, fd);
        } catch { /* already gone with the socket */ }
        resolve(result);
      };
      const timer = setTimeout(() => finish(step(false, "timeout")!), timeoutMs);
      this.#waiting.set(fd, (hangup) => {
        const result = step(hangup, null);
        if (result) finish(result);
      });
      try {
        this.#shim.waiter.add(this.#ep, fd);
      } catch (e) {
        finish({ decision: null, end: "error", peeked, error: e as Error });
      }
    });
  }

  /** Stops the waiter thread (after at most POLL_MS). Waiting reads are left
   * to their deadlines. */
  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#loop;
    this.#shim.fds.close(this.#ep);
  }
}
