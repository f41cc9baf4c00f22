/**
 * Faults that tests switch on to see the daemon survive what it cannot
 * otherwise be made to meet on loopback: PORTMUX_TEST_FAULTS, a comma
 * list. Never set it in production.
 *
 * - https-accept: the first HTTPS site's first internal accept fails (as a
 *   Deno.serve meeting an accept error: it stops for good).
 * - https-restart: the first start again of a stopped HTTPS site fails.
 * - runtime-fd, runtime-release, runtime-inject, runtime-lane: the first
 *   runtime check of that mechanism (src/runtime_check.ts) meets it broken:
 *   the runtime's fd symbol is ignored; the conn is closed without release;
 *   the socket is not pushed; the lane stops taking connections.
 */
export type Fault =
  | "https-accept"
  | "https-restart"
  | "runtime-fd"
  | "runtime-release"
  | "runtime-inject"
  | "runtime-lane";

const faults = new Set((Deno.env.get("PORTMUX_TEST_FAULTS") ?? "").split(",").filter(Boolean));

/** Whether the fault is on; once on, it is spent (each fault fires once). */
export function fault(name: Fault): boolean {
  return faults.delete(name);
}
