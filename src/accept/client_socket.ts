/**
 * The client sockets the daemon works on, accepted one of two ways:
 *
 * - by Deno (a TcpConn, its fd verified): the first connection of a burst,
 *   since awaiting Deno's accept is how the daemon learns that one came;
 * - by the shim (a bare fd): the rest of the burst, taken at once from the
 *   same listener. These skip what a TcpConn costs and what detaching it
 *   costs later (a Deno resource, its epoll registration, the placeholder
 *   dance, the close), and their fd needs no verification: the shim
 *   accepted it itself.
 *
 * Both kinds offer the same operations, so the actions do not care.
 */
import type { AcceptedSocket, Shim } from "../../ffi/shim.ts";
import { detach } from "./conn_fd.ts";

export interface ClientSocket {
  readonly fd: number;
  readonly remoteAddr: Deno.NetAddr;
  readonly localAddr: Deno.NetAddr;
  /** Who accepted it. */
  readonly acceptedBy: "deno" | "shim";
  /** Closes it: the client sees the connection end. */
  close(): void;
  /** Gives the socket away: returns an fd the caller owns, and lets go of
   * ours without a FIN reaching the client. If it throws, the socket was
   * closed. */
  detach(): number;
  /** After its fd was sent to a service (which holds its own copy): lets
   * go of ours without a FIN. */
  release(): void;
}

const tcp = (at: { hostname: string; port: number }): Deno.NetAddr => ({
  transport: "tcp",
  hostname: at.hostname,
  port: at.port,
});

export class DenoClient implements ClientSocket {
  readonly acceptedBy = "deno";
  readonly #shim: Shim;

  /** fd: conn's verified fd. */
  constructor(readonly conn: Deno.TcpConn, readonly fd: number, shim: Shim) {
    this.#shim = shim;
  }

  get remoteAddr(): Deno.NetAddr {
    return this.conn.remoteAddr;
  }

  get localAddr(): Deno.NetAddr {
    return this.conn.localAddr;
  }

  close(): void {
    this.conn.close();
  }

  detach(): number {
    return detach(this.#shim, this.conn, this.fd);
  }

  release(): void {
    // Deno's close shuts the socket down; it must hit a placeholder, not
    // the client's socket (docs/design.md R2).
    this.#shim.fds.release(this.fd);
    this.conn.close();
  }
}

export class ShimClient implements ClientSocket {
  readonly acceptedBy = "shim";
  readonly fd: number;
  readonly remoteAddr: Deno.NetAddr;
  readonly localAddr: Deno.NetAddr;
  readonly #shim: Shim;

  constructor(accepted: AcceptedSocket, shim: Shim) {
    this.fd = accepted.fd;
    this.remoteAddr = tcp(accepted.remote);
    this.localAddr = tcp(accepted.local);
    this.#shim = shim;
  }

  close(): void {
    this.#shim.fds.close(this.fd);
  }

  detach(): number {
    return this.fd; // nobody else holds it
  }

  release(): void {
    this.#shim.fds.close(this.fd); // the service's copy keeps the connection open
  }
}
