/**
 * Clients that reset at the worst moment: after their ClientHello, while
 * the connection waits to be taken by the internal Deno.serve. No such
 * client may take HTTPS down, with the express lane on or off, with an
 * access log (which keeps HTTPS on the daemon's path), whole or split hello.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { freePort, run, startDaemon } from "./helpers/daemon.ts";
import { FIXTURES } from "./helpers/tls_records.ts";

const CLIENTS = new URL("./services/reset_clients.py", import.meta.url).pathname;

/** 30 clients send a curl ClientHello (whole, or split in two writes 50 ms
 * apart), then reset (SO_LINGER {1, 0}: Deno cannot set it, Python can). */
async function helloThenReset(port: number, split: boolean): Promise<void> {
  const mode = split ? "split" : "whole";
  const r = await run("python3", [
    CLIENTS,
    String(port),
    "30",
    mode,
    `${FIXTURES}curl-openssl3-h2.bin`,
  ]);
  assert.equal(r.code, 0, r.stderr);
}

async function httpsAnswers(port: number): Promise<string> {
  const r = await run("curl", [
    "-sk",
    "--max-time",
    "5",
    "-o",
    "/dev/null",
    "-w",
    "%{http_code}",
    `https://127.0.0.1:${port}/`,
  ]);
  return r.stdout;
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
          assert.equal(await httpsAnswers(port), "200", `split=${split}: HTTPS answers`);
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
