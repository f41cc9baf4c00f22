/**
 * The benchmark's protocol service: one echo, reachable two ways, so that
 * "direct" and "through portmux" run the same service code:
 *   - a TCP port (the baseline: clients connect straight to it);
 *   - a Unix socket that takes connections handed off by portmux.
 * Both give the echo a node:net Socket, through a callback.
 *
 *   deno run -A bench/echo_service.ts --tcp-port N --socket PATH
 */
import net from "node:net";
import { Shim } from "../ffi/shim.ts";
import { serveHandoffs } from "../src/service/receiver.ts";

const arg = (name: string) => Deno.args[Deno.args.indexOf(name) + 1]!;

function echo(socket: net.Socket): void {
  socket.setNoDelay(true);
  socket.on("error", () => socket.destroy());
  socket.pipe(socket);
}

const server = net.createServer(echo);
await new Promise<void>((r) => server.listen(Number(arg("--tcp-port")), "127.0.0.1", r));
await serveHandoffs(new Shim(), arg("--socket"), (connection) => echo(connection.adopt()), {
  onProblem: (message) => console.error(message),
});
console.log("ready");
