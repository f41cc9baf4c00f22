/**
 * The sending side of handoffs: one persistent channel (a connection to its
 * Unix socket) per service instance, many handoffs on each. Handoffs go
 * round robin over the instances that are up; an instance that is missing,
 * refuses, breaks or is full is skipped, and retried with backoff. A
 * handoff waits up to its route's deadline for some instance to take it;
 * the caller keeps the connection until then, so nothing is ever lost: it
 * was sent whole, or the caller still has it for the fallback.
 *
 * Trust: before a channel carries anything, the listener must run as the
 * expected uid (and gid, and pid from a pid file, if configured), checked
 * with SO_PEERCRED; a socket in a folder that others can write is refused,
 * since anyone could have put a listener there.
 *
 * Stalls: a service that stops reading a channel (deadlock, SIGSTOP) would
 * hold every client sent there. What it has not read (SIOCOUTQ) is looked
 * at on each send and every WATCH_MS while some is unread; when that has
 * not gone down for the service's wait, the channel is stalled: no more
 * handoffs there, from here or from the express lane, until it goes down.
 * Stalled past STALL_CLOSE_MIN_MS..MAX (5 x the wait), it is closed and
 * reopened after a backoff, and the clients sent on it that the service
 * has not read are cut (the shim keeps a copy of each until it is read:
 * c/channel_send.c). So a stall holds a client for the close limit at
 * most, and only those sent before it was found.
 */
import { type Shim, ShimError } from "../../../ffi/shim.ts";
import type { Route, Service } from "../../config/config.ts";
import type { ThrottledLog } from "../../ops/throttled_log.ts";
import type { Metrics } from "../../ops/metrics.ts";
import type { Logger } from "../../ops/log.ts";
import { dirname } from "node:path";

const BACKOFF_FIRST_MS = 50;
const BACKOFF_MAX_MS = 2000;
const RETRY_FULL_MS = 5; // a full channel drains fast if its service reads
/** A route's wait_ms when none is configured (src/config/action.ts). */
const DEFAULT_WAIT_MS = 1000;
/** Unread records are looked at this often: a busy service's queue, seen
 * often, goes down now and then; a stalled one never does. */
const WATCH_MS = 50;
/** A stall is never judged over less than this (wait_ms may be 0). */
const STALL_MIN_MS = 250;
/** A channel stalled for 5 x the wait is closed, but not before 2 s (a
 * pause may end) nor after 30 s (its service is gone for good). */
const STALL_CLOSE_FACTOR = 5;
const STALL_CLOSE_MIN_MS = 2000;
const STALL_CLOSE_MAX_MS = 30_000;
/** After a stall-close the instance is left alone for the close limit,
 * doubled on each stall-close in a row: each reopening to a service that
 * is still stalled strands what is sent before the stall is found again. */
const STALL_BACKOFF_MAX_MS = 60_000;

export type SendResult =
  | { readonly sent: true; readonly socket: string; readonly waitedMs: number }
  | { readonly sent: false; readonly reason: string; readonly waitedMs: number };

/** The shortest wait_ms of the routes that hand off to the service: how
 * long its channels may go unread before they count as stalled. */
export function shortestWait(routes: readonly Route[], service: string): number {
  const waits = routes.flatMap((r) =>
    r.action.kind === "handoff" && r.action.service.name === service ? [r.action.waitMs] : []
  );
  return waits.length ? Math.min(...waits) : DEFAULT_WAIT_MS;
}

/** Why a socket must not be trusted, or null if it may be used. */
export function untrustedSocketFolder(socket: string): string | null {
  const dir = dirname(socket);
  let st: Deno.FileInfo;
  try {
    st = Deno.statSync(dir);
  } catch {
    return null; // no folder, no socket: connecting will say ENOENT
  }
  const mode = st.mode ?? 0;
  const me = Deno.uid();
  if (st.uid !== me && st.uid !== 0) {
    return `its folder ${dir} belongs to uid ${st.uid}, neither portmux's user nor root`;
  }
  if (mode & 0o002) {
    return `its folder ${dir} can be written by anyone (mode ${(mode & 0o777).toString(8)})`;
  }
  if (mode & 0o020 && st.gid !== Deno.gid()) {
    return `its folder ${dir} can be written by group ${st.gid} (mode ${
      (mode & 0o777).toString(8)
    })`;
  }
  return null;
}

class Instance {
  chan: number | null = null;
  downUntil = 0;
  backoffMs = 0;
  lastError = "";
  /** Bytes of a record whose fd was sent but whose rest was not (a
   * partial send): they go before anything else on this channel. */
  tail: Uint8Array<ArrayBuffer> | null = null;
  /** What the service had not read at the last look (SIOCOUTQ), and when
   * that last went down (or started from none). */
  unread = 0;
  progressAt = 0;
  /** Since when its channel is stalled; null: it is not. */
  stalledAt: number | null = null;
  /** How long the next stall-close keeps the instance out. */
  stallBackoffMs = 0;
  constructor(readonly socket: string) {}
}

let lastId = 0;

export class ServiceChannels {
  readonly #instances: Instance[];
  #next = 0;
  /** Under this id the express lane knows the service's channels. */
  readonly id = ++lastId;
  /** The shortest wait_ms of the routes to the service (set by the
   * daemon): unread for longer, a channel is stalled. */
  waitMs = DEFAULT_WAIT_MS;
  #watch: ReturnType<typeof setTimeout> | undefined;

  constructor(
    readonly service: Service,
    readonly shim: Shim,
    readonly log: Logger,
    readonly throttled: ThrottledLog,
    readonly metrics: Metrics,
  ) {
    this.#instances = service.sockets.map((s) => new Instance(s));
  }

  /**
   * Sends fd with its record to an instance, waiting up to waitMs for one
   * to take it. The caller still owns fd either way (the service has its
   * own copy once sent).
   */
  async send(fd: number, record: Uint8Array<ArrayBuffer>, waitMs: number): Promise<SendResult> {
    const started = performance.now();
    let waited = false;
    const deadline = started + waitMs;
    for (;;) {
      const n = this.#instances.length;
      const laneNext = this.shim.lane.nextInstance(this.id);
      if (laneNext >= 0) this.#next = laneNext; // one round robin with the express lane
      for (let k = 0; k < n; k++) {
        const inst = this.#instances[(this.#next + k) % n]!;
        if (!this.#usable(inst)) continue;
        if (this.#trySend(inst, fd, record)) {
          this.#next = (this.#next + k + 1) % n;
          this.#openIdle(); // so that the express lane spreads them too
          this.#publish(); // the lane goes on from the instance due next
          this.#arm();
          return { sent: true, socket: inst.socket, waitedMs: performance.now() - started };
        }
      }
      const now = performance.now();
      if (now >= deadline) {
        const reason = this.#instances.map((i) => `${i.socket}: ${i.lastError}`).join("; ");
        return { sent: false, reason, waitedMs: now - started };
      }
      // Counted once per handoff that waits, however many times it looks.
      if (!waited) this.metrics.inc("portmux_handoff_waits_total", { service: this.service.name });
      waited = true;
      const wake = Math.min(
        deadline,
        now + RETRY_FULL_MS,
        ...this.#instances.map((i) => Math.max(i.downUntil, now + 1)),
      );
      await new Promise((r) => setTimeout(r, Math.max(1, wake - now)));
    }
  }

  /** Not down, and its channel (if open) not stalled. */
  #usable(inst: Instance): boolean {
    const now = performance.now();
    if (inst.downUntil > now) return false;
    this.#look(inst, now);
    return inst.stalledAt === null && inst.downUntil <= now;
  }

  /** One attempt on one instance: true if the fd went. */
  #trySend(inst: Instance, fd: number, record: Uint8Array<ArrayBuffer>): boolean {
    if (inst.chan === null && !this.#open(inst)) return false;
    if (inst.tail && !this.#flushTail(inst)) return false;
    let sent: number;
    try {
      sent = this.shim.channels.send(inst.chan!, fd, record);
    } catch (e) {
      // Broken channel (the service restarted or went away): nothing was
      // sent. Reopen at once; it may be back on a new socket already.
      this.#closeChannel(inst);
      this.#markDown(inst, `channel broke (${(e as ShimError).code ?? e})`, true);
      if (!this.#open(inst)) return false;
      try {
        sent = this.shim.channels.send(inst.chan!, fd, record);
      } catch (e2) {
        this.#closeChannel(inst);
        this.#markDown(inst, `channel broke (${(e2 as ShimError).code ?? e2})`);
        return false;
      }
    }
    if (sent === 0) {
      inst.lastError = "channel full (the service is not reading)";
      this.metrics.inc("portmux_handoff_channel_full_total", { service: this.service.name });
      return false;
    }
    if (sent < record.length) { // the fd went with the first byte: finish the record later
      inst.tail = record.slice(sent);
      this.#publish(); // no other record may go on it before the tail
      this.#flushTail(inst);
    }
    inst.backoffMs = 0;
    this.#look(inst, performance.now()); // so that a read right after counts as progress
    return true;
  }

  /**
   * Looks at what the service has not read on inst's channel: when that
   * has not gone down within the wait, the channel is stalled; stalled
   * past the close limit, it is closed. A fall ends a stall.
   */
  #look(inst: Instance, now: number): void {
    if (inst.chan === null) return;
    let unread: number;
    try {
      unread = this.shim.channels.unread(inst.chan);
    } catch {
      return; // broken: the next send or maintain() finds it
    }
    if (unread < inst.unread || inst.unread === 0) {
      inst.progressAt = now;
      if (unread < inst.unread) inst.stallBackoffMs = 0;
      if (inst.stalledAt !== null) this.#resume(inst, now);
    }
    inst.unread = unread;
    if (inst.stalledAt === null) {
      if (unread > 0 && now - inst.progressAt >= this.#stallMs) this.#stall(inst, now);
    } else if (now - inst.stalledAt >= this.#closeAfterMs) {
      this.#closeStalled(inst, now);
    }
  }

  get #stallMs(): number {
    return Math.max(STALL_MIN_MS, this.waitMs);
  }

  get #closeAfterMs(): number {
    const ms = STALL_CLOSE_FACTOR * this.#stallMs;
    return Math.min(STALL_CLOSE_MAX_MS, Math.max(STALL_CLOSE_MIN_MS, ms));
  }

  /** How many clients wait unread in inst's channel. */
  #queued(inst: Instance): number {
    try {
      return inst.chan === null ? 0 : this.shim.channels.queued(inst.chan);
    } catch {
      return 0;
    }
  }

  #stall(inst: Instance, now: number): void {
    inst.stalledAt = now;
    inst.lastError = notReading(`nothing read for ${Math.round(now - inst.progressAt)} ms`);
    this.#publish(); // the express lane stops sending there too
    this.metrics.inc("portmux_handoff_stalled_total", { service: this.service.name });
    this.log.warn("service-stalled", {
      service: this.service.name,
      socket: inst.socket,
      unread_ms: Math.round(now - inst.progressAt),
      clients_queued: this.#queued(inst),
      close_after_ms: this.#closeAfterMs,
    });
  }

  #resume(inst: Instance, now: number): void {
    const stalledMs = Math.round(now - (inst.stalledAt ?? now));
    inst.stalledAt = null;
    inst.lastError = "";
    this.#publish();
    this.log.info("service-resumed", {
      service: this.service.name,
      socket: inst.socket,
      stalled_ms: stalledMs,
      clients_queued: this.#queued(inst),
    });
  }

  /** Closes a channel stalled past the limit and cuts the clients the
   * service has not read; its instance rests, longer each time in a row. */
  #closeStalled(inst: Instance, now: number): void {
    const stalledMs = Math.round(now - (inst.stalledAt ?? now));
    const cut = this.#closeChannel(inst, true);
    inst.stallBackoffMs = Math.min(
      STALL_BACKOFF_MAX_MS,
      Math.max(this.#closeAfterMs, inst.stallBackoffMs * 2),
    );
    inst.downUntil = now + inst.stallBackoffMs;
    inst.lastError = notReading(`closed after ${stalledMs} ms stalled`);
    this.metrics.inc("portmux_handoff_stalled_closed_total", { service: this.service.name });
    this.log.error("service-stalled-closed", {
      service: this.service.name,
      socket: inst.socket,
      stalled_ms: stalledMs,
      clients_closed: cut,
      reopen_after_ms: inst.stallBackoffMs,
    });
  }

  /** While some channel has unread records, looks at them every WATCH_MS
   * (maintain() runs only with the express lane, and a stall must be found
   * and closed without new sends). */
  #arm(): void {
    if (this.#watch !== undefined) return;
    if (!this.#instances.some((i) => i.chan !== null && i.unread > 0)) return;
    const watch = this.#watch = setTimeout(() => {
      this.#watch = undefined;
      this.#lookAll();
      this.#arm();
    }, WATCH_MS);
    Deno.unrefTimer(watch);
  }

  #lookAll(): void {
    const now = performance.now();
    for (const inst of this.#instances) this.#look(inst, now);
  }

  #flushTail(inst: Instance): boolean {
    while (inst.tail) {
      let n: number;
      try {
        n = this.shim.channels.send(inst.chan!, -1, inst.tail);
      } catch (e) {
        // The service got a record cut short; its receiver drops it and
        // closes the fd (docs/handoff.md). The channel is gone.
        inst.tail = null;
        this.#closeChannel(inst);
        this.#markDown(inst, `channel broke mid-record (${(e as ShimError).code ?? e})`);
        return false;
      }
      if (n === 0) {
        setTimeout(() => inst.chan !== null && this.#flushTail(inst), RETRY_FULL_MS);
        return false;
      }
      inst.tail = n < inst.tail.length ? inst.tail.slice(n) : null;
    }
    this.#publish();
    return true;
  }

  #open(inst: Instance): boolean {
    const untrusted = untrustedSocketFolder(inst.socket);
    if (untrusted) {
      this.#markDown(inst, `refused: ${untrusted}`);
      return false;
    }
    let pid = -1;
    if (this.service.pidFile) {
      try {
        pid = Number(Deno.readTextFileSync(this.service.pidFile).trim());
        if (!Number.isInteger(pid) || pid <= 0) throw new Error("no pid in it");
      } catch (e) {
        this.#markDown(
          inst,
          `cannot read pid file ${this.service.pidFile}: ${(e as Error).message}`,
        );
        return false;
      }
    }
    try {
      inst.chan = this.shim.channels.open(inst.socket, {
        uid: this.service.uid,
        gid: this.service.gid,
        pid,
      });
    } catch (e) {
      const code = e instanceof ShimError ? e.code : String(e);
      this.#markDown(inst, explainOpenError(code, this.service));
      return false;
    }
    if (inst.downUntil > 0 || inst.lastError) {
      this.log.info("service-up", { service: this.service.name, socket: inst.socket });
    }
    inst.downUntil = 0;
    inst.lastError = "";
    this.#publish();
    return true;
  }

  #markDown(inst: Instance, why: string, retryNow = false): void {
    inst.lastError = why;
    inst.backoffMs = retryNow
      ? 0
      : Math.min(BACKOFF_MAX_MS, Math.max(BACKOFF_FIRST_MS, inst.backoffMs * 2));
    inst.downUntil = performance.now() + inst.backoffMs;
    this.metrics.inc("portmux_handoff_instance_down_total", {
      service: this.service.name,
      socket: inst.socket,
    });
    this.throttled.warn(`service-down ${inst.socket}`, "service-down", {
      service: this.service.name,
      socket: inst.socket,
      error: why,
    });
  }

  /** Tells the express lane which channels it may send on: those open
   * and between records. It sends under a lock, so once this returns it
   * no longer uses a channel left out. */
  #publish(): void {
    const usable: [number, number][] = [];
    const n = this.#instances.length;
    for (let j = 0; j < n; j++) { // from the instance due next: the lane goes on from there
      const k = (this.#next + j) % n;
      const inst = this.#instances[k]!;
      if (inst.chan !== null && !inst.tail && inst.stalledAt === null) usable.push([inst.chan, k]);
    }
    this.shim.lane.channels(this.id, usable);
  }

  /** Closes inst's channel; with cut, ends the clients its service has
   * not read. Returns how many those were. */
  #closeChannel(inst: Instance, cut = false): number {
    inst.unread = 0;
    inst.stalledAt = null;
    if (inst.chan === null) return 0;
    const chan = inst.chan;
    inst.chan = null;
    this.#publish(); // before the number can be reused
    try {
      return this.shim.channels.close(chan, cut);
    } catch {
      return 0; // gone
    }
  }

  /**
   * Keeps the channels of a service in use ready for the express lane,
   * which sends without this object: a channel whose service went away
   * (readable: a receiver never writes, so that is its end) is closed and
   * reopened, and an instance not open yet is opened once its backoff
   * allows. Called now and then; a service never used is left alone.
   */
  maintain(): void {
    if (!this.#instances.some((i) => i.chan !== null)) return;
    for (const inst of this.#instances) {
      if (inst.chan !== null) {
        let ended = false;
        try {
          ended = this.shim.fds.peek(inst.chan, this.#probe)?.length === 0;
        } catch {
          ended = true;
        }
        if (!ended) continue;
        this.#closeChannel(inst);
        this.#markDown(inst, "channel closed by the service", true);
      }
    }
    this.#lookAll();
    this.#arm();
    this.#openIdle();
  }

  readonly #probe = new Uint8Array(1);

  /** Opens a channel to every instance that has none (at start and after
   * a reload, so that the first clients, the express lane's too, find
   * them open); true when at least one is open. */
  openAll(): boolean {
    this.#openIdle();
    this.#publish();
    return this.#instances.some((i) => i.chan !== null);
  }

  /** Opens the instances not open yet whose backoff allows. */
  #openIdle(): void {
    const now = performance.now();
    for (const inst of this.#instances) {
      if (inst.chan === null && inst.downUntil <= now) this.#open(inst);
    }
  }

  close(): void {
    clearTimeout(this.#watch);
    this.#watch = undefined;
    for (const inst of this.#instances) this.#closeChannel(inst);
  }
}

/** Why a stalled instance took nothing: to the daemon, a channel its
 * service does not read within the wait is as full as one out of room. */
function notReading(detail: string): string {
  return `channel full (the service is not reading): stalled, ${detail}`;
}

function explainOpenError(code: string, service: Service): string {
  switch (code) {
    case "ENOENT":
    case "ECONNREFUSED":
      return `not listening (${code})`;
    case "EAGAIN":
      return "not accepting (backlog full)";
    case "EPERM": {
      const want = [`uid ${service.uid}`];
      if (service.gid >= 0) want.push(`gid ${service.gid}`);
      if (service.pidFile) want.push(`the pid in ${service.pidFile}`);
      return `refused: the listener is not ${want.join(", ")} (SO_PEERCRED); nothing sent`;
    }
    default:
      return code;
  }
}
