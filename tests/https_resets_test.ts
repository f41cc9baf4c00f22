/**
 * Clients that reset at the worst moment: after their ClientHello, while
 * the connection waits to be taken by the internal Deno.serve. No such
 * client may take HTTPS down, with the express lane on or off, with an
 * access log (which keeps HTTPS on the daemon's path), whole or split hello.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { $, freePort, httpsStatus, startDaemon } from "./helpers/daemon.ts";
import { FIXTURES } from "./helpers/tls_records.ts";

const CLIENTS = new URL("./services/reset_clients.py", import.meta.url).pathname;

/** 30 clients send a curl ClientHello (whole, or split in two writes 50 ms
 * apart), then reset (SO_LINGER {1, 0}: Deno cannot set it, Python can). */
async function helloThenReset(port: number, split: boolean): Promise<void> {
  const mode = split ? "split" : "whole";
  const r = await $`python3 ${CLIENTS} ${port} 30 ${mode} ${FIXTURES}curl-openssl3-h2.bin`;
  assert.equal(r.code, 0, r.stderr);
}

for (
  const { name, express, accessLog, workers } of [
    { name: "express lane on", express: true, accessLog: false, workers: 2 },
    { name: "express lane off", express: false, accessLog: false, workers: 1 },
    { name: "an access log", express: true, accessLog: true, workers: 1 },
  ]
) {
  Deno.test(`clients that reset after their hello do not take HTTPS down (${name})`, async () => {
    const dir = await Deno.makeTempDir({ prefix: "portmux-resets-" });
    const port = freePort();
    const d = await startDaemon({
      dataDir: dir,
      workers,
      config: `
listen: [{ address: 127.0.0.1, port: ${port} }]
tls: { self_signed: true }
preread: { express: ${express} }
${accessLog ? `https: { access_log: ${JSON.stringify(join(dir, "access.log"))} }` : ""}
routes: [{ name: web, match: { protocol: tls }, action: https }]
`,
    });
    try {
      await d.waitFor(() => d.logs.filter((l) => l.event === "started").length === workers);
      for (const split of [false, true]) {
        for (let round = 0; round < 3; round++) {
          await helloThenReset(port, split);
        }
        for (let i = 0; i < 6; i++) {
          assert.equal(await httpsStatus(port, 5), "200", `split=${split}: HTTPS answers`);
        }
      }
      const died = d.logs.filter((l) =>
        l.event === "uncaught-error" || l.event === "https-site-down"
      );
      assert.deepEqual(died, [], "no HTTPS server stopped");
    } finally {
      await d.stop();
    }
  });
}

Deno.test("an internal server that stops is said, counted and started again; /healthz names the site while it is down", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-site-down-" });
  const admin = freePort();
  const d = await startDaemon({
    dataDir: dir,
    // The site's first accept fails (Deno.serve stops for good on it), and
    // so do its first five starts again: it stays down for 5 s.
    env: { PORTMUX_TEST_FAULTS: "https-accept,https-restart:5" },
    config: `
listen: [{ address: 127.0.0.1, port: 0 }]
tls: { self_signed: true }
admin: { port: ${admin} }
routes: [{ name: web, match: { protocol: tls }, action: https }]
`,
  });
  const health = async () => {
    const r = await fetch(`http://127.0.0.1:${admin}/healthz`);
    return `${r.status} ${(await r.text()).trim()}`;
  };
  try {
    await d.waitFor((l) => l.event === "admin");
    assert.equal(await health(), "200 ok");
    await httpsStatus(d.port, 5); // meets the fault: its server stops
    const down = await d.waitFor((l) => l.event === "https-site-down");
    assert.equal(down.site, "default");
    assert.match(String(down.error), /ConnectionAborted|abort/i);
    await d.waitFor((l) => l.event === "https-site-restart-failed");
    assert.equal(await health(), "503 https site default down");
    await d.waitFor((l) => l.event === "https-site-up", 20_000);
    assert.equal(await health(), "200 ok");
    for (let i = 0; i < 3; i++) assert.equal(await httpsStatus(d.port, 5), "200");
    const metrics = await (await fetch(`http://127.0.0.1:${admin}/metrics`)).text();
    assert.match(metrics, /^portmux_https_site_down_total\{site="default"\} 1$/m);
    assert.deepEqual(d.logs.filter((l) => l.event === "uncaught-error"), []);
  } finally {
    await d.stop();
  }
});
