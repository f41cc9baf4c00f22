/**
 * The entry of the single binary (`deno task compile`), which has no C
 * compiler at hand: the shim is embedded. It extracts the shim to a private
 * runtime folder (hash-checked, src/ops/embedded_shim.ts) and runs itself again
 * as the daemon, with the shim preloaded, under the supervisor.
 *
 * Also runs uncompiled (`deno run -A src/portmux.ts`), reading the shim
 * from build/, which is how the tests exercise this path.
 */
import { extractShim } from "./ops/embedded_shim.ts";
import { supervise } from "./ops/supervisor.ts";

const ROLE = "PORTMUX_ROLE";

const role = Deno.env.get(ROLE);
if (role === "daemon") {
  await import("./main.ts");
} else if (role === "echo-service") {
  await import("./service/demo_echo.ts");
} else {
  // Under `deno task test:asan`, the sanitized build (never compiled in).
  const sanitized = Deno.env.get("PORTMUX_SHIM_SANITIZE") === "1" &&
    !import.meta.url.includes("/deno-compile-");
  const embedded = new URL(`../build/${sanitized ? "asan/" : ""}libportmux.so`, import.meta.url);
  // The daemon preloads the extracted copy: one inherited from LD_PRELOAD
  // (test:asan preloads its build into every process) would be a second.
  const preload = Deno.env.get("LD_PRELOAD");
  if (preload) {
    const others = preload.split(/[: ]/).filter((p) => p && !p.endsWith("/libportmux.so"));
    Deno.env.set("LD_PRELOAD", others.join(":"));
  }
  let shim: string;
  try {
    shim = await extractShim(await Deno.readFile(embedded));
  } catch (e) {
    console.error(`portmux: cannot prepare the shim: ${(e as Error).message}`);
    Deno.exit(1);
  }
  // Compiled, the binary is the daemon; uncompiled, Deno runs this file.
  const compiled = import.meta.url.includes("/deno-compile-");
  const self = compiled
    ? [Deno.execPath()]
    : [Deno.execPath(), "run", "-A", "--unstable-net", new URL(import.meta.url).pathname];
  // The daemon starts built-in services with the same command (their role
  // in PORTMUX_ROLE): a compiled binary has no `deno run`.
  const env = { [ROLE]: "daemon", PORTMUX_SHIM: shim, PORTMUX_SELF: JSON.stringify(self) };
  Deno.exit(await supervise({ shim, daemon: self, env, args: Deno.args }));
}
