/**
 * Pairing the bytes and fds that arrive on a handoff channel into records
 * (docs/handoff.md). Pure, so every way the kernel can split, merge or
 * truncate them is tested without sockets.
 *
 * Each record is one line with one fd, sent by one sendmsg, so the fd
 * travels with the record's first byte, and a recvmsg never returns the
 * fds of two records at once. Fds therefore come in record order: the i-th
 * fd belongs to the i-th record, however the bytes are split. When control
 * data was truncated (MSG_CTRUNC: too small a buffer, or the receiver out
 * of fds), the kernel closed the fd; a "lost" marker keeps its place so
 * later records keep their own fds.
 */
import { decodeRecord, type HandoffRecord } from "../actions/handoff/record.ts";

/** A record with its fd, or a problem: a record whose fd never arrived, or
 * an fd whose record is unreadable (discard: close it). */
export type Received =
  | { readonly record: HandoffRecord; readonly fd: number }
  | {
    readonly record: HandoffRecord | null;
    readonly fd: null;
    readonly problem: string;
    readonly discard?: number;
  };

const MAX_RECORD = 64 * 1024;

export class RecordAssembler {
  readonly #decoder = new TextDecoder();
  #text = "";
  /** Dropping the rest of a record that was too long, up to its newline. */
  #skipping = false;
  /** fds (or LOST) waiting for their record, in order. */
  readonly #fds: (number | "lost")[] = [];

  /** Takes one recvmsg's worth; returns the records it completed. */
  push(bytes: Uint8Array, fds: readonly number[], truncated: boolean): Received[] {
    if (truncated && fds.length === 0) this.#fds.push("lost");
    this.#fds.push(...fds);
    this.#text += this.#decoder.decode(bytes, { stream: true });
    const out: Received[] = [];
    let nl: number;
    while ((nl = this.#text.indexOf("\n")) >= 0) {
      const line = this.#text.slice(0, nl);
      this.#text = this.#text.slice(nl + 1);
      if (this.#skipping) this.#skipping = false; // the end of the dropped record
      else out.push(this.#pair(line));
    }
    if (this.#skipping) this.#text = "";
    else if (this.#text.length > MAX_RECORD) out.push(this.#dropOverlong());
    return out;
  }

  /** A record too long to be ours: its fd goes with it (closed), and its
   * remaining bytes are skipped, so the next record keeps its own fd. */
  #dropOverlong(): Received {
    this.#text = "";
    this.#skipping = true;
    const fd = this.#fds.shift();
    const problem = "a record longer than 64 KiB: dropped";
    return typeof fd === "number"
      ? { record: null, fd: null, problem, discard: fd }
      : { record: null, fd: null, problem };
  }

  #pair(line: string): Received {
    const fd = this.#fds.shift();
    let record: HandoffRecord | null = null;
    let problem = "";
    try {
      record = decodeRecord(line);
    } catch (e) {
      problem = (e as Error).message;
    }
    if (fd === undefined) {
      return { record, fd: null, problem: problem || "a record came without an fd" };
    }
    if (fd === "lost") {
      return { record, fd: null, problem: "its fd was lost (MSG_CTRUNC: out of fds?)" };
    }
    if (!record) return { record: null, fd: null, problem, discard: fd };
    return { record, fd };
  }

  /** At end of stream: the fds that never got a record (close them). */
  leftoverFds(): number[] {
    return this.#fds.filter((f): f is number => f !== "lost");
  }
}
