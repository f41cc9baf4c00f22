/**
 * The built-in demo protocol service, and the example of a Deno service on
 * src/service/receiver.ts: receives handed-off connections on a Unix
 * socket and echoes every byte back to the client. The daemon runs it as a
 * child process, with --exit-with-stdin: it exits when its stdin closes
 * (the daemon is gone). Run on its own (config/systemd/), it runs until
 * stopped.
 *
 *   deno run -A src/service/demo_echo.ts --socket PATH [--exit-with-stdin]
 */
import { Shim } from "../../ffi/shim.ts";
import { serveHandoffs } from "./receiver.ts";

const at = Deno.args.indexOf("--socket");
const path = at >= 0 ? Deno.args[at + 1] : undefined;
if (!path) {
  console.error("usage: demo_echo.ts --socket PATH [--exit-with-stdin]");
  Deno.exit(2);
}

const receiver = await serveHandoffs(new Shim(), path, (connection) => {
  const socket = connection.adopt();
  socket.on("error", () => socket.destroy());
  socket.pipe(socket); // echo; ends our side when the client ends its own
}, { onProblem: (message) => console.error(`echo service: ${message}`) });

// When it stops, the socket file goes with it. Run by portmux, it stops
// when portmux closes our stdin (or is gone), not on a signal: Ctrl-C
// reaches our whole process group, and portmux, draining, may still hand
// us clients.
const stop = () => {
  receiver.close(); // removes the socket file at once; the clients go with us
  Deno.exit(0);
};
const byPortmux = Deno.args.includes("--exit-with-stdin");
for (const signal of ["SIGTERM", "SIGINT"] as const) {
  Deno.addSignalListener(signal, byPortmux ? () => {} : stop);
}
if (byPortmux) {
  (async () => {
    for await (const _ of Deno.stdin.readable) { /* nothing is sent */ }
    stop();
  })();
}
console.log("ready");
