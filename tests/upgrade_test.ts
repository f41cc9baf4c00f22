/**
 * Upgrade in place (SIGUSR2 to the launcher): a new generation of workers
 * from the code and config now on disk; once each says it serves, the old
 * one drains. No connection fails, and the workers are new afterwards. A
 * new generation that cannot start is said, and the old one goes on.
 */
import assert from "node:assert/strict";
import { demoConfig } from "./helpers/configs.ts";
import { join } from "node:path";
import {
  freePort,
  httpsStatus,
  type LogLine,
  startDaemon,
  type TestDaemon,
} from "./helpers/daemon.ts";
import { loadClients } from "./helpers/load_clients.ts";

const config = demoConfig;

const workerPids = (d: TestDaemon, from = 0) =>
  d.logs.filter((l: LogLine) => l.event === "started").slice(from).map((l) => l.pid as number);

/** curl, one new TLS connection after another, until stop() is called. */
function httpsLoop(port: number) {
  const codes: string[] = [];
  let going = true;
  const done = (async () => {
    while (going) {
      codes.push(await httpsStatus(port));
    }
  })();
  return {
    codes,
    async stop() {
      going = false;
      await done;
    },
  };
}

Deno.test("SIGUSR2 upgrades in place under load: no connection fails, and every worker is new", async () => {
  const port = freePort();
  const d = await startDaemon({ workers: 2, config: config(port) });
  try {
    await d.waitFor(() => workerPids(d).length === 2);
    const before = workerPids(d);
    const https = httpsLoop(port);
    const load = loadClients("echo", port, 12_000, 8, "", 30);
    // Upgrade once the load is under way (slow machines start it late).
    await d.waitFor((l) => l.event === "connection" && l.outcome === "handed-off", 30_000);
    Deno.kill(d.launcherPid, "SIGUSR2");
    const upgraded = await d.waitFor((l) => l.event === "upgraded", 60_000);
    const after = workerPids(d, 2);
    assert.equal(after.length, 2);
    assert.deepEqual([...(upgraded.pids as number[])].sort(), [...after].sort());
    assert.ok(after.every((p) => !before.includes(p)), "new workers");
    // The old generation drains and exits; the new one serves alone.
    for (const pid of before) {
      for (let i = 0; i < 100 && isAlive(pid); i++) await new Promise((r) => setTimeout(r, 100));
      assert.ok(!isAlive(pid), `old worker ${pid} exited`);
    }
    const echoed = await load.waitFor("echoed", 90_000);
    await load.done();
    await https.stop();
    assert.deepEqual(
      [echoed.ok, echoed.bad, echoed.errors],
      [12_000, 0, 0],
      JSON.stringify(echoed),
    );
    // The upgrade came in the midst of the load: both generations served.
    await d.stop();
    const handedOff = d.logs.filter((l) => l.event === "stats").map((l) =>
      Number(l['portmux_connections_total{route="private",outcome="handed-off"}'] ?? 0)
    );
    assert.equal(handedOff.length, 4);
    const [oldGen, newGen] = [handedOff[0]! + handedOff[1]!, handedOff[2]! + handedOff[3]!];
    assert.ok(oldGen > 0 && newGen > 0, `old ${oldGen}, new ${newGen}`);
    assert.equal(oldGen + newGen, 12_000);
    assert.ok(https.codes.length > 5, `${https.codes.length} HTTPS requests`);
    assert.deepEqual(https.codes.filter((c) => c !== "200"), []);
    assert.deepEqual(d.logs.filter((l) => l.event === "worker-exited"), []);
  } finally {
    await d.stop();
  }
});

Deno.test("an upgrade whose new generation cannot start is said, and the old one goes on serving", async () => {
  const port = freePort();
  const dir = await Deno.makeTempDir({ prefix: "portmux-upgrade-" });
  const d = await startDaemon({ dataDir: dir, config: config(port) });
  try {
    await d.waitFor((l) => l.event === "started");
    const before = workerPids(d);
    // A config the new generation refuses (its handler module is missing).
    await Deno.writeTextFile(
      join(dir, "config.yaml"),
      config(port) + `https: { handler: ${JSON.stringify(join(dir, "missing.ts"))} }\n`,
    );
    Deno.kill(d.launcherPid, "SIGUSR2");
    const failed = await d.waitFor((l) => l.event === "upgrade-failed", 60_000);
    assert.match(String(failed.error), /exited|config/);
    assert.equal(await httpsStatus(port), "200");
    assert.ok(before.every(isAlive), "the old workers serve on");
  } finally {
    await d.stop();
  }
});

Deno.test("a changed listen: takes an upgrade: the new generation listens where the config says (beside the old one's admin port)", async () => {
  const port = freePort();
  const dir = await Deno.makeTempDir({ prefix: "portmux-upgrade-listen-" });
  // A fixed admin port: both generations' workers hold it for a moment.
  const admin = `admin: { port: ${freePort()} }\n`;
  const d = await startDaemon({ dataDir: dir, config: config(port) + admin });
  try {
    await d.waitFor((l) => l.event === "started");
    const extra = freePort();
    await Deno.writeTextFile(
      join(dir, "config.yaml"),
      config(port).replace(
        `port: ${port} }]`,
        `port: ${port} }, { address: 127.0.0.1, port: ${extra} }]`,
      ) + admin,
    );
    Deno.kill(d.launcherPid, "SIGUSR2");
    await d.waitFor((l) => l.event === "upgraded", 60_000);
    assert.equal(await httpsStatus(extra), "200");
    assert.equal(await httpsStatus(port), "200");
  } finally {
    await d.stop();
  }
});

function isAlive(pid: number): boolean {
  try {
    Deno.kill(pid, "SIGCONT"); // harmless: a signal that asks nothing
    return true;
  } catch {
    return false;
  }
}
