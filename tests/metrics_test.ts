/** The admin listener: Prometheus metrics that count what really happened. */
import assert from "node:assert/strict";
import { startDaemon } from "./helpers/daemon.ts";
import { roundTrip, seesEnd, writeAll } from "./helpers/client.ts";
import { $ } from "./helpers/daemon.ts";

/** The value of one series in a Prometheus text exposition. */
function series(text: string, name: string): number | undefined {
  const line = text.split("\n").find((l) => l.startsWith(name + " "));
  return line === undefined ? undefined : Number(line.slice(name.length + 1));
}

Deno.test("/metrics counts connections by route and outcome, decisions, HTTPS statuses, limits and gauges", async () => {
  const d = await startDaemon({
    config: `
listen: [{ address: 127.0.0.1, port: 0 }]
admin: { port: 0 }
limits: { max_per_source: 3 }
tls: { self_signed: true }
services: { echo: { builtin: echo } }
routes:
  - { name: web, match: { protocol: tls }, action: https }
  - { name: private, match: { prefix: PRIV }, action: handoff, service: echo }
`,
  });
  try {
    const admin = String((await d.waitFor((l) => l.event === "admin")).address);
    assert.match(admin, /^127\.0\.0\.1:\d+$/); // loopback unless told otherwise
    for (let i = 0; i < 2; i++) {
      const r = await $`curl -sk -o /dev/null -w '%{http_code}' https://127.0.0.1:${d.port}/`;
      assert.equal(r.stdout, "200");
    }
    const c = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
    assert.equal(await roundTrip(c, "PRIV x", 6), "PRIV x");
    c.close();
    const junk = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
    await writeAll(junk, new TextEncoder().encode("junk"));
    assert.ok(await seesEnd(junk));
    junk.close();
    // Three silent clients fill max_per_source: the fourth is refused.
    const held = await Promise.all(
      [1, 2, 3].map(() => Deno.connect({ hostname: "127.0.0.1", port: d.port })),
    );
    await new Promise((r) => setTimeout(r, 200));
    const refused = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
    assert.ok(await seesEnd(refused));
    refused.close();
    await d.waitFor((l) => l.event === "limit"); // the express lane reports in batches

    const res = await fetch(`http://${admin}/metrics`);
    assert.equal(res.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
    const text = await res.text();
    assert.equal(series(text, 'portmux_connections_total{route="web",outcome="https"}'), 2);
    assert.equal(
      series(text, 'portmux_connections_total{route="private",outcome="handed-off"}'),
      1,
    );
    assert.equal(series(text, 'portmux_connections_total{route="default",outcome="closed"}'), 1);
    assert.equal(series(text, 'portmux_https_requests_total{code="200"}'), 2);
    assert.equal(series(text, 'portmux_limit_hits_total{limit="max_per_source"}'), 1);
    assert.equal(series(text, "portmux_decide_seconds_count"), 4);
    assert.equal(series(text, 'portmux_decide_seconds_bucket{le="+Inf"}'), 4);
    assert.equal(series(text, "portmux_preread_waiting"), 3); // the held silent ones
    assert.equal(series(text, "portmux_connections_held"), 3);
    assert.ok(series(text, "portmux_open_fds")! > 10);
    assert.equal(series(text, "portmux_handoff_fallbacks_total"), 0); // declared, none yet
    assert.match(text, /# TYPE portmux_decide_seconds histogram/);

    const health = await fetch(`http://${admin}/healthz`);
    assert.equal(await health.text(), "ok\n");
    held.forEach((h) => h.close());
  } finally {
    await d.stop();
  }
});

Deno.test("label values are escaped as the Prometheus text format asks, and a series counts with the same labels as inc", async () => {
  const { Metrics } = await import("../src/ops/metrics.ts");
  const m = new Metrics();
  m.inc("t_total", { route: 'a"b\\c\nd', outcome: "ok" });
  const s = m.series("t_total", { route: "web", outcome: "https" });
  s.inc();
  s.inc(2);
  m.inc("t_total", { route: "web", outcome: "https" });
  const text = m.render();
  assert.ok(text.includes('t_total{route="a\\"b\\\\c\\nd",outcome="ok"} 1\n'), text);
  assert.ok(text.includes('t_total{route="web",outcome="https"} 4\n'), text);
  assert.equal(m.snapshot()["t_total"], undefined); // only labelled series
});

Deno.test("the admin listener answers GET and HEAD only, and off loopback only with its token", async () => {
  const config = (admin: string) => `
listen: [{ address: 127.0.0.1, port: 0 }]
admin: ${admin}
routes: [{ name: none, match: { prefix: X }, action: close }]
`;
  // Off loopback without a token: refused at load, naming the field.
  const dir = await Deno.makeTempDir({ prefix: "portmux-admin-" });
  await Deno.writeTextFile(`${dir}/bad.yaml`, config("{ address: 0.0.0.0, port: 9 }"));
  const main = new URL("../src/main.ts", import.meta.url).pathname;
  const check = await $`${Deno.execPath()} run -A ${main} check --config ${dir}/bad.yaml`;
  assert.equal(check.code, 2, check.stdout + check.stderr);
  assert.match(check.stderr + check.stdout, /admin\.token.*required.*not loopback/);

  const token = "s3cret-token-0123456789";
  const d = await startDaemon({ config: config(`{ address: 0.0.0.0, port: 0, token: ${token} }`) });
  try {
    const exposed = await d.waitFor((l) => l.event === "admin-exposed");
    assert.equal(exposed.level, "warn");
    const port = String((await d.waitFor((l) => l.event === "admin")).address).split(":").pop();
    const ask = async (method: string, auth: string | null, path = "/healthz") => {
      const headers: Record<string, string> = auth ? { authorization: auth } : {};
      const r = await fetch(`http://127.0.0.1:${port}${path}`, { method, headers });
      await r.body?.cancel();
      return r.status;
    };
    assert.equal(await ask("GET", null), 401);
    assert.equal(await ask("GET", null, "/metrics"), 401);
    assert.equal(await ask("GET", "Bearer wrong-token-0123456789"), 401);
    assert.equal(await ask("GET", `Bearer ${token}`), 200);
    assert.equal(await ask("HEAD", `Bearer ${token}`, "/metrics"), 200);
    assert.equal(await ask("POST", `Bearer ${token}`), 405);
    assert.equal(await ask("DELETE", null, "/metrics"), 405);
  } finally {
    await d.stop();
  }
});
