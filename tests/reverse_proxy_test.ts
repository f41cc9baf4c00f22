/** https.proxy: requests, bodies and WebSockets go on to an upstream, with the real client. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { run, startDaemon } from "./helpers/daemon.ts";

function upstream() {
  return Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    const url = new URL(req.url);
    if (url.pathname === "/ws") {
      const xff = req.headers.get("x-forwarded-for"); // the request is gone after the upgrade
      const { socket, response } = Deno.upgradeWebSocket(req);
      socket.onopen = () => socket.send(`xff=${xff}`);
      socket.onmessage = (e) => socket.send(`echo:${e.data}`);
      return response;
    }
    if (url.pathname === "/upload") {
      let n = 0;
      for await (const chunk of req.body!) n += chunk.length;
      return new Response(String(n));
    }
    if (url.pathname === "/slow") await new Promise((r) => setTimeout(r, 3000));
    const seen: Record<string, string | null> = {};
    for (
      const h of ["x-forwarded-for", "x-forwarded-proto", "forwarded", "x-secret", "keep-alive"]
    ) {
      seen[h] = req.headers.get(h);
    }
    return Response.json({ path: url.pathname + url.search, ...seen });
  });
}

Deno.test("the reverse proxy forwards with the real client, streams bodies, relays WebSockets, times out", async () => {
  const up = upstream();
  const dir = await Deno.makeTempDir({ prefix: "portmux-rproxy-" });
  const d = await startDaemon({
    dataDir: dir,
    config: `
listen: [{ address: 127.0.0.1, port: 0 }]
tls: { self_signed: true }
https: { proxy: { upstream: "http://127.0.0.1:${up.addr.port}", timeout_ms: 1000 } }
routes: [{ name: web, match: { protocol: tls }, action: https }]
`,
  });
  const base = `https://127.0.0.1:${d.port}`;
  try {
    const r = await run("curl", [
      "-sk",
      "--http1.1", // HTTP/2 has no Connection header
      "-H",
      "Connection: keep-alive, x-secret",
      "-H",
      "x-secret: hop",
      "-H",
      "X-Forwarded-For: 198.51.100.1",
      `${base}/headers?q=1`,
    ]);
    const seen = JSON.parse(r.stdout);
    assert.equal(seen.path, "/headers?q=1");
    assert.equal(seen["x-forwarded-for"], "198.51.100.1, 127.0.0.1");
    assert.equal(seen["x-forwarded-proto"], "https");
    assert.equal(seen.forwarded, `for=127.0.0.1;proto=https;host="127.0.0.1:${d.port}"`);
    assert.equal(seen["x-secret"], null, "a field named in Connection is hop-by-hop");
    assert.equal(seen["keep-alive"], null);

    const file = join(dir, "body.bin");
    await Deno.writeFile(file, new Uint8Array(5 * 1024 * 1024).fill(7));
    const upload = await run("curl", [
      "-sk",
      "--http2",
      "--data-binary",
      `@${file}`,
      `${base}/upload`,
    ]);
    assert.equal(upload.stdout, String(5 * 1024 * 1024));

    const slow = await run("curl", [
      "-sk",
      "-o",
      "/dev/null",
      "-w",
      "%{http_code}",
      `${base}/slow`,
    ]);
    assert.equal(slow.stdout, "504");

    // A WebSocket client that trusts the demo certificate.
    const client = `
const ws = new WebSocket("wss://localhost:${d.port}/ws");
const got = [];
ws.onmessage = (e) => { got.push(e.data); if (got.length === 1) ws.send("ping"); else { console.log(JSON.stringify(got)); Deno.exit(0); } };
ws.onerror = (e) => { console.log("error", e.message); Deno.exit(1); };
setTimeout(() => { console.log(JSON.stringify(["timed out", ...got])); Deno.exit(1); }, 5000);`;
    const ws = await run(Deno.execPath(), [
      "eval",
      "--cert",
      join(dir, "self-signed-cert.pem"),
      client,
    ]);
    assert.deepEqual(JSON.parse(ws.stdout), ["xff=127.0.0.1", "echo:ping"], ws.stderr);

    // The client left abruptly (close code 1006, which cannot be sent on):
    // the daemon is still there to answer the next request.
    await up.shutdown();
    const gone = await run("curl", ["-sk", "-o", "/dev/null", "-w", "%{http_code}", `${base}/x`]);
    assert.equal(gone.stdout, "502");
  } finally {
    await d.stop();
    await up.shutdown().catch(() => {});
  }
});
