/**
 * The receiving end of a handoff, for protocol services written in Deno:
 * listens on the Unix socket and yields each client socket fd with its
 * metadata record (docs/handoff.md). Records are newline-terminated JSON;
 * the i-th fd received on a channel belongs to the i-th record, however the
 * stream splits or merges them.
 */
import { Shim } from "../ffi/shim.ts";
import { decodeRecord, type HandoffRecord } from "./handoff.ts";

export interface ReceivedConnection {
  /** The client's TCP socket; the receiver owns it. Its O_NONBLOCK flag is
   * whatever the daemon's was (DESIGN.md fact 5): set the mode you need. */
  readonly fd: number;
  readonly record: HandoffRecord;
}

export interface ReceiverOptions {
  /** Only accept channels from a process of this uid (default: our own). */
  readonly senderUid?: number;
  readonly onError?: (e: Error) => void;
}

/** Listens at path now (throws ShimError if it cannot) and returns the
 * connections as they arrive. */
export function receiveConnections(
  shim: Shim,
  path: string,
  opts: ReceiverOptions = {},
): AsyncIterable<ReceivedConnection> {
  const listener = shim.unixListen(path);
  const senderUid = opts.senderUid ?? Deno.uid() ?? -1;
  const queue: ReceivedConnection[] = [];
  let wake: (() => void) | null = null;
  const push = (c: ReceivedConnection) => {
    queue.push(c);
    wake?.();
  };
  const accepting = (async () => {
    for (;;) {
      const channel = await shim.accept(listener);
      if (senderUid >= 0 && shim.peerUid(channel) !== senderUid) {
        shim.close(channel); // only the daemon's user may hand us sockets
        continue;
      }
      readChannel(shim, channel, push).catch((e) => opts.onError?.(e));
    }
  })();
  accepting.catch((e) => opts.onError?.(e));
  return {
    async *[Symbol.asyncIterator]() {
      for (;;) {
        const next = queue.shift();
        if (next) yield next;
        else await new Promise<void>((r) => wake = r);
      }
    },
  };
}

/** Reads records and fds from one channel until it ends. */
async function readChannel(
  shim: Shim,
  channel: number,
  push: (c: ReceivedConnection) => void,
): Promise<void> {
  const buf = new Uint8Array(64 * 1024);
  const decoder = new TextDecoder();
  const fds: number[] = [];
  let text = "";
  try {
    for (;;) {
      const { count, fd } = await shim.recvFd(channel, buf);
      if (fd >= 0) fds.push(fd);
      if (count === 0) break;
      text += decoder.decode(buf.subarray(0, count), { stream: true });
      let nl: number;
      while ((nl = text.indexOf("\n")) >= 0) {
        const line = text.slice(0, nl);
        text = text.slice(nl + 1);
        const fdOfRecord = fds.shift();
        if (fdOfRecord === undefined) throw new Error("a handoff record came without its fd");
        push({ fd: fdOfRecord, record: decodeRecord(line) });
      }
    }
  } finally {
    for (const fd of fds) shim.close(fd); // fds without a record: never leak them
    shim.close(channel);
  }
}
