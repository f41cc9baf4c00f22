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
 */
import { type Shim, ShimError } from "../ffi/shim.ts";
import type { Service } from "./config.ts";
import type { ThrottledLog } from "./throttled_log.ts";
import type { Metrics } from "./metrics.ts";
import type { Logger } from "./log.ts";
import { dirname } from "node:path";

const BACKOFF_FIRST_MS = 50;
const BACKOFF_MAX_MS = 2000;
const RETRY_FULL_MS = 5; // a full channel drains fast if its service reads

export type SendResult =
  | { readonly sent: true; readonly socket: string; readonly waitedMs: number }
  | { readonly sent: false; readonly reason: string; readonly waitedMs: number };

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
  constructor(readonly socket: string) {}
}

let lastId = 0;

export class ServiceChannels {
  readonly #instances: Instance[];
  #next = 0;
  /** Under this id the express lane knows the service's channels. */
  readonly id = ++lastId;

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
    const deadline = started + waitMs;
    for (;;) {
      const n = this.#instances.length;
      const laneNext = this.shim.expressNextInstance(this.id);
      if (laneNext >= 0) this.#next = laneNext; // one round robin with the express lane
      for (let k = 0; k < n; k++) {
        const inst = this.#instances[(this.#next + k) % n]!;
        if (inst.downUntil > performance.now()) continue;
        if (this.#trySend(inst, fd, record)) {
          this.#next = (this.#next + k + 1) % n;
          this.#openIdle(); // so that the express lane spreads them too
          this.#publish(); // the lane goes on from the instance due next
          return { sent: true, socket: inst.socket, waitedMs: performance.now() - started };
        }
      }
      const now = performance.now();
      if (now >= deadline) {
        const reason = this.#instances.map((i) => `${i.socket}: ${i.lastError}`).join("; ");
        return { sent: false, reason, waitedMs: now - started };
      }
      this.metrics.inc("portmux_handoff_waits_total", { service: this.service.name });
      const wake = Math.min(
        deadline,
        now + RETRY_FULL_MS,
        ...this.#instances.map((i) => Math.max(i.downUntil, now + 1)),
      );
      await new Promise((r) => setTimeout(r, Math.max(1, wake - now)));
    }
  }

  /** One attempt on one instance: true if the fd went. */
  #trySend(inst: Instance, fd: number, record: Uint8Array<ArrayBuffer>): boolean {
    if (inst.chan === null && !this.#open(inst)) return false;
    if (inst.tail && !this.#flushTail(inst)) return false;
    let sent: number;
    try {
      sent = this.shim.channelSend(inst.chan!, fd, record);
    } catch (e) {
      // Broken channel (the service restarted or went away): nothing was
      // sent. Reopen at once; it may be back on a new socket already.
      this.#closeChannel(inst);
      this.#markDown(inst, `channel broke (${(e as ShimError).code ?? e})`, true);
      if (!this.#open(inst)) return false;
      try {
        sent = this.shim.channelSend(inst.chan!, fd, record);
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
    return true;
  }

  #flushTail(inst: Instance): boolean {
    while (inst.tail) {
      let n: number;
      try {
        n = this.shim.channelSend(inst.chan!, -1, inst.tail);
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
      inst.chan = this.shim.channelOpen(inst.socket, {
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
      if (inst.chan !== null && !inst.tail) usable.push([inst.chan, k]);
    }
    this.shim.expressChannels(this.id, usable);
  }

  #closeChannel(inst: Instance): void {
    if (inst.chan !== null) {
      const chan = inst.chan;
      inst.chan = null;
      this.#publish(); // before the number can be reused
      try {
        this.shim.close(chan);
      } catch { /* gone */ }
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
          ended = this.shim.peek(inst.chan, this.#probe)?.length === 0;
        } catch {
          ended = true;
        }
        if (!ended) continue;
        this.#closeChannel(inst);
        this.#markDown(inst, "channel closed by the service", true);
      }
    }
    this.#openIdle();
  }

  readonly #probe = new Uint8Array(1);

  /** Opens the instances not open yet whose backoff allows. */
  #openIdle(): void {
    const now = performance.now();
    for (const inst of this.#instances) {
      if (inst.chan === null && inst.downUntil <= now) this.#open(inst);
    }
  }

  close(): void {
    for (const inst of this.#instances) this.#closeChannel(inst);
  }
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
