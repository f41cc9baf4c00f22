/**
 * systemd socket activation (sd_listen_fds(3)): portmux serves on the
 * sockets it is given, matched to its listen: entries, and a restart while
 * the socket is held (as portmux.socket holds it) refuses no connection:
 * clients wait in the socket's queue while the new process starts.
 * tests/services/socket_holder.py plays systemd.
 */
import assert from "node:assert/strict";
import { demoConfig } from "./helpers/configs.ts";
import { join } from "node:path";
import { freePort, httpsStatus, type LogLine, TestDaemon } from "./helpers/daemon.ts";
import { loadClients } from "./helpers/load_clients.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const HOLDER = join(ROOT, "tests/services/socket_holder.py");

/** portmux (through the launcher, as the unit runs it) under the holder. */
async function activated(config: string, workers = 1) {
  const dir = await Deno.makeTempDir({ prefix: "portmux-activation-" });
  await Deno.writeTextFile(join(dir, "config.yaml"), config);
  const port = Number(/port: (\d+)/.exec(config)![1]);
  const child = new Deno.Command("python3", {
    args: [
      HOLDER,
      String(port),
      Deno.execPath(),
      "run",
      "-A",
      join(ROOT, "src/launch.ts"),
      "--parallel",
      String(workers),
      "--config",
      join(dir, "config.yaml"),
    ],
    cwd: ROOT,
    env: { PORTMUX_DATA_DIR: dir },
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const d = new TestDaemon(child);
  const writer = child.stdin.getWriter();
  const say = (line: string) => writer.write(new TextEncoder().encode(line + "\n"));
  return { d, port, say, child };
}

const count = (d: TestDaemon, event: string) => d.logs.filter((l: LogLine) => l.event === event);

Deno.test("socket activation: portmux serves on systemd's socket, and a restart while it is held refuses no connection", async () => {
  const port = freePort();
  const { d, say, child } = await activated(demoConfig(port));
  try {
    await d.waitFor((l) => l.event === "started", 30_000);
    assert.equal((await d.waitFor((l) => l.event === "listening")).address, `127.0.0.1:${port}`);
    assert.equal(await httpsStatus(port), "200");

    // 6,000 private-protocol clients, 16 at a time, while portmux restarts.
    const load = loadClients("echo", port, 6000, 16, "", 30);
    // Restart once the load is under way (slow machines start it late).
    await d.waitFor((l) => l.event === "connection" && l.outcome === "handed-off", 30_000);
    await say("restart");
    await d.waitFor((l) => l.event === "restarted");
    await d.waitFor(() => count(d, "started").length === 2, 30_000);
    const echoed = await load.waitFor("echoed", 90_000);
    await load.done();
    assert.deepEqual([echoed.ok, echoed.bad, echoed.errors], [6000, 0, 0], JSON.stringify(echoed));
    assert.equal(count(d, "restarted")[0]!.code, 0, "the first one stopped cleanly");
    await say("stop");
    await d.waitFor((l) => l.event === "stopped");
    // Both processes served part of the load: the restart came in its midst.
    const served = count(d, "stats").map((l) =>
      Number(l['portmux_connections_total{route="private",outcome="handed-off"}'] ?? 0)
    );
    assert.equal(served.length, 2);
    assert.ok(served.every((n) => n > 0), `handed off by each: ${served}`);
    assert.equal(served[0]! + served[1]!, 6000);
  } finally {
    await say("stop").catch(() => {});
    await child.status;
  }
});

Deno.test("socket activation: a socket that no listen: entry names stops the start, saying which", async () => {
  const port = freePort();
  const other = freePort();
  const { d, say, child } = await activated(`
listen: [{ address: 127.0.0.1, port: ${port} }, { address: 127.0.0.1, port: ${other} }]
routes: [{ name: none, match: { prefix: X }, action: close }]
`);
  try {
    for (let i = 0; i < 100 && !d.stderr.some((l) => l.includes("cannot start")); i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    await say("stop");
    await child.status;
    const err = d.stderr.join("\n");
    assert.match(
      err,
      new RegExp(
        `portmux: cannot start: listen: 127\\.0\\.0\\.1:${other} has no socket from systemd`,
      ),
    );
    assert.equal(count(d, "stopped")[0]?.code, 1);
  } finally {
    await child.status;
  }
});
