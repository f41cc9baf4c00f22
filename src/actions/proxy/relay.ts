/**
 * Copying bytes between two sockets, both ways, half-close kept: the HTTPS
 * bridge and the proxy action. The copy runs in the shim's relay thread
 * (c/relay.c), so no byte crosses into JavaScript; here, one loop waits for
 * relays to end (while any runs) and settles their promises.
 */
import type { RelayEnd, Shim } from "../../../ffi/shim.ts";
import { connFd, detach } from "../../accept/conn_fd.ts";

const REPORTS = 256;
/** How long one wait for ends may block a thread of the runtime's pool. */
const WAIT_MS = 1000;
const GATHER_MS = 5;

const waiting = new Map<number, (end: RelayEnd) => void>();
let watching: Promise<void> | null = null;

/** Copies a to b and b to a until both directions ended, then closes both
 * (an error on either closes both at once). The relay owns a and b from
 * here, whatever happens; the promise ends with it. */
export function relay(shim: Shim, a: number, b: number): Promise<RelayEnd> {
  try {
    return ended(shim, shim.relay.start(a, b));
  } catch (e) {
    shim.fds.close(a);
    shim.fds.close(b);
    return Promise.reject(e);
  }
}

/** The same, to a new connection to 127.0.0.1:port that the shim makes;
 * localPort is that connection's own port. The relay owns a from here,
 * whatever happens (if it cannot start, a is closed and this throws). */
export function relayToLoopback(
  shim: Shim,
  a: number,
  port: number,
): { localPort: number; ended: Promise<RelayEnd> } {
  let started: { id: number; localPort: number };
  try {
    started = shim.relay.toLoopback(a, port);
  } catch (e) {
    shim.fds.close(a);
    throw e;
  }
  return { localPort: started.localPort, ended: ended(shim, started.id) };
}

function ended(shim: Shim, id: number): Promise<RelayEnd> {
  const end = new Promise<RelayEnd>((resolve) => waiting.set(id, resolve));
  watching ??= watch(shim);
  return end;
}

async function watch(shim: Shim): Promise<void> {
  const out = new BigInt64Array(4 * REPORTS);
  try {
    while (waiting.size > 0) {
      const ends = await shim.relay.wait(out, WAIT_MS);
      for (const end of ends) {
        waiting.get(end.id)?.(end);
        waiting.delete(end.id);
      }
      // Under load, let ends gather: one call of the runtime's thread pool
      // per batch, not per relay.
      if (ends.length > 0) await new Promise((r) => setTimeout(r, GATHER_MS));
    }
  } finally {
    watching = null;
  }
}

/** Takes a connection Deno made (an upstream) out of Deno's hands, for a
 * relay: its fd, verified, and the TcpConn closed without a FIN. If this
 * throws, conn was closed. */
export function detachConn(shim: Shim, conn: Deno.TcpConn): number {
  let fd: number;
  try {
    fd = connFd(shim, conn).fd;
  } catch (e) {
    conn.close();
    throw e;
  }
  return detach(shim, conn, fd);
}
