/**
 * The Deno service SDK (src/service/mod.ts) as a service author uses it:
 * imported by path from a folder outside the repository (no import map, no
 * deno.json), it receives clients that the real daemon hands off.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { startDaemon } from "./helpers/daemon.ts";
import { readAtLeast, writeAll } from "./helpers/client.ts";
import { readLines } from "./helpers/lines.ts";

const SDK = new URL("../src/service/mod.ts", import.meta.url).href;

Deno.test("a service written on src/service/mod.ts, outside the repository, gets the daemon's clients with their record", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-sdk-" });
  const socket = join(dir, "kv.sock");
  await Deno.writeTextFile(
    join(dir, "service.ts"),
    `import { serve } from ${JSON.stringify(SDK)};
const receiver = await serve(Deno.args[0], (client) => {
  const socket = client.adopt();
  socket.write("hello " + client.record.route + " " + client.record.client.address + "\\n");
  socket.pipe(socket);
});
console.log("ready");
Deno.addSignalListener("SIGTERM", () => {
  receiver.close();
  Deno.exit(0);
});
`,
  );
  const service = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "service.ts", socket],
    cwd: dir, // where an author's service lives: no import map there
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const ready = Promise.withResolvers<void>();
  const reading = readLines(service.stdout, (l) => l === "ready" && ready.resolve());
  const d = await startDaemon({
    dataDir: dir,
    config: `
listen: [{ address: 127.0.0.1, port: 0 }]
services: { kv: { socket: ${JSON.stringify(socket)} } }
routes: [{ name: kv, match: { prefix: "KV1" }, action: handoff, service: kv }]
`,
  });
  try {
    await ready.promise;
    const c = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
    await writeAll(c, new TextEncoder().encode("KV1\n"));
    assert.equal(await readAtLeast(c, 23), "hello kv 127.0.0.1\nKV1\n");
    c.close();
  } finally {
    await d.stop();
    service.kill("SIGTERM");
    await service.status;
    await reading;
  }
  assert.throws(
    () => Deno.lstatSync(socket),
    Deno.errors.NotFound,
    "close removed the socket file",
  );
});
