/** Several certificates, one internal server each, chosen by SNI. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { $, type LogLine, startDaemon } from "./helpers/daemon.ts";
import { makeSelfSignedCert } from "../src/actions/https/self_signed_cert.ts";
import { writeAll } from "./helpers/client.ts";
import { buildHello, inRecords, sniExtension } from "./helpers/tls_records.ts";

/** The subject names of the certificate the server presents for sni. */
async function servedNames(port: number, sni: string | null): Promise<string> {
  const flags = sni ? ["-servername", sni] : ["-noservername"];
  const hello = await $`openssl s_client -connect 127.0.0.1:${port} ${flags}`.stdinText("");
  const x509 = await $`openssl x509 -noout -ext subjectAltName`.stdinText(hello.stdout);
  return x509.stdout.split("\n")[1]?.trim() ?? "";
}

Deno.test("each SNI gets its own certificate (and server); no or unknown SNI gets the first", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-sni-" });
  for (
    const [name, names] of [["a", ["a.example", "www.a.example"]], ["b", ["b.example"]]] as const
  ) {
    const { cert, key } = await makeSelfSignedCert(names);
    await Deno.writeTextFile(join(dir, `${name}.pem`), cert);
    await Deno.writeTextFile(join(dir, `${name}-key.pem`), key);
  }
  const d = await startDaemon({
    dataDir: dir,
    config: `
listen: [{ address: 127.0.0.1, port: 0 }]
tls:
  certificates:
    - { names: [a.example, "*.a.example"], cert: ${JSON.stringify(join(dir, "a.pem"))}, key: ${
      JSON.stringify(join(dir, "a-key.pem"))
    } }
    - { names: b.example, cert: ${JSON.stringify(join(dir, "b.pem"))}, key: ${
      JSON.stringify(join(dir, "b-key.pem"))
    } }
routes: [{ name: web, match: { protocol: tls }, action: https }]
`,
  });
  try {
    assert.match(await servedNames(d.port, "a.example"), /^DNS:a\.example, DNS:www\.a\.example/);
    assert.match(await servedNames(d.port, "www.a.example"), /^DNS:a\.example/);
    assert.match(await servedNames(d.port, "b.example"), /^DNS:b\.example,/);
    assert.match(await servedNames(d.port, null), /^DNS:a\.example/); // the default
    assert.match(await servedNames(d.port, "other.example"), /^DNS:a\.example/);

    // A client that verifies: each name with its own certificate as CA.
    for (const site of ["a", "b"]) {
      const r = await $`curl -s --cacert ${join(dir, `${site}.pem`)} \
        --resolve ${site}.example:${d.port}:127.0.0.1 -o /dev/null -w '%{http_code}' \
        https://${site}.example:${d.port}/`;
      assert.equal(r.stdout, "200", `${site}.example verified with its own certificate`);
    }
    const wrong = await $`curl -s --cacert ${join(dir, "a.pem")} \
      --resolve b.example:${d.port}:127.0.0.1 https://b.example:${d.port}/`;
    assert.notEqual(wrong.code, 0, "b.example is not served with a's certificate");
  } finally {
    await d.stop();
  }
});

Deno.test("a route decided by prefix sends HTTPS to the default site, whatever hello came before it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-sni-prefix-" });
  for (const name of ["a", "b"]) {
    const { cert, key } = await makeSelfSignedCert([`${name}.test`]);
    await Deno.writeTextFile(join(dir, `${name}.pem`), cert);
    await Deno.writeTextFile(join(dir, `${name}-key.pem`), key);
  }
  const cert = (n: string) =>
    `{ names: ${n}.test, cert: ${JSON.stringify(join(dir, `${n}.pem`))}, key: ${
      JSON.stringify(join(dir, `${n}-key.pem`))
    } }`;
  const d = await startDaemon({
    dataDir: dir,
    config: `
listen: [{ address: 127.0.0.1, port: 0 }]
tls: { certificates: [${cert("a")}, ${cert("b")}] }
routes:
  - { name: legacy, match: { prefix_hex: "160301" }, action: https }
  - { name: web, match: { protocol: tls }, action: https }
`,
  });
  try {
    for (let i = 0; i < 5; i++) {
      // A hello for b.test in a 16 03 03 record: web's, which reads its SNI...
      const raw = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
      await writeAll(raw, inRecords(buildHello([sniExtension("b.test")]), [], 0x0303));
      const web = (l: LogLine) =>
        l.event === "connection" && l.route === "web" && l.sni === "b.test";
      await d.waitFor(() => d.logs.filter(web).length > i);
      raw.close();
      // ...then openssl's (16 03 01): legacy's, decided without a look at
      // the SNI, so the default site's certificate, a.test.
      assert.match(await servedNames(d.port, "a.test"), /^DNS:a\.test,/);
    }
  } finally {
    await d.stop();
  }
});
