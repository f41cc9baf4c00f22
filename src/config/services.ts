/** services: the processes connections are handed to (action: handoff). */
import { join } from "node:path";
import type { Reader } from "./reader.ts";

export interface Service {
  readonly name: string;
  /** The Unix sockets of its instances (handoffs are spread over them). */
  readonly sockets: readonly string[];
  /** The uid the service must run as (SO_PEERCRED); -1 accepts any. */
  readonly uid: number;
  /** The gid it must run as; -1 accepts any. */
  readonly gid: number;
  /** A file holding the pid the service must have; null: any pid. */
  readonly pidFile: string | null;
  /** Set when portmux runs a built-in service itself ("echo"). */
  readonly builtin?: "echo";
}

/** dataDir: where a built-in service's socket is made. */
export function readServices(r: Reader, dataDir: string): Map<string, Service> {
  const services = new Map<string, Service>();
  for (const name of serviceNames(r)) services.set(name, readService(r, name, dataDir));
  return services;
}

function serviceNames(r: Reader): string[] {
  const v = r.value(["services"]);
  if (v === undefined) return [];
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    r.fail(["services"], "expected a map of service names");
  }
  return Object.keys(v);
}

function readService(r: Reader, name: string, dataDir: string): Service {
  const at = ["services", name];
  r.keys(at, ["socket", "uid", "gid", "pid_file", "builtin"]);
  const builtin = r.string([...at, "builtin"]);
  if (builtin !== undefined && builtin !== "echo") {
    r.fail([...at, "builtin"], `unknown built-in service "${builtin}" (expected: echo)`);
  }
  const sockets = readSockets(r, name, builtin !== undefined, dataDir);
  const uid = r.integer([...at, "uid"], -1, 2 ** 31 - 1) ?? Deno.uid() ?? -1;
  const gid = r.integer([...at, "gid"], -1, 2 ** 31 - 1) ?? -1;
  const pidFileText = r.string([...at, "pid_file"]);
  return {
    name,
    sockets,
    uid,
    gid,
    pidFile: pidFileText ? r.resolve(pidFileText) : null,
    ...(builtin ? { builtin: "echo" as const } : {}),
  };
}

/** A built-in service's one socket is portmux's own, in dataDir. */
function readSockets(r: Reader, name: string, builtin: boolean, dataDir: string): string[] {
  const at = ["services", name, "socket"];
  const listed = r.strings(at);
  if (!listed && !builtin) r.fail(at, "is required");
  if (listed && builtin) r.fail(at, "a built-in service's socket is made by portmux");
  const sockets = listed?.map((s) => r.resolve(s)) ?? [join(dataDir, `${name}.sock`)];
  for (const socket of sockets) {
    if (new TextEncoder().encode(socket).length > 107) {
      r.fail(at, `${socket} is longer than a Unix socket path may be (107 bytes)`);
    }
  }
  return sockets;
}

export function describeServices(services: ReadonlyMap<string, Service>): Record<string, unknown> {
  return Object.fromEntries(
    [...services.values()].map((s) => [
      s.name,
      s.builtin
        ? { builtin: s.builtin, socket: s.sockets }
        : { socket: s.sockets, uid: s.uid, gid: s.gid, pid_file: s.pidFile },
    ]),
  );
}
