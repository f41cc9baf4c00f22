/** admin: where /metrics and /healthz are served (src/ops/admin.ts). */
import { ipBytes, isLoopback } from "../net/ip.ts";
import type { Reader } from "./reader.ts";

export interface Admin {
  readonly address: string;
  readonly port: number;
  /** Required off loopback: anyone who can reach it could read the metrics. */
  readonly token: string | null;
}

/** null when there is no admin section: served nowhere. */
export function readAdmin(r: Reader): Admin | null {
  if (r.value(["admin"]) === undefined) return null;
  r.keys(["admin"], ["address", "port", "token"]);
  const address = r.string(["admin", "address"]) ?? "127.0.0.1";
  if (!ipBytes(address)) {
    r.fail(["admin", "address"], `"${address}" is not an IPv4 or IPv6 address`);
  }
  const token = readToken(r, address);
  return {
    address,
    port: r.required(["admin", "port"], r.integer(["admin", "port"], 0, 65535)),
    token,
  };
}

function readToken(r: Reader, address: string): string | null {
  const token = r.string(["admin", "token"]) ?? null;
  if (token === null && !isLoopback(address)) {
    r.fail(
      ["admin", "token"],
      `is required when the admin address is not loopback (${address}): anyone who can ` +
        "reach it could read the metrics",
    );
  }
  if (token !== null && !/^[\x21-\x7e]{16,}$/.test(token)) {
    r.fail(["admin", "token"], "must be at least 16 printable characters, without spaces");
  }
  return token;
}

/** The token itself is never shown. */
export function describeAdmin(a: Admin | null): Record<string, unknown> | null {
  return a && { ...a, token: a.token === null ? null : "(set)" };
}
