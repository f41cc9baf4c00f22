/**
 * The receiving end of handoffs, for protocol services written in Deno:
 * listens on the Unix socket, takes each client socket with its record
 * (docs/handoff.md), and gives the service a node:net Socket on it, as a
 * node:net server gives the connections it accepts.
 *
 *   import { serveHandoffs } from "portmux/src/service/receiver.ts";
 *   await serveHandoffs(new Shim(), "/run/my.sock", (c) => {
 *     const socket = c.adopt(); // a node:net Socket on the client's connection
 *     console.log("client", c.record.client);
 *   });
 *
 * Two ways, the same connections:
 *   - with the shim preloaded (LD_PRELOAD, as src/launch.ts and the bench
 *     run services), a private node:net server accepts the handed-off
 *     clients itself: the shim reads the channels inside the runtime's
 *     accept (c/handoff_receiver.c), so a client costs the service what a
 *     direct one does, plus a record lookup;
 *   - without it, JavaScript reads the channels (a pool thread waits), and
 *     RecordAssembler pairs records and fds.
 * Both survive split, merged and truncated control data, and a service out
 * of fds: what cannot be taken is dropped, closed, and told to onProblem.
 */
import net from "node:net";
import { type Shim, ShimError } from "../../ffi/shim.ts";
import { decodeRecord } from "../actions/handoff/record.ts";
import { RecordAssembler } from "./record_assembly.ts";
import type { HandoffReceiver, HandoffRecord, ReceivedConnection, ReceiverOptions } from "./mod.ts";

export type { HandoffReceiver, HandoffRecord, ReceivedConnection, ReceiverOptions };

const WAIT_MS = 1000;
/** How often the shim's problems are told (they are rare). */
const PROBLEMS_MS = 500;

/** Listens at path and calls onConnection with each connection handed off
 * there. A stale socket file at path is replaced; one that a running
 * service answers on is not taken from it (throws). close() removes the
 * socket file. */
export async function serveHandoffs(
  shim: Shim,
  path: string,
  onConnection: (connection: ReceivedConnection) => void,
  opts: ReceiverOptions = {},
): Promise<HandoffReceiver> {
  if (opts.senderUid !== undefined && !(Number.isInteger(opts.senderUid) && opts.senderUid >= 0)) {
    throw new TypeError(
      `senderUid must be a uid (a whole number, 0 or more), not ${opts.senderUid}`,
    );
  }
  const senderUid = opts.senderUid ?? Deno.uid() ?? -1;
  const problem = opts.onProblem ?? (() => {});
  const unixFd = listenAt(shim, path);
  const ours = Deno.lstatSync(path).ino;
  const given = new Given(onConnection);
  let receiver: HandoffReceiver;
  try {
    receiver = shim.inject.active()
      ? await acceptInRuntime(shim, unixFd, senderUid, given, problem)
      : readInJavaScript(shim, unixFd, senderUid, given, problem);
  } catch (e) {
    shim.fds.close(unixFd);
    removeIfOurs(path, ours);
    throw e;
  }
  let closing: Promise<void> | null = null;
  return {
    port: receiver.port,
    close() {
      if (closing) return closing;
      removeIfOurs(path, ours); // at once: portmux sends nothing more here
      return closing = receiver.close();
    },
  };
}

function listenAt(shim: Shim, path: string): number {
  try {
    return shim.channels.listen(path);
  } catch (e) {
    if (e instanceof ShimError && e.code === "EADDRINUSE") {
      throw new Error(
        `${path}: another service is receiving there (stop it, or choose another path)`,
      );
    }
    if (e instanceof ShimError && e.code === "EEXIST") {
      throw new Error(`${path}: exists and is not a socket`);
    }
    throw e;
  }
}

/** Removes the socket file at path unless it is another's by now. */
function removeIfOurs(path: string, ino: number | null): void {
  try {
    if (Deno.lstatSync(path).ino === ino) Deno.removeSync(path);
  } catch { /* gone already */ }
}

/** Gives connections to onConnection, and keeps those not adopted yet, so
 * that closing the receiver closes them (nothing is left open that the
 * service does not hold). */
class Given {
  readonly #onConnection: (connection: ReceivedConnection) => void;
  /** How to close each connection given but not adopted. */
  readonly #unadopted = new Set<() => void>();
  #closed = false;

  constructor(onConnection: (connection: ReceivedConnection) => void) {
    this.#onConnection = onConnection;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** One connection: open() makes its Socket (once), drop() closes it
   * unadopted. After close(), it is dropped at once. */
  give(record: HandoffRecord, open: () => net.Socket, drop: () => void): void {
    if (this.#closed) return drop();
    let socket: net.Socket | null = null;
    this.#unadopted.add(drop);
    const adopt = () => {
      if (socket) return socket;
      if (!this.#unadopted.delete(drop)) {
        throw new Error("the receiver was closed before this connection was adopted: it is closed");
      }
      return socket = open();
    };
    try {
      this.#onConnection({ record, adopt });
    } catch (e) {
      // As from a node:net server's listener: uncaught, but the channel
      // and the other clients go on, and this client is not left open.
      if (this.#unadopted.delete(drop)) drop();
      queueMicrotask(() => {
        throw e;
      });
    }
  }

  /** No more connections; those not adopted are closed. */
  close(): void {
    this.#closed = true;
    for (const drop of this.#unadopted) drop();
    this.#unadopted.clear();
  }
}

/** The preloaded way: a private server whose accept the shim feeds. */
async function acceptInRuntime(
  shim: Shim,
  unixFd: number,
  senderUid: number,
  given: Given,
  problem: (message: string) => void,
): Promise<HandoffReceiver> {
  let listener = -1;
  const server = net.createServer((socket) => {
    if (given.closed) return socket.destroy();
    const text = shim.receiver.take(listener, socket.remotePort ?? 0);
    let record: HandoffRecord | null = null;
    try {
      if (text === null) throw new Error("a connection came without its record");
      record = decodeRecord(text);
    } catch (e) {
      problem(`handoff dropped: ${(e as Error).message}`);
      socket.destroy();
      return;
    }
    // Until the service adopts it, a reset must not be an error nobody
    // listens to (that would end the service's process).
    const early = () => socket.destroy();
    socket.on("error", early);
    given.give(record, () => {
      socket.off("error", early);
      return socket;
    }, () => socket.destroy());
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const port = (server.address() as net.AddressInfo).port;
  try {
    listener = shim.receiver.open(port, unixFd, senderUid);
  } catch (e) {
    server.close();
    throw e;
  }
  const tell = () => shim.receiver.problems(listener).forEach(problem);
  const timer = setInterval(tell, PROBLEMS_MS);
  Deno.unrefTimer(timer);
  return {
    port,
    close() {
      clearInterval(timer);
      try {
        tell();
        // The Unix socket, the channels and the clients not accepted yet.
        shim.receiver.close(listener);
      } catch (e) {
        return Promise.reject(e);
      } finally {
        // Not waiting for its connections (its close callback would): the
        // adopted ones are the service's, and stay open.
        server.close();
        given.close();
      }
      return Promise.resolve();
    },
  };
}

/** The way without the preloaded shim: JavaScript reads the channels. */
function readInJavaScript(
  shim: Shim,
  unixFd: number,
  senderUid: number,
  given: Given,
  problem: (message: string) => void,
): HandoffReceiver {
  let closed = false;
  let listening = true;
  /** Open channels: each is in here exactly while its fd is open. */
  const channels = new Set<number>();
  const readers = new Set<Promise<void>>();
  const deliver = (fd: number, record: HandoffRecord) =>
    closed // onConnection itself may have closed the receiver
      ? shim.fds.close(fd)
      : given.give(
        record,
        () => new net.Socket({ fd, readable: true, writable: true }),
        () => shim.fds.close(fd),
      );
  const takeChannel = (channel: number) => {
    let peer: { uid: number; pid: number };
    try {
      if (closed) throw new Error("closing");
      peer = shim.channels.peerCred(channel);
    } catch {
      shim.fds.close(channel);
      return;
    }
    if (senderUid >= 0 && peer.uid !== senderUid) {
      problem(`refused a channel from uid ${peer.uid} (pid ${peer.pid})`);
      shim.fds.close(channel); // only the daemon's user may hand us sockets
      return;
    }
    channels.add(channel);
    const reading: Promise<void> = readChannel(
      shim,
      channel,
      channels,
      () => closed,
      deliver,
      problem,
    )
      .catch((e) => problem(String(e)))
      .finally(() => readers.delete(reading));
    readers.add(reading);
  };
  const accepting = (async () => {
    try {
      while (!closed) {
        let channel: number;
        try {
          channel = await shim.channels.accept(unixFd);
        } catch (e) {
          if (closed || !(e instanceof ShimError) || FATAL_ACCEPT.has(e.code)) throw e;
          if (e.code === "EINTR" || e.code === "ECONNABORTED") continue;
          // Out of fds, say: channels wait in the backlog meanwhile.
          problem(`accepting a channel failed (${e.code}); trying again`);
          await new Promise((r) => setTimeout(r, ACCEPT_RETRY_MS));
          continue;
        }
        takeChannel(channel);
      }
    } finally {
      listening = false;
      shim.fds.close(unixFd);
    }
  })().catch((e) => closed || problem(`accepting channels stopped: ${e}`));
  return {
    port: null,
    async close() {
      closed = true;
      // The pending accept and every channel's reader return, and close.
      if (listening) shim.fds.shutdown(unixFd);
      for (const channel of channels) shim.fds.shutdown(channel);
      await accepting;
      await Promise.all(readers);
      given.close();
    },
  };
}

/** Errors of accept() that a retry cannot mend. */
const FATAL_ACCEPT = new Set(["EBADF", "EINVAL", "ENOTSOCK", "EOPNOTSUPP"]);
const ACCEPT_RETRY_MS = 100;

/** Reads records and fds from one channel until it ends, or until the
 * receiver closes: then what was not read is dropped with the channel
 * (the kernel closes the fds still in it). */
async function readChannel(
  shim: Shim,
  channel: number,
  channels: Set<number>,
  closed: () => boolean,
  deliver: (fd: number, record: HandoffRecord) => void,
  problem: (message: string) => void,
): Promise<void> {
  const buf = new Uint8Array(64 * 1024);
  const fds = new Int32Array(16);
  const records = new RecordAssembler();
  try {
    while (!closed()) {
      const got = shim.channels.recv(channel, buf, fds);
      if (got === null) {
        await shim.fds.waitReadable(channel, WAIT_MS);
        continue;
      }
      if (got.count === 0) break; // the daemon closed the channel
      for (const r of records.push(buf.subarray(0, got.count), got.fds, got.truncated)) {
        if (r.fd !== null) deliver(r.fd, r.record);
        else {
          if (r.discard !== undefined) shim.fds.close(r.discard);
          problem(`handoff dropped: ${r.problem}`);
        }
      }
    }
  } finally {
    for (const fd of records.leftoverFds()) shim.fds.close(fd); // never leak an fd
    channels.delete(channel);
    shim.fds.close(channel);
  }
}
