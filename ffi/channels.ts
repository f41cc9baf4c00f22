/**
 * Bindings for channels, the Unix sockets clients are handed off on: the
 * daemon's side opens them and sends (c/channel_send.c: a copy of each
 * client kept until read), a service's side listens, accepts and receives
 * (c/portmux_shim.c).
 */
import { cstr } from "./c_text.ts";
import { check } from "./errors.ts";

export const CHANNEL_SYMBOLS = {
  // int pm_channel_open(char *path, int uid, int gid, int pid)
  pm_channel_open: { parameters: ["buffer", "i32", "i32", "i32"], result: "i32" },
  // int pm_channel_send(int chan, int fd, uint8_t *payload, int len)
  pm_channel_send: { parameters: ["i32", "i32", "buffer", "i32"], result: "i32" },
  // int pm_unread(int chan)
  pm_unread: { parameters: ["i32"], result: "i32" },
  // int pm_channel_queued(int chan)
  pm_channel_queued: { parameters: ["i32"], result: "i32" },
  // int pm_channel_close(int chan, int cut)
  pm_channel_close: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_unix_listen(char *path, int backlog)
  pm_unix_listen: { parameters: ["buffer", "i32"], result: "i32" },
  // int pm_accept(int fd): blocks
  pm_accept: { parameters: ["i32"], result: "i32", nonblocking: true },
  // int pm_channel_recv(int sock, uint8_t *buf, int len, int32_t *fds, int max_fds, int32_t *info)
  pm_channel_recv: {
    parameters: ["i32", "buffer", "i32", "buffer", "i32", "buffer"],
    result: "i32",
  },
  // int pm_peer_cred(int sock, int32_t *out)
  pm_peer_cred: { parameters: ["i32", "buffer"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;
type C = Deno.DynamicLibrary<typeof CHANNEL_SYMBOLS>["symbols"];

/** shim.channels: handoff channels, both sides; each method throws
 * ShimError on failure. */
export class Channels {
  readonly #c: C;

  constructor(symbols: C) {
    this.#c = symbols;
  }

  /** Opens a channel to the service listening at path, whose process must
   * have this uid, gid and pid (-1: any). EPERM: a foreign listener. */
  open(path: string, peer: { uid: number; gid: number; pid: number }): number {
    return check("channel_open", this.#c.pm_channel_open(cstr(path), peer.uid, peer.gid, peer.pid));
  }

  /** Sends payload with fd attached (fd -1: bytes only) without waiting;
   * returns the bytes sent, 0 if the channel is full (nothing sent). A
   * copy of fd is kept until the service reads it (c/channel_send.c). */
  send(chan: number, fd: number, payload: Uint8Array<ArrayBuffer>): number {
    const n = this.#c.pm_channel_send(chan, fd, payload, payload.length);
    return n === -11 ? 0 : check("channel_send", n);
  }

  /** What the channel's peer has not read yet (SIOCOUTQ): the kernel's
   * memory for the unread messages (768 for a record up to 192 bytes). */
  unread(chan: number): number {
    return check("unread", this.#c.pm_unread(chan));
  }

  /** How many clients sent on the channel its service has not read yet. */
  queued(chan: number): number {
    return check("channel_queued", this.#c.pm_channel_queued(chan));
  }

  /** Closes a channel; returns how many clients on it were unread. With
   * cut, those are shut down (they end); without, they stay the service's. */
  close(chan: number, cut: boolean): number {
    return check("channel_close", this.#c.pm_channel_close(chan, cut ? 1 : 0));
  }

  /** A service's socket at path (mode 0600) for channels to connect to. */
  listen(path: string, backlog = 512): number {
    return check("unix_listen", this.#c.pm_unix_listen(cstr(path), backlog));
  }

  /** Waits for the next channel on a listen() socket; returns its fd. */
  async accept(fd: number): Promise<number> {
    return check("accept", await this.#c.pm_accept(fd));
  }

  /** Receives what is there without waiting; null if nothing is. count 0
   * means end of stream; truncated means fds were lost (MSG_CTRUNC). */
  recv(
    sock: number,
    buf: Uint8Array<ArrayBuffer>,
    fds: Int32Array<ArrayBuffer>,
  ): { count: number; fds: number[]; truncated: boolean } | null {
    const info = new Int32Array(2);
    const n = this.#c.pm_channel_recv(sock, buf, buf.length, fds, fds.length, info);
    if (n === -11) return null;
    check("channel_recv", n);
    return { count: n, fds: [...fds.subarray(0, info[0]!)], truncated: info[1] === 1 };
  }

  /** pid, uid and gid of the process at the other end of a Unix socket. */
  peerCred(sock: number): { pid: number; uid: number; gid: number } {
    const out = new Int32Array(3);
    check("peer_cred", this.#c.pm_peer_cred(sock, out));
    return { pid: out[0]!, uid: out[1]!, gid: out[2]! };
  }
}
