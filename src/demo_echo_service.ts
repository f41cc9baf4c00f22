/**
 * The built-in demo protocol service, and the example of a Deno service on
 * src/service_receiver.ts: receives handed-off connections on a Unix
 * socket and echoes every byte back to the client. The daemon runs it as a
 * child process, with --exit-with-stdin: it exits when its stdin closes
 * (the daemon is gone). Run on its own (config/systemd/), it runs until
 * stopped.
 *
 *   deno run -A src/demo_echo_service.ts --socket PATH [--exit-with-stdin]
 */
import { Shim } from "../ffi/shim.ts";
import { serveHandoffs } from "./service_receiver.ts";

const at = Deno.args.indexOf("--socket");
const path = at >= 0 ? Deno.args[at + 1] : undefined;
if (!path) {
  console.error("usage: demo_echo_service.ts --socket PATH [--exit-with-stdin]");
  Deno.exit(2);
}

// Run by portmux, which holds our stdin open: when it goes away, so do we.
if (Deno.args.includes("--exit-with-stdin")) {
  (async () => {
    for await (const _ of Deno.stdin.readable) { /* nothing is sent */ }
    Deno.exit(0);
  })();
}

await serveHandoffs(new Shim(), path, (connection) => {
  const socket = connection.adopt();
  socket.on("error", () => socket.destroy());
  socket.pipe(socket); // echo; ends our side when the client ends its own
}, { onProblem: (message) => console.error(`echo service: ${message}`) });
console.log("ready");
