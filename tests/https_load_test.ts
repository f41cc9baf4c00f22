/**
 * Accept injection under load: 1,000 TLS handshakes at once, then 10,000
 * keep-alive requests (HTTP/1.1 and HTTP/2). An injected fd lost or used
 * twice would show as a failed request or a leaked fd.
 */
import assert from "node:assert/strict";
import { run, startDaemon } from "./helpers/daemon.ts";

/** h2load's request tally: "requests: N total, ..., S succeeded, F failed, E errored". */
function tally(out: string) {
  const m =
    /requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/
      .exec(out);
  if (!m) throw new Error(`no tally in h2load's output:\n${out}`);
  const [total, succeeded, failed, errored, timeout] = m.slice(1).map(Number);
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
      const r = await run("h2load", ["-n", String(n), "-t", "2", ...flags, url]);
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
