/**
 * The HTTPS baseline: Deno.serve alone, with the same handler, certificate
 * and key as portmux serves in the benchmark.
 *
 *   deno run -A bench/https_direct.ts --port N --cert FILE --key FILE
 */
import handler from "./hello_handler.ts";

const arg = (name: string) => Deno.args[Deno.args.indexOf(name) + 1]!;
Deno.serve({
  hostname: "127.0.0.1",
  port: Number(arg("--port")),
  cert: Deno.readTextFileSync(arg("--cert")),
  key: Deno.readTextFileSync(arg("--key")),
  onListen: () => console.log("ready"),
}, handler.fetch);
