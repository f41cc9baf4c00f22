/**
 * --parallel: several worker processes on the same port (SO_REUSEPORT).
 * HTTPS and handoffs work from every worker, a reload reaches them all, a
 * worker that dies is started again, and a stop stops them all.
 */
import assert from "node:assert/strict";
import { demoConfig } from "./helpers/configs.ts";
import { freePort, httpsStatus, type LogLine, startDaemon } from "./helpers/daemon.ts";
import { roundTrip } from "./helpers/client.ts";

Deno.test("two workers share one port: both serve HTTPS and handoffs, reload, restart and stop together", async () => {
  const port = freePort();
  const d = await startDaemon({
    workers: 2,
    config: demoConfig(port),
  });
  try {
    await d.waitFor(() => d.logs.filter((l) => l.event === "started").length === 2);
    const listening = d.logs.filter((l) => l.event === "listening");
    assert.deepEqual(listening.map((l) => l.address), [`127.0.0.1:${port}`, `127.0.0.1:${port}`]);
    assert.deepEqual(listening.map((l) => l.worker).sort(), [0, 1]);

    // The two workers accept on the one socket: both get connections.
    for (let i = 0; i < 30; i++) {
      assert.equal(await httpsStatus(port), "200");
      const c = await Deno.connect({ hostname: "127.0.0.1", port });
      assert.equal(await roundTrip(c, `PRIV ${i}`, `PRIV ${i}`.length), `PRIV ${i}`); // worker 0's echo
      c.close();
    }
    await d.waitFor(() => d.logs.filter((l) => l.event === "connection").length === 60);
    const byWorker = (outcome: string) =>
      new Set(
        d.logs.filter((l: LogLine) => l.event === "connection" && l.outcome === outcome).map((l) =>
          l.worker
        ),
      );
    assert.deepEqual([...byWorker("https")].sort(), [0, 1]);
    assert.deepEqual([...byWorker("handed-off")].sort(), [0, 1]);

    // The launcher passes SIGHUP to every worker.
    Deno.kill(d.launcherPid, "SIGHUP");
    await d.waitFor(() => d.logs.filter((l) => l.event === "reloaded").length === 2);

    // A worker that dies is started again.
    const victim = d.logs.find((l) => l.event === "started" && l.worker === 1)!.pid as number;
    Deno.kill(victim, "SIGKILL");
    await d.waitFor(
      () => d.logs.filter((l) => l.event === "started" && l.worker === 1).length === 2,
      15_000,
    );
  } finally {
    const status = await d.stop();
    assert.equal(status.code, 0);
  }
});

Deno.test("a worker that stops, then is killed, loses nothing queued: the other worker serves every connection, and the crash is logged", async () => {
  const port = freePort();
  const d = await startDaemon({
    workers: 2,
    config: `
listen: [{ address: 127.0.0.1, port: ${port} }]
tls: { self_signed: true }
routes: [{ name: web, match: { protocol: tls }, action: https }]
`,
  });
  try {
    await d.waitFor(() => d.logs.filter((l) => l.event === "started").length === 2);
    const victim = d.logs.find((l) => l.event === "started" && l.worker === 1)!.pid as number;
    Deno.kill(victim, "SIGSTOP");
    // 40 clients while worker 1 cannot accept: with a socket per worker,
    // about half would wait in its queue, and die with it.
    const answers = Promise.all(Array.from({ length: 40 }, () => httpsStatus(port, 20)));
    await new Promise((r) => setTimeout(r, 1000));
    Deno.kill(victim, "SIGKILL");
    assert.deepEqual(await answers, Array(40).fill("200"));
    const crash = await d.waitFor((l) => l.event === "worker-exited");
    assert.deepEqual([crash.worker, crash.pid, crash.signal], [1, victim, "SIGKILL"]);
    // Started again, it serves too.
    await d.waitFor(() => d.logs.filter((l) => l.event === "started").length === 3);
    assert.equal(await httpsStatus(port), "200");
  } finally {
    await d.stop();
  }
});
