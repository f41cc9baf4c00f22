/**
 * Bindings for work on any fd (c/portmux_shim.c; release in
 * c/interposer.c): peeking, finding and verifying a connection's fd,
 * dup, release, close, flags, blocking reads and writes.
 */
import { hostCstr } from "./c_text.ts";
import { check } from "./errors.ts";

/** An endpoint of a TCP connection as the shim takes it. */
export interface Endpoint {
  hostname: string;
  port: number;
}

export const FD_SYMBOLS = {
  // int pm_peek(int fd, uint8_t *buf, int len)
  pm_peek: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  // int pm_raise_nofile(void)
  pm_raise_nofile: { parameters: [], result: "i32" },
  // int pm_consume(int fd, int len)
  pm_consume: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_verify_fd(int fd, char *local_host, int local_port, char *peer_host, int peer_port)
  pm_verify_fd: { parameters: ["i32", "buffer", "i32", "buffer", "i32"], result: "i32" },
  // int pm_find_fd(char *local_host, int local_port, char *peer_host, int peer_port)
  pm_find_fd: { parameters: ["buffer", "i32", "buffer", "i32"], result: "i32" },
  // int pm_wait_readable(int fd, int timeout_ms): blocks
  pm_wait_readable: { parameters: ["i32", "i32"], result: "i32", nonblocking: true },
  // int pm_release(int fd)
  pm_release: { parameters: ["i32"], result: "i32" },
  // int pm_dup(int fd)
  pm_dup: { parameters: ["i32"], result: "i32" },
  // int pm_close(int fd)
  pm_close: { parameters: ["i32"], result: "i32" },
  // int pm_shutdown(int fd)
  pm_shutdown: { parameters: ["i32"], result: "i32" },
  // int pm_set_nonblocking(int fd, int on)
  pm_set_nonblocking: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_set_cloexec(int fd, int on)
  pm_set_cloexec: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_read(int fd, uint8_t *buf, int len): blocks
  pm_read: { parameters: ["i32", "buffer", "i32"], result: "i32", nonblocking: true },
  // int pm_write(int fd, uint8_t *buf, int len): blocks
  pm_write: { parameters: ["i32", "buffer", "i32"], result: "i32", nonblocking: true },
} as const satisfies Deno.ForeignLibraryInterface;
type C = Deno.DynamicLibrary<typeof FD_SYMBOLS>["symbols"];

/** shim.fds: any fd; each method throws ShimError on failure. */
export class Fds {
  readonly #c: C;

  constructor(symbols: C) {
    this.#c = symbols;
  }

  /** Bytes the client has sent so far, not consumed; null if none yet;
   * an empty array at end of stream. */
  peek(fd: number, buf: Uint8Array<ArrayBuffer>): Uint8Array | null {
    const n = this.#c.pm_peek(fd, buf, buf.length);
    if (n === -11) return null;
    return buf.subarray(0, check("peek", n));
  }

  /** Raises the open-fd soft limit to the hard limit; returns it. */
  raiseLimit(): number {
    return check("raise_nofile", this.#c.pm_raise_nofile());
  }

  /** Reads and discards len bytes that are known to be buffered. */
  consume(fd: number, len: number): void {
    check("consume", this.#c.pm_consume(fd, len));
  }

  /** True if fd is the TCP socket with exactly this local and peer
   * address; ShimError ENOTCONN if it is ours but the client reset it. */
  verify(fd: number, local: Endpoint, peer: Endpoint): boolean {
    return check(
      "verify_fd",
      this.#c.pm_verify_fd(
        fd,
        hostCstr(local.hostname),
        local.port,
        hostCstr(peer.hostname),
        peer.port,
      ),
    ) === 1;
  }

  /** The fd of the TCP socket with this 4-tuple (ShimError ENOENT if none). */
  find(local: Endpoint, peer: Endpoint): number {
    return check(
      "find_fd",
      this.#c.pm_find_fd(hostCstr(local.hostname), local.port, hostCstr(peer.hostname), peer.port),
    );
  }

  /** Resolves true when fd is readable, false after timeoutMs. */
  async waitReadable(fd: number, timeoutMs: number): Promise<boolean> {
    return check("wait_readable", await this.#c.pm_wait_readable(fd, timeoutMs)) === 1;
  }

  /** Detaches fd from the runtime without touching the connection (see the C
   * comment); returns how many epoll sets held it. */
  release(fd: number): number {
    return check("release", this.#c.pm_release(fd));
  }

  dup(fd: number): number {
    return check("dup", this.#c.pm_dup(fd));
  }

  close(fd: number): void {
    check("close", this.#c.pm_close(fd));
  }

  /** Shuts fd down both ways: a pending accept() or read on it returns. */
  shutdown(fd: number): void {
    check("shutdown", this.#c.pm_shutdown(fd));
  }

  setNonBlocking(fd: number, on: boolean): void {
    check("set_nonblocking", this.#c.pm_set_nonblocking(fd, on ? 1 : 0));
  }

  setCloseOnExec(fd: number, on: boolean): void {
    check("set_cloexec", this.#c.pm_set_cloexec(fd, on ? 1 : 0));
  }

  async read(fd: number, buf: Uint8Array<ArrayBuffer>): Promise<number> {
    return check("read", await this.#c.pm_read(fd, buf, buf.length));
  }

  async write(fd: number, buf: Uint8Array<ArrayBuffer>): Promise<number> {
    return check("write", await this.#c.pm_write(fd, buf, buf.length));
  }
}
