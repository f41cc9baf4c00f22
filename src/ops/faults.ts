/**
 * Faults that tests switch on to see the daemon survive what it cannot
 * otherwise be made to meet on loopback: PORTMUX_TEST_FAULTS, a comma
 * list; "name:N" fires N times, "name" once. Never set it in production.
 *
 * - https-accept: the first HTTPS site's first internal accept once the
 *   daemon serves fails (as a Deno.serve meeting an accept error: it stops
 *   for good).
 * - https-restart: a start again of a stopped HTTPS site fails.
 * - runtime-fd, runtime-release, runtime-inject, runtime-lane: the first
 *   runtime check of that mechanism (src/ops/runtime_check.ts) meets it broken:
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

/** By name, how many more times each fault fires: "name" once, "name:N"
 * N times. */
const faults = new Map(
  (Deno.env.get("PORTMUX_TEST_FAULTS") ?? "").split(",").filter(Boolean).map((f) => {
    const [name, times] = f.split(":");
    return [name!, Number(times ?? 1)];
  }),
);

/** Whether the fault fires now (each time spends one). */
export function fault(name: Fault): boolean {
  const left = faults.get(name) ?? 0;
  if (left > 0) faults.set(name, left - 1);
  return left > 0;
}
