/**
 * The launcher behind `deno task start`: builds the shim if it is missing
 * or stale, then runs src/main.ts in a new Deno process with the shim in
 * LD_PRELOAD, so that its accept4 interposes the runtime's and HTTPS gets
 * accept injection (DESIGN.md fact 4). Signals are passed on; the exit
 * code is the daemon's.
 */
import { buildShim } from "./build_shim.ts";

let shim: string;
try {
  shim = await buildShim();
} catch (e) {
  console.error(`portmux: ${(e as Error).message}`);
  Deno.exit(1);
}

const preload = [shim, Deno.env.get("LD_PRELOAD")].filter(Boolean).join(":");
const main = new URL("./main.ts", import.meta.url).pathname;
const child = new Deno.Command(Deno.execPath(), {
  args: ["run", "-A", main, ...Deno.args],
  env: { LD_PRELOAD: preload },
  stdin: "inherit",
}).spawn();

for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  Deno.addSignalListener(signal, () => {
    try {
      child.kill(signal);
    } catch { /* already exited */ }
  });
}
const status = await child.status;
Deno.exit(status.code);
