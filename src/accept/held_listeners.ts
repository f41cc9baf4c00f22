/**
 * The listening sockets the supervisor holds for its workers. Held there,
 * a socket outlives any worker: what waits in its queue when a worker
 * dies is accepted by the others (they all accept on the one socket), and
 * a new generation of workers (an upgrade) accepts on it while the old one
 * drains: no connection is refused.
 *
 * The sockets are the ones systemd passes (socket activation,
 * sd_listen_fds(3): LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES; fds from 3),
 * which must match the config's `listen:` entries one for one, or else
 * sockets the supervisor binds itself. Workers inherit them (and no other
 * child does: withInherited) and learn which is which from
 * PORTMUX_LISTENERS; each worker makes its runtime accept on them
 * (shim.inject.adoptListener).
 */
import { type Endpoint, type Shim, ShimError } from "../../ffi/shim.ts";
import type { Listen } from "../config/config.ts";
import { ipBytes } from "../net/ip.ts";

/** The environment variable that tells a worker its held sockets. */
export const LISTENERS_ENV = "PORTMUX_LISTENERS";

/** A held socket: the `listen:` entry it serves ("address|port" as
 * configured) and its fd. */
export interface HeldListener {
  readonly key: string;
  readonly fd: number;
}

/** How a `listen:` entry is known: by its configured address and port. */
export function listenKey(l: Pick<Listen, "address" | "port">): string {
  return `${l.address}|${l.port}`;
}

const FIRST_SYSTEMD_FD = 3;

/** The sockets systemd passed this process, if any (sd_listen_fds(3)):
 * only when LISTEN_PID names us; null when there are none. */
function systemdFds(env: (name: string) => string | undefined): number[] | null {
  const pid = env("LISTEN_PID"), count = env("LISTEN_FDS");
  if (pid === undefined || count === undefined || Number(pid) !== Deno.pid) return null;
  const n = Number(count);
  if (!Number.isInteger(n) || n < 1) return null;
  return Array.from({ length: n }, (_, i) => FIRST_SYSTEMD_FD + i);
}

function sameAddress(a: string, b: string): boolean {
  const x = ipBytes(a), y = ipBytes(b);
  return x !== null && y !== null && x.length === y.length && x.every((v, i) => v === y[i]);
}

function shown(at: Endpoint): string {
  return at.hostname.includes(":") ? `[${at.hostname}]:${at.port}` : `${at.hostname}:${at.port}`;
}

/** Matches systemd's sockets to the listen entries, one for one; throws
 * an Error that names what does not match. */
function matchSystemd(shim: Shim, fds: number[], listen: readonly Listen[]): HeldListener[] {
  const left = [...listen];
  const held: HeldListener[] = [];
  for (const fd of fds) {
    const at = shim.listeners.address(fd);
    if (!at) throw new Error(`systemd passed fd ${fd}, which is not a listening TCP socket`);
    const i = left.findIndex((l) => l.port === at.port && sameAddress(l.address, at.hostname));
    if (i < 0) {
      throw new Error(
        `systemd passed a socket on ${shown(at)}, which no listen: entry names (they are: ${
          listen.map((l) => shown({ hostname: l.address, port: l.port })).join(", ")
        }); make ListenStream= and listen: agree`,
      );
    }
    held.push({ key: listenKey(left[i]!), fd });
    left.splice(i, 1);
  }
  if (left.length) {
    throw new Error(
      `listen: ${
        left.map((l) => shown({ hostname: l.address, port: l.port })).join(", ")
      } has no socket from systemd; add a ListenStream= for it to the socket unit`,
    );
  }
  return held;
}

/**
 * The sockets for the config's listen entries: systemd's when it passed
 * some (then LISTEN_* are removed from our environment, as
 * sd_listen_fds(1) does, so that no child takes them for its own), else
 * bound here. They are left open across exec for the workers. Throws an
 * Error that says what went wrong.
 */
/** The sockets held, and who made them. */
export interface Held {
  readonly listeners: readonly HeldListener[];
  /** systemd's (it keeps them when we stop) or bound here. */
  readonly from: "systemd" | "bound";
}

export function holdListeners(
  shim: Shim,
  listen: readonly Listen[],
  env: (name: string) => string | undefined = (n) => Deno.env.get(n),
): Held {
  const fds = systemdFds(env);
  let held: HeldListener[];
  if (fds) {
    held = matchSystemd(shim, fds, listen);
    for (const name of ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"]) Deno.env.delete(name);
  } else {
    held = [];
    try {
      for (const l of listen) {
        held.push({ key: listenKey(l), fd: shim.listeners.open(l.address, l.port) });
      }
    } catch (e) {
      for (const h of held) shim.fds.close(h.fd);
      const l = listen[held.length]!;
      const why = e instanceof ShimError && e.code === "EADDRINUSE" ? "Address already in use" : e;
      throw new Error(`cannot listen on ${shown({ hostname: l.address, port: l.port })}: ${why}`);
    }
  }
  // Only the workers get them (withInherited), no other child.
  for (const h of held) shim.fds.setCloseOnExec(h.fd, true);
  return { listeners: held, from: fds ? "systemd" : "bound" };
}

/** The sockets for a new config's listen entries (an upgrade): the held
 * one for an entry that has one, else a new one bound here. */
export function holdMore(shim: Shim, held: Held, listen: readonly Listen[]): HeldListener[] {
  const byKey = new Map(held.listeners.map((h) => [h.key, h.fd]));
  const fresh = listen.filter((l) => !byKey.has(listenKey(l)));
  const bound = fresh.length ? holdListeners(shim, fresh, () => undefined).listeners : [];
  return [
    ...held.listeners.filter((h) => listen.some((l) => listenKey(l) === h.key)),
    ...bound,
  ];
}

/** Closes the sockets of these that keep does not have. */
export function closeExcept(
  shim: Shim,
  these: readonly HeldListener[],
  keep: readonly HeldListener[],
): void {
  for (const h of these) if (!keep.some((k) => k.fd === h.fd)) shim.fds.close(h.fd);
}

/** Runs spawn (which starts a worker) with the sockets inheritable: they
 * are close-on-exec at every other moment, so that no other child (a
 * built-in service, say) holds a listening socket. */
export function withInherited<T>(shim: Shim, held: readonly HeldListener[], spawn: () => T): T {
  for (const h of held) shim.fds.setCloseOnExec(h.fd, false);
  try {
    return spawn();
  } finally {
    for (const h of held) shim.fds.setCloseOnExec(h.fd, true);
  }
}

/** What a worker's environment says of its held sockets, by listen key.
 * They are made close-on-exec at once: no child of the worker's holds
 * them. */
export function inheritedListeners(
  shim: Shim,
  env: (name: string) => string | undefined = (n) => Deno.env.get(n),
): Map<string, number> {
  const text = env(LISTENERS_ENV);
  const held = text ? JSON.parse(text) as HeldListener[] : [];
  for (const h of held) shim.fds.setCloseOnExec(h.fd, true);
  return new Map(held.map((h) => [h.key, h.fd]));
}
