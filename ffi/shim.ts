/**
 * Deno.dlopen bindings for the C shim (c/), and nothing else: the library's
 * path, and each C function as a method of Shim. Beside it: the symbol
 * table (symbols.ts), the one place where a C return code becomes a named
 * error (errors.ts), and the express lane's records (lane_records.ts).
 */
import { ADDR_TEXT, cText } from "./c_text.ts";
import { check, ECONNABORTED, errnoName, ShimError } from "./errors.ts";
import {
  contractMismatch,
  EVENT_LAYOUT,
  type ExpressEvent,
  LANE_TABLE_LIMITS,
  readExpressEvent,
} from "./lane_records.ts";
import { SYMBOLS } from "./symbols.ts";

export { ShimError };
export type { ExpressEvent };
export { contractMismatch, EVENT_LAYOUT, LANE_TABLE_LIMITS } from "./lane_records.ts";

/** The (fd, hangup) pairs pm_waiter_wait wrote. */
function readiness(n: number, out: Int32Array): Readiness[] {
  const ready: Readiness[] = [];
  for (let i = 0; i < n; i++) ready.push({ fd: out[2 * i]!, hangup: out[2 * i + 1] !== 0 });
  return ready;
}

const encoder = new TextEncoder();
function cstr(s: string): Uint8Array<ArrayBuffer> {
  return encoder.encode(s + "\0");
}

/** Addresses as C strings, kept: the same few (our listeners, busy clients)
 * come back on every connection. The C side only reads them. */
const hostStrings = new Map<string, Uint8Array<ArrayBuffer>>();
function hostCstr(host: string): Uint8Array<ArrayBuffer> {
  let c = hostStrings.get(host);
  if (!c) {
    if (hostStrings.size >= 4096) hostStrings.clear();
    hostStrings.set(host, c = cstr(host));
  }
  return c;
}

/** pm_accept_batch's entry: fd, peer port, local port, then both
 * addresses as NUL-ended text of ADDR_TEXT bytes. */
const ACCEPTED_BYTES = 12 + 2 * ADDR_TEXT;

/** A connection accepted by the shim: its fd (ours to close) and addresses. */
export interface AcceptedSocket {
  readonly fd: number;
  readonly remote: Endpoint;
  readonly local: Endpoint;
}

/** Where the library is: PORTMUX_SHIM, else the copy named in LD_PRELOAD
 * (so dlopen reaches the preloaded instance), else the build folder. */
export function shimPath(): string {
  const fromEnv = Deno.env.get("PORTMUX_SHIM");
  if (fromEnv) return fromEnv;
  const preloaded = (Deno.env.get("LD_PRELOAD") ?? "").split(/[: ]/)
    .find((p) => p.endsWith("/libportmux.so"));
  if (preloaded) return preloaded;
  return new URL("../build/libportmux.so", import.meta.url).pathname;
}

/** An endpoint of a TCP connection as the shim takes it. */
export interface Endpoint {
  hostname: string;
  port: number;
}

/** A readiness report from the waiter: the fd, and whether the peer has
 * closed its side (EPOLLRDHUP/EPOLLHUP/EPOLLERR). */
export interface Readiness {
  fd: number;
  hangup: boolean;
}

/** How a relay ended: error null when both directions ended, else what
 * ended it early (the errno name); the bytes copied each way. */
export interface RelayEnd {
  id: number;
  error: string | null;
  aToB: number;
  bToA: number;
}

/** The loaded shim; each method throws ShimError on failure. */
export class Shim {
  readonly #lib: Deno.DynamicLibrary<typeof SYMBOLS>;
  readonly path: string;
  /** acceptBatch's output, reused (read before the next call). */
  #accepted = new Uint8Array(0);

  constructor(path: string = shimPath()) {
    this.path = path;
    try {
      this.#lib = Deno.dlopen(path, SYMBOLS);
    } catch (e) {
      throw new Error(
        `cannot load the portmux shim at ${path} (run \`deno task build\`): ${
          (e as Error).message
        }`,
      );
    }
    const numbers = (read: (out: Int32Array, max: number) => number) => {
      const out = new Int32Array(32);
      return [...out.subarray(0, Math.max(read(out, out.length), 0))];
    };
    const symbols = this.#lib.symbols;
    const wrong = [
      [
        "its event record",
        contractMismatch(EVENT_LAYOUT, numbers(symbols.pm_express_event_layout)),
      ],
      [
        "its table's limits",
        contractMismatch(LANE_TABLE_LIMITS, numbers(symbols.pm_express_table_limits)),
      ],
    ].filter(([, w]) => w !== null);
    if (wrong.length) {
      throw new Error(
        `the shim at ${path} does not match ffi/shim.ts (${
          wrong.map(([what, w]) => `${what}: ${w}`).join("; ")
        }); rebuild it: deno task build`,
      );
    }
  }

  /** Bytes the client has sent so far, not consumed; null if none yet;
   * an empty array at end of stream. */
  peek(fd: number, buf: Uint8Array<ArrayBuffer>): Uint8Array | null {
    const n = this.#lib.symbols.pm_peek(fd, buf, buf.length);
    if (n === -11) return null;
    return buf.subarray(0, check("peek", n));
  }

  /** Raises the open-fd soft limit to the hard limit; returns it. */
  raiseNofile(): number {
    return check("raise_nofile", this.#lib.symbols.pm_raise_nofile());
  }

  /** Reads and discards len bytes that are known to be buffered. */
  consume(fd: number, len: number): void {
    check("consume", this.#lib.symbols.pm_consume(fd, len));
  }

  /** True if fd is the TCP socket with exactly this local and peer
   * address; ShimError ENOTCONN if it is ours but the client reset it. */
  verifyFd(fd: number, local: Endpoint, peer: Endpoint): boolean {
    return check(
      "verify_fd",
      this.#lib.symbols.pm_verify_fd(
        fd,
        hostCstr(local.hostname),
        local.port,
        hostCstr(peer.hostname),
        peer.port,
      ),
    ) === 1;
  }

  /** The fd of the TCP socket with this 4-tuple (ShimError ENOENT if none). */
  findFd(local: Endpoint, peer: Endpoint): number {
    return check(
      "find_fd",
      this.#lib.symbols.pm_find_fd(
        hostCstr(local.hostname),
        local.port,
        hostCstr(peer.hostname),
        peer.port,
      ),
    );
  }

  /** A listening socket on host:port (0: any), close-on-exec: the
   * supervisor holds it, and lets only its workers inherit it
   * (src/accept/held_listeners.ts withInherited). */
  tcpListen(host: string, port: number, backlog = 4096): number {
    return check("tcp_listen", this.#lib.symbols.pm_tcp_listen(hostCstr(host), port, backlog));
  }

  /** The address of a TCP listening socket's fd; null for an fd that is
   * something else. */
  listenerAddress(fd: number): Endpoint | null {
    const out = new Int32Array(2);
    const addr = new Uint8Array(ADDR_TEXT);
    const rc = this.#lib.symbols.pm_listener_info(fd, out, addr);
    if (rc === -88 || rc === -9 || (rc === 0 && out[0] !== 1)) return null; // ENOTSOCK, EBADF
    check("listener_info", rc);
    return { hostname: cText(addr, 0), port: out[1]! };
  }

  /** New clients of the listening socket fd go unanswered (and are
   * refused once it closes); those queued already can still be taken. */
  refuseNew(fd: number): void {
    check("listener_refuse_new", this.#lib.symbols.pm_listener_refuse_new(fd));
  }

  setCloseOnExec(fd: number, on: boolean): void {
    check("set_cloexec", this.#lib.symbols.pm_set_cloexec(fd, on ? 1 : 0));
  }

  /** Makes the runtime's listener with fd runtimeFd (a placeholder from
   * Deno.listen) accept on the socket heldFd instead (c/interposer.c).
   * The caller closes heldFd. */
  adoptListener(runtimeFd: number, heldFd: number): void {
    check("adopt_listener", this.#lib.symbols.pm_adopt_listener(runtimeFd, heldFd));
  }

  /** The fd of our TCP listener at this address (ShimError ENOENT if none). */
  listenerFd(at: Endpoint): number {
    return check("listener_fd", this.#lib.symbols.pm_listener_fd(hostCstr(at.hostname), at.port));
  }

  /** Accepts, without waiting, up to `max` connections queued on the
   * listener (non-blocking sockets). Throws ShimError when accepting fails
   * (EMFILE and the like) before any was taken. */
  acceptBatch(listenerFd: number, max: number): AcceptedSocket[] {
    const need = max * ACCEPTED_BYTES;
    if (this.#accepted.length < need) this.#accepted = new Uint8Array(need);
    const out = this.#accepted;
    const n = check("accept_batch", this.#lib.symbols.pm_accept_batch(listenerFd, out, max));
    const head = new DataView(out.buffer);
    const got: AcceptedSocket[] = [];
    for (let i = 0; i < n; i++) {
      const at = i * ACCEPTED_BYTES;
      got.push({
        fd: head.getInt32(at, true),
        remote: { hostname: cText(out, at + 12), port: head.getInt32(at + 4, true) },
        local: { hostname: cText(out, at + 12 + ADDR_TEXT), port: head.getInt32(at + 8, true) },
      });
    }
    return got;
  }

  /** Opens a channel to the service listening at path, whose process must
   * have this uid, gid and pid (-1: any). EPERM: a foreign listener. */
  channelOpen(path: string, peer: { uid: number; gid: number; pid: number }): number {
    return check(
      "channel_open",
      this.#lib.symbols.pm_channel_open(cstr(path), peer.uid, peer.gid, peer.pid),
    );
  }

  /** Sends payload with fd attached (fd -1: bytes only) without waiting;
   * returns the bytes sent, 0 if the channel is full (nothing sent). A
   * copy of fd is kept until the service reads it (c/channel_send.c). */
  channelSend(chan: number, fd: number, payload: Uint8Array<ArrayBuffer>): number {
    const n = this.#lib.symbols.pm_channel_send(chan, fd, payload, payload.length);
    return n === -11 ? 0 : check("channel_send", n);
  }

  /** What the channel's peer has not read yet (SIOCOUTQ): the kernel's
   * memory for the unread messages (768 for a record up to 192 bytes). */
  unread(chan: number): number {
    return check("unread", this.#lib.symbols.pm_unread(chan));
  }

  /** How many clients sent on the channel its service has not read yet. */
  channelQueued(chan: number): number {
    return check("channel_queued", this.#lib.symbols.pm_channel_queued(chan));
  }

  /** Closes a channel; returns how many clients on it were unread. With
   * cut, those are shut down (they end); without, they stay the service's. */
  channelClose(chan: number, cut: boolean): number {
    return check("channel_close", this.#lib.symbols.pm_channel_close(chan, cut ? 1 : 0));
  }

  /** Receives what is there without waiting; null if nothing is. count 0
   * means end of stream; truncated means fds were lost (MSG_CTRUNC). */
  channelRecv(
    sock: number,
    buf: Uint8Array<ArrayBuffer>,
    fds: Int32Array<ArrayBuffer>,
  ): { count: number; fds: number[]; truncated: boolean } | null {
    const info = new Int32Array(2);
    const n = this.#lib.symbols.pm_channel_recv(sock, buf, buf.length, fds, fds.length, info);
    if (n === -11) return null;
    check("channel_recv", n);
    return { count: n, fds: [...fds.subarray(0, info[0]!)], truncated: info[1] === 1 };
  }

  /** Resolves true when fd is readable, false after timeoutMs. */
  async waitReadable(fd: number, timeoutMs: number): Promise<boolean> {
    return check("wait_readable", await this.#lib.symbols.pm_wait_readable(fd, timeoutMs)) === 1;
  }

  /** pid, uid and gid of the process at the other end of a Unix socket. */
  peerCred(sock: number): { pid: number; uid: number; gid: number } {
    const out = new Int32Array(3);
    check("peer_cred", this.#lib.symbols.pm_peer_cred(sock, out));
    return { pid: out[0]!, uid: out[1]!, gid: out[2]! };
  }

  /** Detaches fd from the runtime without touching the connection (see the C
   * comment); returns how many epoll sets held it. */
  release(fd: number): number {
    return check("release", this.#lib.symbols.pm_release(fd));
  }

  dup(fd: number): number {
    return check("dup", this.#lib.symbols.pm_dup(fd));
  }

  close(fd: number): void {
    check("close", this.#lib.symbols.pm_close(fd));
  }

  /** Makes the listener hold new connections in the kernel until their
   * first bytes arrive (or about a second), or stops it. */
  deferAccept(listenerFd: number, on: boolean): void {
    check("defer_accept", this.#lib.symbols.pm_defer_accept(listenerFd, on ? 1 : 0));
  }

  /** Shuts fd down both ways: a pending accept() or read on it returns. */
  shutdown(fd: number): void {
    check("shutdown", this.#lib.symbols.pm_shutdown(fd));
  }

  setNonBlocking(fd: number, on: boolean): void {
    check("set_nonblocking", this.#lib.symbols.pm_set_nonblocking(fd, on ? 1 : 0));
  }

  unixListen(path: string, backlog = 512): number {
    return check("unix_listen", this.#lib.symbols.pm_unix_listen(cstr(path), backlog));
  }

  async accept(fd: number): Promise<number> {
    return check("accept", await this.#lib.symbols.pm_accept(fd));
  }

  async read(fd: number, buf: Uint8Array<ArrayBuffer>): Promise<number> {
    return check("read", await this.#lib.symbols.pm_read(fd, buf, buf.length));
  }

  async write(fd: number, buf: Uint8Array<ArrayBuffer>): Promise<number> {
    return check("write", await this.#lib.symbols.pm_write(fd, buf, buf.length));
  }

  waiterCreate(): number {
    return check("waiter_create", this.#lib.symbols.pm_waiter_create());
  }

  waiterAdd(ep: number, fd: number): void {
    check("waiter_add", this.#lib.symbols.pm_waiter_add(ep, fd));
  }

  waiterDel(ep: number, fd: number): void {
    check("waiter_del", this.#lib.symbols.pm_waiter_del(ep, fd));
  }

  /** Waits up to timeoutMs for connections with new bytes or a hangup. */
  async waiterWait(
    ep: number,
    out: Int32Array<ArrayBuffer>,
    timeoutMs: number,
  ): Promise<Readiness[]> {
    const n = await this.#lib.symbols.pm_waiter_wait(ep, out, out.length / 2, timeoutMs);
    return readiness(check("waiter_wait", n), out);
  }

  /** Copies a to b and b to a in the shim's relay thread (c/relay.c) until
   * both ways ended, then closes both; returns the relay's id. The relay
   * owns a and b from here on; if this throws, the caller still does. */
  relayStart(a: number, b: number): number {
    return check("relay_start", this.#lib.symbols.pm_relay_start(a, b));
  }

  readonly #localPort = new Int32Array(1);

  /** The same, with b a new connection to 127.0.0.1:port made by the
   * shim; returns the relay's id and b's own port. The relay owns a from
   * here on; if this throws, the caller still does. */
  relayToLoopback(a: number, port: number): { id: number; localPort: number } {
    const id = check(
      "relay_to_loopback",
      this.#lib.symbols.pm_relay_to_loopback(a, port, this.#localPort),
    );
    return { id, localPort: this.#localPort[0]! };
  }

  /** Waits up to timeoutMs for relays to end; out holds 4 numbers per
   * report. */
  async relayWait(out: BigInt64Array<ArrayBuffer>, timeoutMs: number): Promise<RelayEnd[]> {
    const n = check(
      "relay_wait",
      await this.#lib.symbols.pm_relay_wait(out, out.length / 4, timeoutMs),
    );
    const ends: RelayEnd[] = [];
    for (let i = 0; i < n; i++) {
      const errno = Number(out[4 * i + 1]);
      ends.push({
        id: Number(out[4 * i]),
        error: errno === 0 ? null : errnoName(errno),
        aToB: Number(out[4 * i + 2]),
        bToA: Number(out[4 * i + 3]),
      });
    }
    return ends;
  }

  /** True when the library was preloaded, so accept injection works. */
  interposerActive(): boolean {
    return this.#lib.symbols.pm_interposer_active() === 1;
  }

  /** Registers the internal listener on this loopback port; returns its fd. */
  injectRegister(port: number): number {
    return check("inject_register", this.#lib.symbols.pm_inject_register(port));
  }

  /** Queues clientFd (non-blocking and close-on-exec, as every socket the
   * daemon holds) to be returned by the listener's next accept; the
   * listener owns clientFd only if this returns without throwing. */
  injectPush(listenerFd: number, clientFd: number): void {
    check("inject_push", this.#lib.symbols.pm_inject_push(listenerFd, clientFd));
  }

  /** For tests only: the runtime's next accept on the injected listener
   * fails with ECONNABORTED (src/ops/faults.ts). */
  injectFailNext(listenerFd: number): void {
    check("inject_fail_next", this.#lib.symbols.pm_inject_fail_next(listenerFd, ECONNABORTED));
  }

  /** Forgets the listener (call before it closes); closes what was queued
   * and returns how many. onlyIfGone: the runtime closed it already, so
   * its number may be a newer registration's, which is left alone. */
  injectUnregister(listenerFd: number, onlyIfGone = false): number {
    return check(
      "inject_unregister",
      this.#lib.symbols.pm_inject_unregister(listenerFd, onlyIfGone ? 1 : 0),
    );
  }

  /** Installs the express lane's routing table (src/route/express_lane.ts writes
   * it); the lane's thread starts with the first. */
  expressTable(text: string): void {
    check("express_table", this.#lib.symbols.pm_express_table(cstr(text)));
  }

  /** Lets the express lane accept the runtime's listener's connections
   * (needs the shim preloaded). */
  expressListen(listenerFd: number): void {
    check("express_listen", this.#lib.symbols.pm_express_listen(listenerFd));
  }

  /** Stops the lane accepting on the listener; returns how many
   * connections it still holds for it (call until 0). */
  expressStop(listenerFd: number): number {
    return check("express_stop", this.#lib.symbols.pm_express_stop(listenerFd));
  }

  /** on: the lane passes every connection of the listener to the daemon. */
  expressPassAll(listenerFd: number, on: boolean): void {
    check("express_pass_all", this.#lib.symbols.pm_express_pass_all(listenerFd, on ? 1 : 0));
  }

  /** Connections waiting for their first bytes in the express lane. */
  expressWaiting(): number {
    return this.#lib.symbols.pm_express_waiting();
  }

  /** For a connection the lane passed on: ms since the lane accepted it;
   * null for any other fd. */
  expressAgeMs(fd: number): number | null {
    const age = this.#lib.symbols.pm_express_age_ms(fd);
    return age < 0 ? null : age;
  }

  /** The channels the lane may send on for service id: [fd, instance]. */
  expressChannels(id: number, channels: readonly (readonly [number, number])[]): void {
    const pairs = new Int32Array(channels.flat());
    check("express_channels", this.#lib.symbols.pm_express_channels(id, pairs, channels.length));
  }

  /** The instance the lane sends to next for this service id (-1: none). */
  expressNextInstance(id: number): number {
    return this.#lib.symbols.pm_express_next_instance(id);
  }

  #events = new Uint8Array(0);
  /** sizeof(struct event), asked once. */
  #eventSize: number | null = null;
  readonly #dropped = new Int32Array(1);

  /** What the lane did since the last call (at most max connections), and
   * how many events were lost to a full ring. */
  expressEvents(max = 1024): { events: ExpressEvent[]; dropped: number } {
    const size = this.#eventSize ??= this.#lib.symbols.pm_express_event_size();
    if (this.#events.length < size * max) this.#events = new Uint8Array(size * max);
    const n = this.#lib.symbols.pm_express_events(this.#events, max, this.#dropped);
    const view = new DataView(this.#events.buffer);
    const events: ExpressEvent[] = [];
    for (let i = 0; i < n; i++) events.push(readExpressEvent(this.#events, view, i * size));
    return { events, dropped: this.#dropped[0]! };
  }

  /** The lane's decision on bytes, for tests: the route index, "more", or
   * "daemon" (the lane would pass it on); the SNI and ALPN it read; the
   * index of the site an https route picks (null for another action). */
  expressDecide(table: string, bytes: Uint8Array<ArrayBuffer>): {
    route: number | "more" | "daemon";
    sni: string;
    alpn: string[];
    site: number | null;
  } {
    const size = this.#eventSize ??= this.#lib.symbols.pm_express_event_size();
    const out = new Uint8Array(size);
    const route = this.#lib.symbols.pm_express_decide(cstr(table), bytes, bytes.length, out);
    if (route < -3) check("express_decide", route);
    const { tls, target } = readExpressEvent(out, new DataView(out.buffer), 0);
    return {
      route: route >= 0 ? route : route === -2 ? "more" : "daemon",
      sni: tls?.sni ?? "",
      alpn: tls?.alpn ?? [],
      site: target >= 0 ? target : null,
    };
  }

  /** Makes our listener on 127.0.0.1:port accept the clients handed off on
   * the channels that connect to unixFd (which it now owns), from processes
   * of senderUid (-1: anyone). Needs the shim preloaded
   * (c/handoff_receiver.c). Returns the listener's fd. */
  receiverOpen(port: number, unixFd: number, senderUid: number): number {
    return check("receiver_open", this.#lib.symbols.pm_receiver_open(port, unixFd, senderUid));
  }

  readonly #record = new Uint8Array(64 * 1024);
  readonly #decoder = new TextDecoder();

  /** The record of a client the receiver's listener just accepted, by the
   * client's port; null if it has none. */
  receiverTake(listener: number, remotePort: number): string | null {
    const n = this.#lib.symbols.pm_receiver_take(
      listener,
      remotePort,
      this.#record,
      this.#record.length,
    );
    if (n === -2) return null; // ENOENT
    return this.#decoder.decode(this.#record.subarray(0, check("receiver_take", n)));
  }

  /** What went wrong in the receiver since the last call. */
  receiverProblems(listener: number): string[] {
    const n = check(
      "receiver_problems",
      this.#lib.symbols.pm_receiver_problems(listener, this.#record, this.#record.length),
    );
    return n === 0 ? [] : this.#decoder.decode(this.#record.subarray(0, n)).trimEnd().split("\n");
  }

  /** Stops the receiver (before its listener is closed). */
  receiverClose(listener: number): void {
    check("receiver_close", this.#lib.symbols.pm_receiver_close(listener));
  }
}
