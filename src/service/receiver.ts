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
import { decodeRecord, type HandoffRecord } from "../actions/handoff/record.ts";
import { RecordAssembler } from "./record_assembly.ts";

export interface ReceivedConnection {
  readonly record: HandoffRecord;
  /** The client's connection as a node:net Socket (reads start at the
   * client's first byte); the service owns it. */
  adopt(): net.Socket;
}

export interface ReceiverOptions {
  /** Only accept channels from a process of this uid (default: our own). */
  readonly senderUid?: number;
  /** Told about each record or channel that could not be used. */
  readonly onProblem?: (message: string) => void;
}

export interface HandoffReceiver {
  /** The private loopback port whose accept the shim feeds (it refuses
   * anyone who connects to it); null without the shim preloaded. */
  readonly port: number | null;
  /** Stops receiving; connections already given out stay open. */
  close(): Promise<void>;
}

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
  const unixFd = listenAt(shim, path);
  const ours = Deno.lstatSync(path).ino;
  const senderUid = opts.senderUid ?? Deno.uid() ?? -1;
  const problem = opts.onProblem ?? (() => {});
  let receiver: HandoffReceiver;
  try {
    receiver = shim.interposerActive()
      ? await acceptInRuntime(shim, unixFd, senderUid, onConnection, problem)
      : readInJavaScript(shim, unixFd, senderUid, onConnection, problem);
  } catch (e) {
    shim.close(unixFd);
    removeIfOurs(path, ours);
    throw e;
  }
  return {
    port: receiver.port,
    close() {
      removeIfOurs(path, ours); // at once: a caller about to exit need not wait
      return receiver.close();
    },
  };
}

function listenAt(shim: Shim, path: string): number {
  try {
    return shim.unixListen(path);
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

/** The preloaded way: a private server whose accept the shim feeds. */
async function acceptInRuntime(
  shim: Shim,
  unixFd: number,
  senderUid: number,
  onConnection: (connection: ReceivedConnection) => void,
  problem: (message: string) => void,
): Promise<HandoffReceiver> {
  let listener = -1;
  const server = net.createServer((socket) => {
    const text = shim.receiverTake(listener, socket.remotePort ?? 0);
    let record: HandoffRecord | null = null;
    try {
      if (text === null) throw new Error("a connection came without its record");
      record = decodeRecord(text);
    } catch (e) {
      problem(`handoff dropped: ${(e as Error).message}`);
      socket.destroy();
      return;
    }
    onConnection({ record, adopt: () => socket });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const port = (server.address() as net.AddressInfo).port;
  try {
    listener = shim.receiverOpen(port, unixFd, senderUid);
  } catch (e) {
    server.close();
    throw e;
  }
  const tell = () => shim.receiverProblems(listener).forEach(problem);
  const timer = setInterval(tell, PROBLEMS_MS);
  Deno.unrefTimer(timer);
  return {
    port,
    async close() {
      clearInterval(timer);
      tell();
      shim.receiverClose(listener); // closes the Unix socket and the channels
      await new Promise((r) => server.close(r));
    },
  };
}

/** The way without the preloaded shim: JavaScript reads the channels. */
function readInJavaScript(
  shim: Shim,
  unixFd: number,
  senderUid: number,
  onConnection: (connection: ReceivedConnection) => void,
  problem: (message: string) => void,
): HandoffReceiver {
  let closed = false;
  const channels = new Set<number>();
  const deliver = (fd: number, record: HandoffRecord) =>
    onConnection({ record, adopt: () => new net.Socket({ fd, readable: true, writable: true }) });
  const takeChannel = (channel: number) => {
    const peer = shim.peerCred(channel);
    if (senderUid >= 0 && peer.uid !== senderUid) {
      problem(`refused a channel from uid ${peer.uid} (pid ${peer.pid})`);
      shim.close(channel); // only the daemon's user may hand us sockets
      return;
    }
    channels.add(channel);
    readChannel(shim, channel, deliver, problem)
      .catch((e) => problem(String(e)))
      .finally(() => channels.delete(channel));
  };
  (async () => {
    try {
      while (!closed) takeChannel(await shim.accept(unixFd));
    } finally {
      shim.close(unixFd);
    }
  })().catch((e) => closed || problem(`accepting channels stopped: ${e}`));
  return {
    port: null,
    close() {
      closed = true;
      // The pending accept and every channel's reader return, and close.
      shim.shutdown(unixFd);
      for (const channel of channels) shim.shutdown(channel);
      return Promise.resolve();
    },
  };
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
  try {
    for (;;) {
      const got = shim.channelRecv(channel, buf, fds);
      if (got === null) {
        await shim.waitReadable(channel, WAIT_MS);
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
    for (const fd of records.leftoverFds()) shim.close(fd); // never leak an fd
    shim.close(channel);
  }
}
