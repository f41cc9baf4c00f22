/**
 * Proofs that the Deno internals the design relies on still behave as they
 * were found to (docs/design.md R1, R2 and R4, and the express lane's
 * listener trick), made at start and after each reload on loopback
 * connections of our own, in a few milliseconds:
 *
 * - fd: the fd of an accepted Deno.TcpConn is found (the runtime's symbol,
 *   else the lookup by 4-tuple) and carries that connection's bytes;
 * - release: a connection released and closed as a handoff ends keeps
 *   talking through the copy a service holds (no FIN reaches the peer);
 * - inject: a socket pushed into an HTTPS site's queue is returned by the
 *   runtime's accept4 and answered by that site's Deno.serve (TLS);
 * - lane: the express lane takes a connection from a listener and passes it
 *   to the daemon's accept; under an HTTPS site's epoll token (the lane's
 *   listener trick), the runtime's own accept takes it.
 *
 * A mechanism that fails is said loudly (runtime-check-failed), counted
 * (portmux_runtime_check_failures_total), and the daemon turns to its
 * fallback. It stays off until a restart: the runtime does not change
 * while the process runs, and a fallback, once taken, is not undone.
 */
import { type Shim, ShimError } from "../../ffi/shim.ts";
import { type ConnFd, connFd, FD_SYMBOL_DESCRIPTION, internalFd } from "../accept/conn_fd.ts";
import { DenoClient } from "../accept/client_socket.ts";
import type { ExpressLane } from "../route/express_lane.ts";
import type { HttpsFrontend } from "../actions/https/frontend.ts";
import type { Logger } from "./log.ts";
import type { Metrics } from "./metrics.ts";
import { fault } from "./faults.ts";

export type Mechanism = "fd" | "release" | "inject" | "lane";
const ORDER: readonly Mechanism[] = ["fd", "release", "inject", "lane"];

/** What the daemon does instead, as the failure line says it. */
const FALLBACKS: Record<Exclude<Mechanism, "fd">, string> = {
  release: "handoffs of connections Deno accepted go to their route's fallback",
  inject: "HTTPS is bridged through loopback",
  lane: "the express lane is off: the daemon's path serves",
};

/** Loopback answers come in well under a millisecond; these only bound a
 * check that meets a broken mechanism (never a hang). */
const ANSWER_MS = 1000;
const CHECK_ATTEMPTS = 2;
const LANE_MS = 500;
/** The lane's own thread takes a connection the runtime left on a listener
 * after two looks STALL_CHECK_MS apart (c/express_lane.c): one taken
 * sooner was taken by the runtime's accept. */
const STALL_CHECK_MS = 50;
const MARK = new TextEncoder().encode("portmux-runtime-check");

export type Trigger = "start" | "reload";

/** A check that cannot run for want of a resource: no verdict. */
class CannotCheck extends Error {}

/** Where the checks run, read when each check runs (a fallback taken by an
 * earlier check may change them). */
export interface Targets {
  /** The HTTPS site to inject into (null: none). */
  readonly site: () => HttpsFrontend | null;
  /** The express lane (null: off). */
  readonly lane: () => ExpressLane | null;
  /** Turns to the fallback of a mechanism that just failed (with why). */
  readonly fallback: (m: Mechanism, error: string) => Promise<void> | void;
}

/** Resolves as p does, or rejects after ms (p's later failure is ignored:
 * its resources are closed by the caller). */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  p.catch(() => {});
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} within ${ms} ms`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

function closeQuietly(...resources: ({ close(): void } | null)[]): void {
  for (const r of resources) {
    try {
      r?.close();
    } catch { /* closed already */ }
  }
}

/** A connected loopback pair: our client end, and the conn Deno accepted. */
async function loopbackPair(): Promise<{ client: Deno.TcpConn; conn: Deno.TcpConn }> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const [client, conn] = await within(
      Promise.all([
        Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }),
        listener.accept(),
      ]),
      ANSWER_MS,
      "no loopback connection",
    );
    return { client, conn };
  } finally {
    listener.close();
  }
}

/** The first bytes conn receives; null at end of stream. */
async function readSome(conn: Deno.Conn, max: number): Promise<Uint8Array | null> {
  const buf = new Uint8Array(max);
  const n = await conn.read(buf);
  return n === null ? null : buf.subarray(0, n);
}

/** Throws unless fd sees the bytes client sends: it is that connection's
 * socket, whatever its addresses say. */
async function carries(shim: Shim, fd: number, client: Deno.Conn): Promise<void> {
  await client.write(MARK);
  const buf = new Uint8Array(MARK.length);
  let got = shim.fds.peek(fd, buf);
  if (got === null && await shim.fds.waitReadable(fd, ANSWER_MS)) got = shim.fds.peek(fd, buf);
  if (!got?.length || got.some((b, i) => b !== MARK[i])) {
    throw new Error(`fd ${fd} does not carry the connection's bytes`);
  }
}

/** How the fd of an accepted conn can be found: "lookup" when only the
 * fallback works (symbolError says why the symbol does not). */
export type FdWay =
  | { readonly via: "symbol"; readonly lookupError: string | null }
  | { readonly via: "lookup"; readonly symbolError: string };

/** Check 4: the runtime's fd symbol, verified, and the lookup by 4-tuple.
 * Throws when neither finds the connection's fd. */
export async function checkFd(shim: Shim): Promise<FdWay> {
  const { client, conn } = await loopbackPair();
  try {
    const local = conn.localAddr, peer = conn.remoteAddr;
    const symbol = fault("runtime-fd") ? undefined : internalFd(conn);
    let found: number | null = null, lookupError: string | null = null;
    try {
      found = shim.fds.find(local, peer);
    } catch (e) {
      lookupError = String(e);
    }
    if (symbol !== undefined && shim.fds.verify(symbol, local, peer)) {
      await carries(shim, symbol, client);
      if (lookupError === null && found !== symbol) {
        lookupError = `it found ${found}, not ${symbol}`;
      }
      return { via: "symbol", lookupError };
    }
    const symbolError = symbol === undefined
      ? `accepted connections have no "${FD_SYMBOL_DESCRIPTION}" symbol`
      : `the "${FD_SYMBOL_DESCRIPTION}" value ${symbol} is not the connection's socket`;
    if (found === null) throw new Error(`${symbolError}, and the lookup fails: ${lookupError}`);
    await carries(shim, found, client);
    return { via: "lookup", symbolError };
  } finally {
    closeQuietly(client, conn);
  }
}

/** Check 2: a connection released and closed as a handoff leaves it
 * (DenoClient.release) stays open in the copy a service would hold: the
 * copy is still connected and writes, and the peer reads, not EOF. */
export async function checkRelease(shim: Shim, fdOf: (c: Deno.TcpConn) => ConnFd): Promise<void> {
  const { client, conn } = await loopbackPair();
  const local = conn.localAddr, peer = conn.remoteAddr;
  let copy = -1;
  try {
    const { fd } = fdOf(conn);
    copy = shim.fds.dup(fd); // what SCM_RIGHTS gives the service
    if (fault("runtime-release")) conn.close(); // as if release had no effect
    else new DenoClient(conn, fd, shim).release();
    if (!shim.fds.verify(copy, local, peer)) throw new Error("the released socket lost its peer");
    try {
      await shim.fds.write(copy, MARK);
    } catch (e) {
      throw new Error(`closing the Deno object shut the socket down (the copy's write: ${e})`);
    }
    const got = await within(readSome(client, MARK.length), ANSWER_MS, "the peer read nothing");
    if (got === null) throw new Error("the peer saw EOF (FIN) when the Deno object closed");
  } finally {
    if (copy >= 0) shim.fds.close(copy);
    closeQuietly(client, conn);
  }
}

/** A ClientHello offering only TLS_NULL_WITH_NULL_NULL, which no TLS
 * server accepts: the site's TLS answers it at once with an alert, before
 * any key exchange (a full handshake would also time the first one's
 * crypto set-up, ~30 ms, which the check does not need to prove). */
const UNACCEPTABLE_HELLO = Uint8Array.from([
  ...[22, 3, 1, 0, 45], // record: handshake, 45 bytes
  ...[1, 0, 0, 41, 3, 3], // ClientHello, 41 bytes; TLS 1.2
  ...new Array(32).fill(0x70), // random
  ...[0, 0, 2, 0, 0, 1, 0], // no session; one suite: NULL; null compression
]);

/** A socket of ours with no Deno object: accepted by the shim from a
 * private listener, its client end connected. */
async function rawPair(shim: Shim): Promise<{ client: Deno.TcpConn; fd: number }> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const lfd = shim.listeners.find(listener.addr);
    const client = await within(
      Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }),
      ANSWER_MS,
      "no loopback connection",
    );
    let got = shim.listeners.acceptBatch(lfd, 1);
    if (got.length === 0 && await shim.fds.waitReadable(lfd, ANSWER_MS)) {
      got = shim.listeners.acceptBatch(lfd, 1);
    }
    if (!got[0]) {
      client.close();
      throw new Error("the loopback connection was not accepted");
    }
    return { client, fd: got[0].fd };
  } finally {
    listener.close();
  }
}

/** Check 1: a socket pushed into the site's queue reaches its Deno.serve,
 * whose TLS answers our ClientHello. A TLS record back (the alert) can
 * only come from the internal server's own accept4 having returned the
 * pushed fd and its TLS having read it: the socket is ours, from a private
 * listener, and the interposer drops anything else on that listener. */
export async function checkInject(shim: Shim, listenerFd: number): Promise<void> {
  const { client, fd } = await rawPair(shim);
  let pushed = false;
  try {
    await client.write(UNACCEPTABLE_HELLO);
    if (!fault("runtime-inject")) { // else: as if the runtime's accept never took it
      shim.inject.push(listenerFd, fd);
      pushed = true;
    }
    const answer = await within(readSome(client, 5), ANSWER_MS, "the HTTPS site did not answer");
    if (answer === null) {
      throw new Error("the HTTPS site closed the injected connection unanswered");
    }
    if ((answer[0] !== 22 && answer[0] !== 21) || answer[1] !== 3) {
      throw new Error(`the HTTPS site answered with no TLS record (byte ${answer[0]})`);
    }
  } finally {
    if (!pushed) shim.fds.close(fd);
    closeQuietly(client);
  }
}

/** The epoll sets of this process: their fd, and what each watches (fd ->
 * epoll data, the token the runtime reads back). */
function epollSets(): Map<number, string>[] {
  const sets: Map<number, string>[] = [];
  for (const e of Deno.readDirSync("/proc/self/fd")) {
    try {
      if (Deno.readLinkSync(`/proc/self/fd/${e.name}`) !== "anon_inode:[eventpoll]") continue;
      const info = Deno.readTextFileSync(`/proc/self/fdinfo/${e.name}`);
      const watched = new Map<number, string>();
      for (const m of info.matchAll(/tfd:\s*(\d+)\s+events:\s*\w+\s+data:\s*(\w+)/g)) {
        watched.set(Number(m[1]), m[2]!);
      }
      sets.push(watched);
    } catch { /* closed meanwhile */ }
  }
  return sets;
}

/** True when fd is watched in the set that watches site, under its token. */
function underToken(fd: number, site: number): boolean {
  return epollSets().some((s) => s.has(fd) && s.get(fd) === s.get(site));
}

/** Check 3: a listener of ours joins the lane, passing everything to the
 * daemon (no route, no line); a connection to it must come out of its
 * accept. With an HTTPS site in the lane's table, the listener must be
 * watched under the site's token and the connection taken before the
 * lane's thread could have (the runtime's accept took it). */
export async function checkLane(shim: Shim, lane: ExpressLane): Promise<string> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const lfd = shim.listeners.find(listener.addr);
  let joined = false;
  try {
    try {
      lane.listen(lfd);
    } catch (e) { // its listener slots are full: says nothing of the runtime
      if (e instanceof ShimError && e.code === "ENOSPC") {
        throw new CannotCheck(`no free slot: ${e}`);
      }
      throw e;
    }
    joined = true;
    lane.passAll(lfd, true);
    const site = lane.runtimeSite;
    if (site !== null && !underToken(lfd, site)) {
      throw new Error(`the listener is not watched under the site's epoll token (fd ${site})`);
    }
    if (fault("runtime-lane")) shim.lane.stop(lfd); // as if nothing took it
    return await takenBy(shim, listener, site);
  } finally {
    if (joined) {
      await lane.stopListening(lfd);
      shim.inject.unregister(lfd);
    }
    listener.close();
  }
}

/** Connects to the lane's listener; says who took the connection. */
async function takenBy(
  shim: Shim,
  listener: Deno.TcpListener,
  site: number | null,
): Promise<string> {
  const accepting = listener.accept();
  const started = performance.now();
  const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  let conn: Deno.TcpConn | null = null;
  try {
    conn = await within(accepting, LANE_MS, "the lane took no connection");
    if (conn.remoteAddr.port !== client.localAddr.port) throw new Error("a stranger's connection");
    if (site === null) return "the lane's thread (no HTTPS site)";
    const fd = internalFd(conn) ?? shim.fds.find(conn.localAddr, conn.remoteAddr);
    const age = shim.lane.ageMs(fd);
    const tookMs = age === null ? null : performance.now() - age - started;
    if (tookMs !== null && tookMs >= STALL_CHECK_MS) {
      throw new Error(`taken by the lane's thread after ${Math.round(tookMs)} ms, not the runtime`);
    }
    return "the runtime's accept";
  } finally {
    closeQuietly(client, conn);
  }
}

const round = (ms: number) => Math.round(ms * 100) / 100;

/** What a check found: why it failed or was skipped, or a note. */
interface Found {
  readonly status: "passed" | "failed" | "skipped";
  readonly text: string;
  readonly ms: number;
}

/** One run of the checks. */
interface Run {
  readonly trigger: Trigger;
  readonly targets: Targets;
  readonly found: Map<Mechanism, Found>;
}

/** The daemon's view: which mechanisms work, and the checks' runs. */
export class RuntimeChecks {
  readonly #shim: Shim;
  readonly #log: Logger;
  readonly #metrics: Metrics;
  /** Mechanisms that failed, and what they failed with: off until a restart. */
  readonly #failed = new Map<Mechanism, string>();
  #fdVia: "symbol" | "lookup" | "none" = "symbol";
  /** The lane, and the site it took its listeners under, when last proven:
   * each check takes one of the lane's listener slots (c/express_lane.c
   * reuses a stopped one only for the same fd), so a reload checks again
   * only when they changed. */
  #laneProven: { lane: ExpressLane; site: number | null } | null = null;

  constructor(shim: Shim, log: Logger, metrics: Metrics) {
    this.#shim = shim;
    this.#log = log;
    this.#metrics = metrics;
    metrics.counter(
      "portmux_runtime_check_failures_total",
      "Runtime mechanisms that failed their check (and were turned off), by mechanism.",
    );
  }

  /** False once the mechanism failed a check. */
  ok(m: Mechanism): boolean {
    return !this.#failed.has(m);
  }

  /** The verified fd of a conn Deno accepted, the way the check found to
   * work. Throws when none does. */
  fd(conn: Deno.TcpConn): ConnFd {
    if (this.#fdVia === "symbol") return connFd(this.#shim, conn);
    if (this.#fdVia === "lookup") {
      return { fd: this.#shim.fds.find(conn.localAddr, conn.remoteAddr), via: "lookup" };
    }
    throw new Error(`no way to find it passed the runtime check (${this.#failed.get("fd")})`);
  }

  /** Runs the checks; turns to the fallback of each that fails. Never
   * throws. */
  async run(trigger: Trigger, targets: Targets): Promise<void> {
    const started = performance.now();
    const run: Run = { trigger, targets, found: new Map() };
    // The first three are independent: at once. The lane's check reads what
    // inject's fallback left (bridged sites are not in the lane's table).
    await Promise.all((["fd", "release", "inject"] as const).map((m) => this.#attempt(m, run)));
    await this.#attempt("lane", run);
    const found = ORDER.map((m) => [m, run.found.get(m)!] as const);
    const named = (status: Found["status"]) => found.filter(([, f]) => f.status === status);
    const texts = (status: Found["status"]) =>
      Object.fromEntries(named(status).filter(([, f]) => f.text).map(([m, f]) => [m, f.text]));
    this.#log.info("runtime-checked", {
      trigger,
      passed: named("passed").map(([m]) => m),
      failed: named("failed").map(([m]) => m),
      skipped: texts("skipped"),
      notes: texts("passed"),
      fd_via: this.#fdVia,
      ms: round(performance.now() - started),
      check_ms: Object.fromEntries(
        found.filter(([, f]) => f.status !== "skipped").map(([m, f]) => [m, f.ms]),
      ),
    });
  }

  /** Checks m, unless it cannot be checked now; a failure turns to its
   * fallback at once. */
  async #attempt(m: Mechanism, run: Run): Promise<void> {
    const why = this.#skip(m, run.trigger, run.targets);
    if (why) return void run.found.set(m, { status: "skipped", text: why, ms: 0 });
    const at = performance.now();
    try {
      const note = await this.#checkTwice(m, run.targets);
      run.found.set(m, { status: "passed", text: note ?? "", ms: round(performance.now() - at) });
    } catch (e) {
      const error = e instanceof Error ? e.message : String(e);
      if (e instanceof CannotCheck) {
        return void run.found.set(m, { status: "skipped", text: error, ms: 0 });
      }
      run.found.set(m, { status: "failed", text: error, ms: round(performance.now() - at) });
      await this.#fail(m, error, run.trigger, run.targets);
    }
  }

  /** A mechanism is turned off for good only when it fails twice in a row:
   * a host busy enough to miss a deadline once (the lane's 50 ms) must not
   * lose the fast path. */
  async #checkTwice(m: Mechanism, t: Targets): Promise<string | null> {
    for (let attempt = 1;; attempt++) {
      try {
        return await this.#check(m, t);
      } catch (e) {
        if (attempt === CHECK_ATTEMPTS || e instanceof CannotCheck) throw e;
      }
    }
  }

  /** Why m is not checked now, or null. */
  #skip(m: Mechanism, trigger: Trigger, t: Targets): string | null {
    if (!this.ok(m)) return "off since it failed a check";
    if (m === "inject") {
      const site = t.site();
      if (!site) return "no HTTPS site";
      if (site.mode !== "inject") return "HTTPS is bridged (the shim is not preloaded)";
      if (site.listenerFd === null) return "the HTTPS site is down";
    }
    if (m === "lane") {
      const lane = t.lane();
      if (!lane) return "the express lane is off";
      const proven = this.#laneProven;
      if (trigger === "reload" && proven?.lane === lane && proven.site === lane.runtimeSite) {
        return "proven under this site before";
      }
    }
    return null;
  }

  /** Runs m's check; returns a note, or throws why it failed. */
  async #check(m: Mechanism, t: Targets): Promise<string | null> {
    switch (m) {
      case "fd": {
        const way = await checkFd(this.#shim);
        if (way.via === "lookup") {
          this.#fdVia = "lookup";
          throw new Error(`${way.symbolError} (the lookup by 4-tuple works)`);
        }
        return way.lookupError && `the fallback lookup fails: ${way.lookupError}`;
      }
      case "release":
        await checkRelease(this.#shim, (c) => this.fd(c));
        return null;
      case "inject":
        await checkInject(this.#shim, t.site()!.listenerFd!);
        return null;
      case "lane": {
        const lane = t.lane()!;
        const by = await checkLane(this.#shim, lane);
        this.#laneProven = { lane, site: lane.runtimeSite };
        return `taken by ${by}`;
      }
    }
  }

  async #fail(m: Mechanism, error: string, trigger: Trigger, t: Targets): Promise<void> {
    this.#failed.set(m, error);
    if (m === "fd" && this.#fdVia !== "lookup") this.#fdVia = "none";
    const fallback = m !== "fd"
      ? FALLBACKS[m]
      : this.#fdVia === "lookup"
      ? "fds are found by the lookup by 4-tuple"
      : "connections Deno accepts are refused";
    this.#metrics.inc("portmux_runtime_check_failures_total", { mechanism: m });
    this.#log.error("runtime-check-failed", { mechanism: m, error, fallback, trigger });
    try {
      await t.fallback(m, error);
    } catch (e) {
      this.#log.error("runtime-fallback-failed", { mechanism: m, error: String(e) });
    }
  }
}
