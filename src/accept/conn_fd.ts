/**
 * The OS fd behind an accepted Deno.TcpConn. Deno keeps it in an own symbol
 * property described as "Deno.internal.fd" (docs/design.md R1). That is an
 * internal detail, so the fd is always verified against the connection's
 * addresses before use, and found by its 4-tuple when the symbol is gone or
 * wrong: handing out the wrong fd would give another client's connection
 * to a service.
 */
import type { Shim } from "../../ffi/shim.ts";

export const FD_SYMBOL_DESCRIPTION = "Deno.internal.fd";

let fdSymbol: symbol | undefined; // the runtime's, found once

/** The value of the runtime's fd symbol, or undefined if Deno has none. */
export function internalFd(conn: Deno.Conn): number | undefined {
  const own = conn as unknown as Record<symbol, unknown>;
  if (fdSymbol === undefined || !(fdSymbol in own)) {
    fdSymbol = Object.getOwnPropertySymbols(conn).find((s) =>
      s.description === FD_SYMBOL_DESCRIPTION
    );
  }
  const fd = fdSymbol ? own[fdSymbol] : undefined;
  return typeof fd === "number" ? fd : undefined;
}

export interface ConnFd {
  readonly fd: number;
  /** "symbol" when the runtime's fd was verified, "lookup" for the fallback. */
  readonly via: "symbol" | "lookup";
}

/** The verified fd of conn. Throws ShimError: ENOTCONN when the client
 * reset the connection already, ENOENT if no fd matches. */
export function connFd(shim: Shim, conn: Deno.TcpConn): ConnFd {
  const local = conn.localAddr;
  const peer = conn.remoteAddr;
  const fd = internalFd(conn);
  if (fd !== undefined && shim.fds.verify(fd, local, peer)) return { fd, via: "symbol" };
  return { fd: shim.fds.find(local, peer), via: "lookup" };
}

/**
 * Takes the socket out of Deno's hands: returns a new fd for it that the
 * caller owns, and closes conn without a FIN reaching the client (the
 * runtime's shutdown+close hit a placeholder: docs/design.md R2). If this
 * throws, conn was closed normally (the client sees the connection end).
 */
export function detach(shim: Shim, conn: Deno.Conn, fd: number): number {
  let owned: number;
  try {
    owned = shim.fds.dup(fd);
  } catch (e) {
    conn.close();
    throw e;
  }
  try {
    shim.fds.release(fd);
  } catch (e) {
    shim.fds.close(owned);
    conn.close();
    throw e;
  }
  conn.close();
  return owned;
}
