/**
 * The launcher behind `deno task start`: builds the shim if it is missing
 * or stale, then runs the daemon (src/main.ts) under the supervisor, with
 * the shim preloaded (src/ops/supervisor.ts: --parallel, signals, restarts).
 */
import { buildShim } from "./build_shim.ts";
import { supervise } from "./ops/supervisor.ts";

let shim: string;
try {
  shim = await buildShim();
} catch (e) {
  console.error(`portmux: ${(e as Error).message}`);
  Deno.exit(1);
}
const main = new URL("./main.ts", import.meta.url).pathname;
Deno.exit(
  await supervise({
    shim,
    daemon: [Deno.execPath(), "run", "-A", "--unstable-net", main],
    args: Deno.args,
  }),
);
