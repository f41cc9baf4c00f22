/**
 * SIGHUP reload: a new config and certificate apply to new connections,
 * established ones (a handed-off stream, an HTTPS keep-alive session) go on
 * untouched, and a broken config keeps the running one.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { $, startDaemon, type TestDaemon } from "./helpers/daemon.ts";
import { readAtLeast, roundTrip, seesEnd, writeAll } from "./helpers/client.ts";
import { makeSelfSignedCert } from "../src/actions/https/self_signed_cert.ts";

const enc = new TextEncoder();

function configWith(dir: string, cert: string, routes: string, extraListen = ""): string {
  return `
listen: [{ address: 127.0.0.1, port: 0 }${extraListen}]
tls: { cert: ${JSON.stringify(join(dir, cert + ".pem"))}, key: ${
    JSON.stringify(join(dir, cert + "-key.pem"))
  } }
services: { echo: { builtin: echo } }
routes:
  - { name: web, match: { protocol: tls }, action: https }
${routes}
`;
}

async function reload(d: TestDaemon, file: string, text: string, event: string) {
  const before = d.logs.filter((l) => l.event === event).length;
  await Deno.writeTextFile(file, text);
  Deno.kill(d.pid, "SIGHUP");
  return await d.waitFor(() => d.logs.filter((l) => l.event === event).length > before);
}

/** One HTTP/1.1 request on an open TLS connection. */
async function get(tls: Deno.TlsConn, path: string): Promise<string> {
  await writeAll(tls, enc.encode(`GET ${path} HTTP/1.1\r\nHost: localhost\r\n\r\n`));
  return await readAtLeast(tls, 12);
}

Deno.test("SIGHUP applies a new config and certificate to new connections; established ones go on", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-reload-" });
  const certs: Record<string, string> = {};
  for (const name of ["a", "b"]) {
    const { cert, key } = await makeSelfSignedCert();
    certs[name] = cert;
    await Deno.writeTextFile(join(dir, `${name}.pem`), cert);
    await Deno.writeTextFile(join(dir, `${name}-key.pem`), key);
  }
  const before = configWith(
    dir,
    "a",
    "  - { name: private, match: { prefix: PRIV }, action: handoff, service: echo }",
  );
  const d = await startDaemon({ dataDir: dir, config: before });
  const file = join(dir, "config.yaml");
  try {
    // Established before the reload: a handed-off stream and an HTTPS session.
    const stream = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
    assert.equal(await roundTrip(stream, "PRIV one", 8), "PRIV one");
    const session = await Deno.connectTls({
      hostname: "localhost",
      port: d.port,
      caCerts: [certs.a!],
    });
    assert.match(await get(session, "/first"), /^HTTP\/1\.1 200/);

    const reloaded = await reload(
      d,
      file,
      configWith(
        dir,
        "b",
        `  - { name: newp, match: { prefix: NEWP }, action: handoff, service: echo }
  - { name: private, match: { prefix: PRIV }, action: close }`,
      ),
      "reloaded",
    );
    assert.equal(reloaded.https, "new certificate or handler");

    // The established ones are untouched.
    assert.equal(await roundTrip(stream, "still here", 10), "still here");
    assert.match(await get(session, "/second"), /^HTTP\/1\.1 200/);

    // New connections get the new routes and the new certificate.
    const priv = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
    await writeAll(priv, enc.encode("PRIV two"));
    assert.ok(await seesEnd(priv), "PRIV is closed now");
    priv.close();
    const newp = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
    assert.equal(await roundTrip(newp, "NEWP one", 8), "NEWP one");
    newp.close();
    const fresh = await Deno.connectTls({
      hostname: "localhost",
      port: d.port,
      caCerts: [certs.b!],
    });
    assert.match(await get(fresh, "/new"), /^HTTP\/1\.1 200/);
    fresh.close();
    await assert.rejects(async () => {
      const stale = await Deno.connectTls({
        hostname: "localhost",
        port: d.port,
        caCerts: [certs.a!],
      });
      try {
        await stale.handshake();
      } finally {
        stale.close();
      }
    }, "the old certificate is not served to new clients");

    // listen: is the supervisor's to change (it holds the sockets): a
    // reload refuses it, saying what does apply it; the rest stays.
    const moved = await reload(
      d,
      file,
      configWith(dir, "b", "", ', { address: "::1", port: 0 }'),
      "reload-failed",
    );
    assert.match(String(moved.error), /listen: changed.*upgrade \(SIGUSR2\) or a restart/);
    const kept = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
    await writeAll(kept, enc.encode("PRIV three"));
    assert.ok(await seesEnd(kept), "the running routes stay");

    // A broken config keeps the running one.
    const failed = await reload(d, file, "listen: [\n", "reload-failed");
    assert.match(String(failed.error), /invalid YAML/);
    assert.equal(failed.level, "error");
    const still = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
    assert.equal(await roundTrip(still, "NEWP two", 8), "NEWP two");
    still.close();
    stream.close();
    session.close();
  } finally {
    await d.stop();
  }
});

Deno.test("SIGHUP loads an edited handler module again, and https.hsts adds its header", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-reload-module-" });
  const module = join(dir, "app.ts");
  const version = (v: string) =>
    Deno.writeTextFile(module, `export default { fetch: () => new Response("${v}\\n") };\n`);
  await version("v1");
  const config = `
listen: [{ address: 127.0.0.1, port: 0 }]
tls: { self_signed: true }
https: { handler: ${JSON.stringify(module)}, hsts: "max-age=31536000; includeSubDomains" }
routes: [{ name: web, match: { protocol: tls }, action: https }]
`;
  const d = await startDaemon({ dataDir: dir, config });
  const curl = async () => (await $`curl -sk -i https://127.0.0.1:${d.port}/`).stdout;
  try {
    const first = await curl();
    assert.match(first, /\r\n\r\nv1\n$/);
    assert.match(first, /strict-transport-security: max-age=31536000; includeSubDomains\r\n/i);
    await new Promise((r) => setTimeout(r, 20)); // a new mtime
    await version("v2");
    const reloaded = await reload(d, join(dir, "config.yaml"), config, "reloaded");
    assert.equal(reloaded.https, "new certificate or handler");
    assert.match(await curl(), /\r\n\r\nv2\n$/);
  } finally {
    await d.stop();
  }
});

Deno.test("a renewed certificate file is served to new clients without a signal (file watch)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-watch-" });
  const write = async () => {
    const { cert, key } = await makeSelfSignedCert();
    await Deno.writeTextFile(join(dir, "key.pem.new"), key);
    await Deno.writeTextFile(join(dir, "cert.pem.new"), cert);
    await Deno.rename(join(dir, "key.pem.new"), join(dir, "key.pem")); // as renewal tools do
    await Deno.rename(join(dir, "cert.pem.new"), join(dir, "cert.pem"));
    return cert;
  };
  const first = await write();
  const d = await startDaemon({
    dataDir: dir,
    config: `
listen: [{ address: 127.0.0.1, port: 0 }]
tls: { cert: ${JSON.stringify(join(dir, "cert.pem"))}, key: ${
      JSON.stringify(join(dir, "key.pem"))
    } }
routes: [{ name: web, match: { protocol: tls }, action: https }]
`,
  });
  const verifies = async (caCert: string) => {
    try {
      const c = await Deno.connectTls({ hostname: "localhost", port: d.port, caCerts: [caCert] });
      await c.handshake();
      c.close();
      return true;
    } catch {
      return false;
    }
  };
  try {
    assert.ok(await verifies(first));
    const renewed = await write();
    const line = await d.waitFor((l) => l.event === "reloaded", 10_000);
    assert.equal(line.https, "new certificate or handler");
    assert.ok(d.logs.some((l) => l.event === "reloading" && String(l.why).endsWith("changed")));
    assert.ok(await verifies(renewed), "the renewed certificate is served");
    assert.ok(!(await verifies(first)), "the old one is not, to new clients");
  } finally {
    await d.stop();
  }
});
