/**
 * Accept injection under load: 1,000 TLS handshakes at once, then 10,000
 * keep-alive requests (HTTP/1.1 and HTTP/2). An injected fd lost or used
 * twice would show as a failed request or a leaked fd.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { $, startDaemon } from "./helpers/daemon.ts";
import { makeSelfSignedCert } from "../src/actions/https/self_signed_cert.ts";

/** h2load's request tally: "requests: N total, ..., S succeeded, F failed, E errored". */
function tally(out: string) {
  const m =
    /requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/
      .exec(out);
  if (!m) throw new Error(`no tally in h2load's output:\n${out}`);
  const [total, succeeded, failed, errored, timeout] = m.slice(1).map(Number) as [
    number,
    number,
    number,
    number,
    number,
  ];
  return { total, succeeded, failed, errored, timeout };
}

Deno.test("1,000 concurrent TLS handshakes and 10,000 keep-alive requests: every one answered, no fd left", async () => {
  const d = await startDaemon({
    config: `
listen: [{ address: 127.0.0.1, port: 0 }]
limits: { max_per_source: 5000 }
tls: { self_signed: true }
routes: [{ name: web, match: { protocol: tls }, action: https }]
`,
  });
  try {
    const url = `https://127.0.0.1:${d.port}/`;
    /** Runs h2load for n requests; every one must be answered. */
    const allAnswered = async (n: number, ...flags: string[]) => {
      const r = await $`h2load -n ${n} -t 2 ${flags} ${url}`;
      assert.deepEqual(tally(r.stdout), {
        total: n,
        succeeded: n,
        failed: 0,
        errored: 0,
        timeout: 0,
      });
    };
    await allAnswered(20, "-c", "4", "--h1");
    await new Promise((r) => setTimeout(r, 500));
    const baseline = d.fdCount();

    await allAnswered(1000, "-c", "1000", "--h1"); // 1,000 new TLS connections at once
    await allAnswered(10_000, "-c", "50", "--h1"); // keep-alive HTTP/1.1
    await allAnswered(10_000, "-c", "20", "-m", "10"); // HTTP/2, 10 streams a connection

    await d.waitFor(() =>
      d.logs.filter((l) => l.event === "connection" && l.outcome === "https").length >= 1074
    );
    assert.equal(d.logs.filter((l) => l.event === "connection" && l.outcome !== "https").length, 0);
    assert.equal(
      await d.settleFds(baseline, 15_000),
      baseline,
      "every injected fd was closed once",
    );
  } finally {
    await d.stop();
  }
});

Deno.test("a reload with a new certificate under load fails no request, old connections or new", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-reload-load-" });
  const writeCert = async () => {
    const { cert, key } = await makeSelfSignedCert();
    await Deno.writeTextFile(join(dir, "key.pem"), key);
    await Deno.writeTextFile(join(dir, "cert.pem"), cert);
  };
  await writeCert();
  const d = await startDaemon({
    dataDir: dir,
    config: `
listen: [{ address: 127.0.0.1, port: 0 }]
limits: { max_per_source: 5000 }
tls: { cert: ${JSON.stringify(join(dir, "cert.pem"))}, key: ${
      JSON.stringify(join(dir, "key.pem"))
    } }
routes: [{ name: web, match: { protocol: tls }, action: https }]
`,
  });
  try {
    const url = `https://127.0.0.1:${d.port}/`;
    const t0 = Date.now();
    // For 3 s: keep-alive connections made before the reload...
    const keptAlive = $`h2load -D 3 -c 20 -t 2 --h1 ${url}`.spawn();
    // ...and a new TLS connection for every request, across it.
    const fresh = (async () => {
      const codes: { at: number; code: string }[] = [];
      while (Date.now() - t0 < 2500) {
        const code = await $`curl -sk -o /dev/null -w '%{http_code}' ${url}`.text();
        codes.push({ at: Date.now(), code });
      }
      return codes;
    })();
    await new Promise((r) => setTimeout(r, 1000));
    await writeCert();
    Deno.kill(d.pid, "SIGHUP");

    const counts = tally((await keptAlive).stdout);
    assert.ok(counts.total > 1000, `a real load: ${counts.total} requests`);
    assert.deepEqual(counts, {
      ...counts,
      succeeded: counts.total,
      failed: 0,
      errored: 0,
      timeout: 0,
    });
    const codes = await fresh;
    assert.deepEqual(codes.filter((c) => c.code !== "200"), [], "every new connection answered");
    const reloadedAt = Date.parse(String((await d.waitFor((l) => l.event === "reloaded")).time));
    assert.ok(
      reloadedAt > t0 + 500 && reloadedAt < t0 + 2500,
      "the reload happened during the load",
    );
    assert.ok(codes.some((c) => c.at < reloadedAt) && codes.some((c) => c.at > reloadedAt + 100));
  } finally {
    await d.stop();
  }
});
