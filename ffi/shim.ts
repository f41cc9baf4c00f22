/**
 * Deno.dlopen bindings for the C shim (c/), and nothing else:
 * the symbol table, the library path, and the one place where a C return
 * code becomes a named error.
 */

const SYMBOLS = {
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
  // int pm_listener_fd(char *host, int port)
  pm_listener_fd: { parameters: ["buffer", "i32"], result: "i32" },
  // int pm_accept_batch(int listener, uint8_t *out, int max)
  pm_accept_batch: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  // int pm_channel_open(char *path, int uid, int gid, int pid)
  pm_channel_open: { parameters: ["buffer", "i32", "i32", "i32"], result: "i32" },
  // int pm_channel_send(int chan, int fd, uint8_t *payload, int len)
  pm_channel_send: { parameters: ["i32", "i32", "buffer", "i32"], result: "i32" },
  // int pm_unread(int chan)
  pm_unread: { parameters: ["i32"], result: "i32" },
  // int pm_channel_recv(int sock, uint8_t *buf, int len, int32_t *fds, int max_fds, int32_t *info)
  pm_channel_recv: {
    parameters: ["i32", "buffer", "i32", "buffer", "i32", "buffer"],
    result: "i32",
  },
  // int pm_wait_readable(int fd, int timeout_ms): blocks
  pm_wait_readable: { parameters: ["i32", "i32"], result: "i32", nonblocking: true },
  // int pm_peer_cred(int sock, int32_t *out)
  pm_peer_cred: { parameters: ["i32", "buffer"], result: "i32" },
  // int pm_release(int fd)
  pm_release: { parameters: ["i32"], result: "i32" },
  // int pm_dup(int fd)
  pm_dup: { parameters: ["i32"], result: "i32" },
  // int pm_close(int fd)
  pm_close: { parameters: ["i32"], result: "i32" },
  // int pm_defer_accept(int listener_fd, int seconds)
  pm_defer_accept: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_shutdown(int fd)
  pm_shutdown: { parameters: ["i32"], result: "i32" },
  // int pm_set_nonblocking(int fd, int on)
  pm_set_nonblocking: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_unix_listen(char *path, int backlog)
  pm_unix_listen: { parameters: ["buffer", "i32"], result: "i32" },
  // int pm_accept(int fd): blocks
  pm_accept: { parameters: ["i32"], result: "i32", nonblocking: true },
  // int pm_read(int fd, uint8_t *buf, int len): blocks
  pm_read: { parameters: ["i32", "buffer", "i32"], result: "i32", nonblocking: true },
  // int pm_write(int fd, uint8_t *buf, int len): blocks
  pm_write: { parameters: ["i32", "buffer", "i32"], result: "i32", nonblocking: true },
  // int pm_waiter_create(void)
  pm_waiter_create: { parameters: [], result: "i32" },
  // int pm_waiter_add(int ep, int fd)
  pm_waiter_add: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_waiter_del(int ep, int fd)
  pm_waiter_del: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_waiter_wait(int ep, int32_t *out, int max, int timeout_ms): blocks
  pm_waiter_wait: { parameters: ["i32", "buffer", "i32", "i32"], result: "i32", nonblocking: true },
  // int pm_interposer_active(void)
  pm_interposer_active: { parameters: [], result: "i32" },
  // int pm_inject_register(int port)
  pm_inject_register: { parameters: ["i32"], result: "i32" },
  // int pm_inject_push(int listener_fd, int client_fd)
  pm_inject_push: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_inject_unregister(int listener_fd)
  pm_inject_unregister: { parameters: ["i32"], result: "i32" },
  // int pm_tcp_listen(char *host, int port, int backlog)
  pm_tcp_listen: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  // int pm_listener_info(int fd, int32_t out[2], char addr[PM_ADDR_TEXT])
  pm_listener_info: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  // int pm_listener_refuse_new(int fd)
  pm_listener_refuse_new: { parameters: ["i32"], result: "i32" },
  // int pm_set_cloexec(int fd, int on)
  pm_set_cloexec: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_adopt_listener(int runtime_fd, int held_fd)
  pm_adopt_listener: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_inject_fail_next(int listener_fd, int errno)
  pm_inject_fail_next: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_receiver_open(int port, int unix_fd, int sender_uid)
  pm_receiver_open: { parameters: ["i32", "i32", "i32"], result: "i32" },
  // int pm_receiver_take(int listener, int remote_port, char *out, int cap)
  pm_receiver_take: { parameters: ["i32", "i32", "buffer", "i32"], result: "i32" },
  // int pm_receiver_problems(int listener, char *out, int cap)
  pm_receiver_problems: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  // int pm_receiver_close(int listener)
  pm_receiver_close: { parameters: ["i32"], result: "i32" },
  // int pm_relay_start(int a, int b)
  pm_relay_start: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_relay_to_loopback(int a, int port, int32_t *local_port)
  pm_relay_to_loopback: { parameters: ["i32", "i32", "buffer"], result: "i32" },
  // int pm_relay_wait(int64_t *out, int max, int timeout_ms): blocks
  pm_relay_wait: { parameters: ["buffer", "i32", "i32"], result: "i32", nonblocking: true },
  // int pm_express_table(char *text)
  pm_express_table: { parameters: ["buffer"], result: "i32" },
  // int pm_express_listen(int listener_fd)
  pm_express_listen: { parameters: ["i32"], result: "i32" },
  // int pm_express_stop(int listener_fd)
  pm_express_stop: { parameters: ["i32"], result: "i32" },
  // int pm_express_pass_all(int listener_fd, int on)
  pm_express_pass_all: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_express_waiting(void)
  pm_express_waiting: { parameters: [], result: "i32" },
  // double pm_express_age_ms(int fd)
  pm_express_age_ms: { parameters: ["i32"], result: "f64" },
  // int pm_express_channels(int id, int32_t *pairs, int n)
  pm_express_channels: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  // int pm_express_next_instance(int id)
  pm_express_next_instance: { parameters: ["i32"], result: "i32" },
  // int pm_express_events(uint8_t *out, int max, int32_t *dropped)
  pm_express_events: { parameters: ["buffer", "i32", "buffer"], result: "i32" },
  // int pm_express_event_size(void)
  pm_express_event_size: { parameters: [], result: "i32" },
  // int pm_express_event_layout(int32_t *out, int max)
  pm_express_event_layout: { parameters: ["buffer", "i32"], result: "i32" },
  // int pm_express_table_limits(int32_t *out, int max)
  pm_express_table_limits: { parameters: ["buffer", "i32"], result: "i32" },
  // int pm_express_decide(char *table, uint8_t *bytes, int n, struct event *out)
  pm_express_decide: { parameters: ["buffer", "buffer", "i32", "buffer"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

/** Linux errno numbers the shim can return, by name. */
const ECONNABORTED = 103;
const ERRNO_NAMES: Record<number, string> = {
  1: "EPERM",
  2: "ENOENT",
  4: "EINTR",
  5: "EIO",
  9: "EBADF",
  11: "EAGAIN",
  12: "ENOMEM",
  13: "EACCES",
  17: "EEXIST",
  20: "ENOTDIR",
  22: "EINVAL",
  23: "ENFILE",
  24: "EMFILE",
  28: "ENOSPC",
  32: "EPIPE",
  36: "ENAMETOOLONG",
  71: "EPROTO",
  103: "ECONNABORTED",
  88: "ENOTSOCK",
  90: "EMSGSIZE",
  98: "EADDRINUSE",
  104: "ECONNRESET",
  105: "ENOBUFS",
  107: "ENOTCONN",
  109: "ETOOMANYREFS",
  110: "ETIMEDOUT",
  111: "ECONNREFUSED",
  115: "EINPROGRESS",
};

/** What the express lane did with one connection (struct event in
 * c/express_lane.c). */
export interface ExpressEvent {
  readonly outcome:
    | "https"
    | "handed-off"
    | "lost"
    | "accept-failed"
    | "limit"
    | "reset"
    | "accept-recovered";
  /** Index of the route in the config's route list... */
  readonly route: number;
  /** ...of the config the table of this generation was made from. */
  readonly generation: number;
  /** The site (https) or the service instance (handed-off). */
  readonly target: number;
  /** Bytes peeked. */
  readonly peeked: number;
  /** For accept-recovered: the accepts that failed before one worked. */
  readonly failures: number;
  readonly client: { hostname: string; port: number };
  readonly local: { hostname: string; port: number };
  /** errno name, for lost and accept-failed. */
  readonly error: string;
  /** The limit, for limit: 1 max_connections, 2 max_preread, 3 max_per_source. */
  readonly limit: number;
  /** Set when the bytes were a ClientHello. */
  readonly tls: { sni: string | null; alpn: string[] } | null;
  readonly decideMs: number;
}

const EXPRESS_OUTCOMES = [
  ,
  "https",
  "handed-off",
  "lost",
  "accept-failed",
  "limit",
  "reset",
  "accept-recovered",
] as const;
const EVENT_NAME = 256;

/** Addresses as the shim writes them: NUL-ended text of ADDR_TEXT bytes
 * (PM_ADDR_TEXT). */
const ADDR_TEXT = 48;

/** A NUL-ended ASCII string of at most max bytes at `at` (addresses:
 * digits, dots, colons; names from a ClientHello). */
function cText(buf: Uint8Array, at: number, max = ADDR_TEXT): string {
  let s = "";
  for (let i = at; buf[i] !== 0 && i < at + max; i++) s += String.fromCharCode(buf[i]!);
  return s;
}

/** Where each field of the lane's event record (struct event in
 * c/express_lane.c) is, and its size. The C side says the same through
 * pm_express_event_layout, compared when the library loads: one contract,
 * checked, not mirrored by hand. */
export const EVENT_LAYOUT = {
  outcome: 0,
  route: 4,
  target: 8,
  peeked: 12,
  clientPort: 16,
  localPort: 20,
  error: 24,
  hasSni: 28,
  decideMs: 32,
  generation: 36,
  limit: 40,
  failures: 44,
  client: 48,
  local: 48 + ADDR_TEXT,
  sni: 48 + 2 * ADDR_TEXT,
  alpn: 48 + 2 * ADDR_TEXT + EVENT_NAME,
  size: 48 + 2 * ADDR_TEXT + 2 * EVENT_NAME,
} as const;

/** What the lane's routing table has room for (c/express_lane.c): rules,
 * names per condition, bytes per name or prefix, sites, bytes of a
 * record's head. The C side reports the same (pm_express_table_limits),
 * compared when the library loads. */
export const LANE_TABLE_LIMITS = {
  rules: 64,
  names: 16,
  nameBytes: 255,
  sites: 16,
  headBytes: 1023,
} as const;

/** What differs between numbers the C side reports and ours (in the order
 * of ours); null when they agree. */
export function contractMismatch(
  ours: Readonly<Record<string, number>>,
  reported: readonly number[],
): string | null {
  const entries = Object.entries(ours);
  if (reported.length !== entries.length) {
    return `${reported.length} numbers from C, ${entries.length} in ffi/shim.ts`;
  }
  const wrong = entries.flatMap(([name, at], i) =>
    reported[i] === at ? [] : [`${name}: C ${reported[i]}, ts ${at}`]
  );
  return wrong.length ? wrong.join(", ") : null;
}

/** What differs between the layout the C side reports and EVENT_LAYOUT;
 * null when they agree. */
export function eventLayoutMismatch(reported: readonly number[]): string | null {
  return contractMismatch(EVENT_LAYOUT, reported);
}

function readExpressEvent(buf: Uint8Array, view: DataView, at: number): ExpressEvent {
  const L = EVENT_LAYOUT;
  const i32 = (offset: number) => view.getInt32(at + offset, true);
  const hasSni = i32(L.hasSni);
  const alpnAt = at + L.alpn;
  const alpn: string[] = [];
  for (let i = alpnAt; buf[i]! > 0 && i < alpnAt + EVENT_NAME;) {
    const n = buf[i]!;
    alpn.push(cText(buf, i + 1, n));
    i += 1 + n;
  }
  return {
    outcome: EXPRESS_OUTCOMES[i32(L.outcome)] ?? "lost",
    route: i32(L.route),
    target: i32(L.target),
    peeked: i32(L.peeked),
    failures: i32(L.failures),
    client: { hostname: cText(buf, at + L.client), port: i32(L.clientPort) },
    local: { hostname: cText(buf, at + L.local), port: i32(L.localPort) },
    error: i32(L.error) ? errnoName(i32(L.error)) : "",
    limit: i32(L.limit),
    tls: hasSni < 0 ? null : {
      sni: hasSni ? cText(buf, at + L.sni, EVENT_NAME) : null,
      alpn,
    },
    decideMs: view.getFloat32(at + L.decideMs, true),
    generation: i32(L.generation),
  };
}

/** The (fd, hangup) pairs pm_waiter_wait wrote. */
function readiness(n: number, out: Int32Array): Readiness[] {
  const ready: Readiness[] = [];
  for (let i = 0; i < n; i++) ready.push({ fd: out[2 * i]!, hangup: out[2 * i + 1] !== 0 });
  return ready;
}

function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `errno ${errno}`;
}

/** A failed shim call: `code` is the errno name ("ECONNREFUSED"). */
export class ShimError extends Error {
  constructor(readonly call: string, readonly errno: number) {
    const code = errnoName(errno);
    super(`${call}: ${code}`);
    this.name = "ShimError";
    this.code = code;
  }
  readonly code: string;
}

function check(call: string, rc: number): number {
  if (rc < 0) throw new ShimError(call, -rc);
  return rc;
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
   * Deno.listen) accept on the socket heldFd instead (c/portmux_shim.c).
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
   * returns the bytes sent, 0 if the channel is full (nothing sent). */
  channelSend(chan: number, fd: number, payload: Uint8Array<ArrayBuffer>): number {
    const n = this.#lib.symbols.pm_channel_send(chan, fd, payload, payload.length);
    return n === -11 ? 0 : check("channel_send", n);
  }

  /** What the channel's peer has not read yet (SIOCOUTQ): the kernel's
   * memory for the unread messages (768 for a record up to 192 bytes). */
  unread(chan: number): number {
    return check("unread", this.#lib.symbols.pm_unread(chan));
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
   * and returns how many. */
  injectUnregister(listenerFd: number): number {
    return check("inject_unregister", this.#lib.symbols.pm_inject_unregister(listenerFd));
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
