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
import type { AcceptedSocket, Shim } from "../ffi/shim.ts";
import { detach, internalFd } from "./conn_fd.ts";

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
  letGo(): void;
  /** The socket as a Deno.TcpConn, to copy bytes (proxy action). */
  toConn(): Promise<Deno.TcpConn>;
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

  letGo(): void {
    // Deno's close shuts the socket down; it must hit a placeholder, not
    // the client's socket (DESIGN.md fact 2).
    this.#shim.release(this.fd);
    this.conn.close();
  }

  toConn(): Promise<Deno.TcpConn> {
    return Promise.resolve(this.conn);
  }
}

export class ShimClient implements ClientSocket {
  readonly acceptedBy = "shim";
  readonly fd: number;
  readonly remoteAddr: Deno.NetAddr;
  readonly localAddr: Deno.NetAddr;
  readonly #shim: Shim;
  readonly #adopter: () => ConnAdopter;

  /** adopter: the daemon's, made when first needed. */
  constructor(accepted: AcceptedSocket, shim: Shim, adopter: () => ConnAdopter) {
    this.fd = accepted.fd;
    this.remoteAddr = tcp(accepted.remote);
    this.localAddr = tcp(accepted.local);
    this.#shim = shim;
    this.#adopter = adopter;
  }

  close(): void {
    this.#shim.close(this.fd);
  }

  detach(): number {
    return this.fd; // nobody else holds it
  }

  letGo(): void {
    this.#shim.close(this.fd); // the service's copy keeps the connection open
  }

  toConn(): Promise<Deno.TcpConn> {
    return this.#adopter().adopt(this.fd);
  }
}

/**
 * Turns bare sockets into Deno.TcpConn objects: a private loopback
 * listener whose accept4 the shim feeds with them (the injection HTTPS
 * uses, DESIGN.md fact 4). Strangers connecting to it are dropped by the
 * shim.
 */
const ADOPT_TIMEOUT_MS = 5000;

export class ConnAdopter {
  readonly #shim: Shim;
  readonly #listener: Deno.TcpListener;
  readonly #listenerFd: number;
  /** By fd: who waits for that socket as a TcpConn. */
  readonly #waiting = new Map<number, (conn: Deno.TcpConn) => void>();

  constructor(shim: Shim) {
    this.#shim = shim;
    this.#listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.#listenerFd = shim.injectRegister(this.#listener.addr.port);
    this.#acceptLoop();
  }

  /** fd as a TcpConn; the TcpConn owns it from then on. If this throws, fd
   * was closed, or will be when the listener hands it out. */
  adopt(fd: number): Promise<Deno.TcpConn> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        // Never seen: a socket handed out later finds nobody waiting and is closed.
        this.#waiting.delete(fd);
        reject(new Error(`the socket was not adopted within ${ADOPT_TIMEOUT_MS} ms`));
      }, ADOPT_TIMEOUT_MS);
      this.#waiting.set(fd, (conn) => {
        clearTimeout(timer);
        resolve(conn);
      });
      try {
        this.#shim.injectPush(this.#listenerFd, fd);
      } catch (e) {
        clearTimeout(timer);
        this.#waiting.delete(fd);
        this.#shim.close(fd);
        reject(e);
      }
    });
  }

  async #acceptLoop(): Promise<void> {
    try {
      for await (const conn of this.#listener) {
        // The shim hands out the very fd it was given.
        const fd = internalFd(conn);
        const take = fd === undefined ? undefined : this.#waiting.get(fd);
        if (!take) {
          conn.close();
          continue;
        }
        this.#waiting.delete(fd!);
        take(conn);
      }
    } catch { /* closed by stop() */ }
  }

  /** Stops adopting (call when no connection is being accepted any more). */
  stop(): void {
    this.#shim.injectUnregister(this.#listenerFd);
    try {
      this.#listener.close();
    } catch { /* closed */ }
  }
}
