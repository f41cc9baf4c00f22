/**
 * The receiving end of handoffs, for protocol services written in Deno:
 * listens on the Unix socket, takes each client socket with its record
 * (docs/handoff.md), and yields connections that ordinary Deno/Node code
 * can read and write.
 *
 *   import { receiveConnections } from "portmux/src/service_receiver.ts";
 *   for await (const c of receiveConnections(new Shim(), "/run/my.sock")) {
 *     const socket = c.adopt(); // a node:net Socket on the client's connection
 *     console.log("client", c.record.client);
 *   }
 *
 * Per channel: one wait for readability, then every record that is there
 * is taken without waiting. With the shim preloaded (LD_PRELOAD), the
 * event loop itself waits (src/ready_signal.ts); otherwise a pool thread
 * does, which costs a thread hop per wait. Records and fds are paired by
 * RecordAssembler, which survives split, merged and truncated control
 * data.
 */
import net from "node:net";
import type { Shim } from "../ffi/shim.ts";
import type { HandoffRecord } from "./handoff.ts";
import { RecordAssembler } from "./handoff_records.ts";
import { ReadySignal } from "./ready_signal.ts";

export interface ReceivedConnection {
  /** The client's TCP socket; the receiver owns it. It is non-blocking
   * (O_NONBLOCK is shared with the sender's copy, DESIGN.md fact 5). */
  readonly fd: number;
  readonly record: HandoffRecord;
  /** The fd as a node:net Socket (reads start at the client's first byte). */
  adopt(): net.Socket;
}

export interface ReceiverOptions {
  /** Only accept channels from a process of this uid (default: our own). */
  readonly senderUid?: number;
  /** Told about each record or channel that could not be used. */
  readonly onProblem?: (message: string) => void;
}

const WAIT_MS = 1000;

/** Listens at path now (throws ShimError if it cannot) and returns the
 * connections as they arrive. */
export function receiveConnections(
  shim: Shim,
  path: string,
  opts: ReceiverOptions = {},
): AsyncIterable<ReceivedConnection> {
  const listener = shim.unixListen(path);
  const senderUid = opts.senderUid ?? Deno.uid() ?? -1;
  const problem = opts.onProblem ?? (() => {});
  const queue: ReceivedConnection[] = [];
  let wake: (() => void) | null = null;
  const deliver = (fd: number, record: HandoffRecord) => {
    queue.push({ fd, record, adopt: () => new net.Socket({ fd, readable: true, writable: true }) });
    wake?.();
  };
  (async () => {
    for await (const channel of acceptChannels(shim, listener)) {
      const peer = shim.peerCred(channel);
      if (senderUid >= 0 && peer.uid !== senderUid) {
        problem(`refused a channel from uid ${peer.uid} (pid ${peer.pid})`);
        shim.close(channel); // only the daemon's user may hand us sockets
        continue;
      }
      readChannel(shim, channel, deliver, problem).catch((e) => problem(String(e)));
    }
  })().catch((e) => problem(`accepting channels stopped: ${e}`));
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

/** The channels the daemon opens to us, as they come. */
async function* acceptChannels(shim: Shim, listener: number): AsyncGenerator<number> {
  const signal = ReadySignal.open(shim, listener);
  // With a signal, accepts must not block; without, a pool thread waits in one.
  if (signal) shim.setNonBlocking(listener, true);
  for (;;) {
    if (!signal) yield await shim.accept(listener);
    else if (await signal.readable()) {
      for (let c = shim.acceptNow(listener); c !== null; c = shim.acceptNow(listener)) yield c;
    }
  }
}

/** Reads records and fds from one channel until it ends. */
async function readChannel(
  shim: Shim,
  channel: number,
  deliver: (fd: number, record: HandoffRecord) => void,
  problem: (message: string) => void,
): Promise<void> {
  const buf = new Uint8Array(64 * 1024);
  const fds = new Int32Array(16);
  const records = new RecordAssembler();
  let signal: ReadySignal | null = null;
  try {
    signal = ReadySignal.open(shim, channel);
    for (;;) {
      const got = shim.channelRecv(channel, buf, fds);
      if (got === null) {
        if (signal) await signal.readable();
        else await shim.waitReadable(channel, WAIT_MS);
        continue;
      }
      if (got.count === 0) break; // the daemon closed the channel
      for (const r of records.push(buf.subarray(0, got.count), got.fds, got.truncated)) {
        if (r.fd !== null) deliver(r.fd, r.record);
        else {
          if (r.discard !== undefined) shim.close(r.discard);
          problem(`handoff dropped: ${r.problem}`);
        }
      }
    }
  } finally {
    signal?.close();
    for (const fd of records.leftoverFds()) shim.close(fd); // never leak an fd
    shim.close(channel);
  }
}
