/**
 * The README's first command, as a newcomer runs it: `deno task start`,
 * no config file. It must serve HTTPS on 127.0.0.1:8443 with a self-signed
 * certificate made on first start (and kept), and echo PRIV connections.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { $, startDaemon } from "./helpers/daemon.ts";
import { roundTrip } from "./helpers/client.ts";

const startDemo = (dataDir: string) => startDaemon({ viaTask: true, dataDir });

Deno.test("`deno task start` runs the embedded demo: HTTPS on :8443 and a PRIV echo", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "portmux-demo-" });
  let d = await startDemo(dataDir);
  let cert: string;
  try {
    assert.equal(d.logs.find((l) => l.event === "listening")?.address, "127.0.0.1:8443");
    assert.equal(d.logs.find((l) => l.event === "started")?.https, "inject");

    cert = await Deno.readTextFile(join(dataDir, "self-signed-cert.pem"));
    const certFile = join(dataDir, "self-signed-cert.pem");
    // The certificate is good for 127.0.0.1: curl verifies it with it as CA.
    const r =
      await $`curl -s --cacert ${certFile} -w '%{http_code}' -o /dev/null https://127.0.0.1:8443/`;
    assert.equal(r.stdout, "200");
    assert.equal((await Deno.stat(join(dataDir, "self-signed-key.pem"))).mode! & 0o777, 0o600);

    const c = await Deno.connect({ hostname: "127.0.0.1", port: 8443 });
    assert.equal(await roundTrip(c, "PRIV hello demo", 15), "PRIV hello demo");
    c.close();
  } finally {
    const status = await d.stop();
    assert.equal(status.code, 0, "a SIGTERM stops the demo cleanly");
  }
  // A second start keeps the certificate it made the first time.
  d = await startDemo(dataDir);
  try {
    assert.equal(await Deno.readTextFile(join(dataDir, "self-signed-cert.pem")), cert);
  } finally {
    await d.stop();
  }
});
