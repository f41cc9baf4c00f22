/**
 * KV1, a line-based key-value service that receives its clients from
 * portmux, on the service SDK (src/service/mod.ts, imported by path as a
 * service outside the repository would import it, by path or URL).
 *
 *   deno run -A examples/deno/kv.ts SOCKET_PATH [--sender-uid UID]
 *
 * The SDK reads the channels, pairs records with fds and checks the
 * sender's uid (default: this service's own); each client is a node:net
 * Socket, served as its bytes come, so no client waits for another.
 */
import { Buffer } from "node:buffer";
import type { Socket } from "node:net";
import { serve } from "../../src/service/mod.ts";

const MAX_LINE = 4096; // a client's line, its newline included

const [path, flag, uid, ...extra] = Deno.args;
const senderUid = flag === undefined ? undefined : Number(uid);
if (
  !path || path.startsWith("-") || extra.length > 0 ||
  (flag !== undefined &&
    (flag !== "--sender-uid" || !(Number.isInteger(senderUid) && senderUid! >= 0)))
) {
  console.error("usage: kv.ts SOCKET_PATH [--sender-uid UID]");
  Deno.exit(2);
}

// One store for the whole process. Keys and values are bytes, held as
// latin1 strings (one char per byte).
const store = new Map<string, string>();

/** The reply to one command line (without its newline). */
function answer(line: string, who: string): string {
  const [command, key, ...rest] = line.split(" ");
  if (command === "SET" && key && rest.length > 0) {
    store.set(key, rest.join(" "));
    return "OK";
  }
  if (command === "GET" && key && rest.length === 0) return store.get(key) ?? "NOTFOUND";
  if (line === "WHO") return who;
  return "ERR bad command";
}

/** One client, from its very first byte: portmux only peeked. */
function serveClient(socket: Socket, who: string): void {
  let pending = Buffer.alloc(0);
  let greeted = false;
  let done = false;
  const finish = (reply: string) => {
    done = true;
    socket.end(reply);
  };
  socket.on("error", () => socket.destroy());
  socket.on("data", (chunk: Buffer) => {
    if (done) return;
    pending = Buffer.concat([pending, chunk]);
    let nl: number;
    while (!done && (nl = pending.indexOf(10)) >= 0) {
      if (nl >= MAX_LINE) return finish("ERR line too long\n");
      let line = pending.subarray(0, nl).toString("latin1");
      pending = pending.subarray(nl + 1);
      if (line.endsWith("\r")) line = line.slice(0, -1); // a CRLF line, as nc -C or telnet send
      if (!greeted) {
        if (line !== "KV1") return finish("ERR expected KV1\n");
        greeted = true;
        continue;
      }
      socket.write(Buffer.from(answer(line, who) + "\n", "latin1"));
    }
    if (!done && pending.length >= MAX_LINE) finish("ERR line too long\n");
  });
}

const receiver = await serve(path, ({ record, adopt }) => {
  const who = `${record.client.address} ${record.client.port}`;
  console.error(`kv: client ${who}`);
  serveClient(adopt(), who);
}, {
  ...(senderUid === undefined ? {} : { senderUid }),
  onProblem: (message) => console.error(`kv: ${message}`),
});
for (const signal of ["SIGTERM", "SIGINT"] as const) {
  Deno.addSignalListener(signal, async () => {
    await receiver.close(); // removes the socket file
    Deno.exit(0);
  });
}
console.error(`kv: listening on ${path}`);
