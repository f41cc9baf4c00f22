/**
 * Graceful stop on SIGTERM: no new connections; connections in preread get
 * their decision (at the latest at their deadline); HTTPS requests finish
 * within the drain timeout; exit code 0. And a stop never waits longer
 * than that.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { $, startDaemon } from "./helpers/daemon.ts";
import { seesEnd } from "./helpers/client.ts";

/** A handler module that answers after ms milliseconds. */
async function slowHandler(ms: number): Promise<string> {
  const file = join(await Deno.makeTempDir(), "slow.ts");
  await Deno.writeTextFile(
    file,
    `export default { async fetch() { await new Promise((r) => setTimeout(r, ${ms})); return new Response("finally\\n"); } };\n`,
  );
  return file;
}

const config = (handler: string, drainMs: number) => `
listen: [{ address: 127.0.0.1, port: 0 }]
preread: { timeout_ms: 1500, defer_accept: false } # the silent client is accepted at once
drain_timeout_ms: ${drainMs}
tls: { self_signed: true }
https: { handler: ${JSON.stringify(handler)} }
routes: [{ name: web, match: { protocol: tls }, action: https }]
`;

function curl(port: number) {
  return $`curl -sk --max-time 20 -w ' %{http_code}' https://127.0.0.1:${port}/`.spawn();
}

Deno.test("SIGTERM: a request in flight finishes, a silent client gets its decision, then exit 0", async () => {
  const d = await startDaemon({ config: config(await slowHandler(1000), 10_000) });
  const silent = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
  const request = curl(d.port);
  await d.waitFor((l) => l.event === "connection" && l.outcome === "https");
  const t0 = performance.now();
  const stopping = d.stop();
  const answer = await request;
  assert.equal(answer.stdout, "finally\n 200");
  assert.ok(await seesEnd(silent), "the silent client is closed at its deadline");
  const status = await stopping;
  const took = performance.now() - t0;
  assert.equal(status.code, 0);
  assert.ok(took < 5000, `stopped in ${took.toFixed(0)} ms`);
  const silentLine = d.logs.find((l) => l.event === "connection" && l.reason === "timeout");
  assert.ok(silentLine, "the silent client's decision is in the log");
  assert.equal(d.logs.find((l) => l.event === "drain-timeout"), undefined);
  // No new connections once stopping.
  await assert.rejects(Deno.connect({ hostname: "127.0.0.1", port: d.port }));
  silent.close();
});

Deno.test("SIGTERM: a request slower than the drain timeout does not hold the stop", async () => {
  const d = await startDaemon({ config: config(await slowHandler(15_000), 800) });
  const request = curl(d.port);
  await d.waitFor((l) => l.event === "connection" && l.outcome === "https");
  const t0 = performance.now();
  const status = await d.stop();
  const took = performance.now() - t0;
  assert.equal(status.code, 0);
  assert.ok(took < 4000, `stopped in ${took.toFixed(0)} ms despite a 15 s request`);
  assert.equal(d.logs.find((l) => l.event === "drain-timeout")?.drain_timeout_ms, 800);
  await request;
});

/** Signals every process of the daemon's group, as a terminal's Ctrl-C
 * (SIGINT) or systemd's default KillMode=control-group (SIGTERM) does:
 * each worker gets it directly, and again from the launcher. */
function signalGroup(d: { launcherPid: number }, signal: Deno.Signal): void {
  Deno.kill(-d.launcherPid, signal);
}

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  Deno.test(`${signal} to the whole process group: one request to stop, and a request in flight finishes`, async () => {
    const d = await startDaemon({
      config: config(await slowHandler(1500), 10_000),
      workers: 2,
      ownGroup: true,
    });
    await d.waitFor(() => d.logs.filter((l) => l.event === "started").length === 2);
    const request = curl(d.port);
    await d.waitFor((l) => l.event === "connection" && l.outcome === "https");
    signalGroup(d, signal);
    const answer = await request;
    assert.equal(answer.stdout, "finally\n 200");
    // No second signal: it stops by itself (a later one would be a second request).
    const status = await d.exited().finally(() => d.stop());
    assert.equal(status.code, 0);
    assert.equal(d.logs.filter((l) => l.event === "stopping").length, 2, "once per worker");
    assert.deepEqual(d.logs.filter((l) => l.event === "stopping-now"), []);
  });
}

Deno.test("a second Ctrl-C a moment later stops at once", async () => {
  const d = await startDaemon({
    config: config(await slowHandler(15_000), 20_000),
    ownGroup: true,
  });
  const request = curl(d.port);
  await d.waitFor((l) => l.event === "connection" && l.outcome === "https");
  signalGroup(d, "SIGINT");
  await d.waitFor((l) => l.event === "stopping");
  await new Promise((r) => setTimeout(r, 1500));
  const t0 = performance.now();
  signalGroup(d, "SIGINT");
  const status = await d.stop();
  assert.ok(performance.now() - t0 < 3000, "it did not wait for the 15 s request");
  assert.equal(status.code, 1);
  assert.equal((await d.waitFor((l) => l.event === "stopping-now")).signal, "SIGINT");
  await request;
});
