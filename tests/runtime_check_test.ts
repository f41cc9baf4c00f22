/**
 * The daemon proves, at start and after a reload, the runtime internals it
 * relies on (src/ops/runtime_check.ts). Each failure is forced through a test
 * fault (PORTMUX_TEST_FAULTS): it must be said loudly, counted on the
 * admin listener, and the fallback must serve real clients.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { $, type LogLine, startDaemon, type TestDaemon } from "./helpers/daemon.ts";
import { roundTrip, seesEnd } from "./helpers/client.ts";

const config = (extra = "") => `
listen: [{ address: 127.0.0.1, port: 0 }]
tls: { self_signed: true }
admin: { port: 0 }
services: { echo: { builtin: echo } }
${extra}
routes:
  - { name: web, match: { protocol: tls }, action: https }
  - { name: private, match: { prefix: PRIV }, action: handoff, service: echo }
`;

const checked = (d: TestDaemon, trigger: "start" | "reload") =>
  d.waitFor((l) => l.event === "runtime-checked" && l.trigger === trigger);

/** The loud line for a mechanism, and its count on the admin listener. */
async function saidAndCounted(d: TestDaemon, mechanism: string): Promise<LogLine> {
  const failed = await d.waitFor((l) => l.event === "runtime-check-failed");
  assert.equal(failed.level, "error");
  assert.equal(failed.mechanism, mechanism);
  assert.ok(String(failed.error).length > 0);
  assert.ok(String(failed.fallback).length > 0);
  const line = `portmux_runtime_check_failures_total{mechanism="${mechanism}"} 1`;
  assert.ok((await metrics(d)).split("\n").includes(line), `no "${line}"`);
  const start = await checked(d, "start");
  assert.deepEqual(start.failed, [mechanism]);
  return failed;
}

async function metrics(d: TestDaemon): Promise<string> {
  const admin = String((await d.waitFor((l) => l.event === "admin")).address);
  return await (await fetch(`http://${admin}/metrics`)).text();
}

/** curl through the daemon: the body, and the connection's log line. */
async function curl(d: TestDaemon): Promise<{ body: string; line: LogLine }> {
  const r = await $`curl -sk --max-time 10 -w ${"\n%{local_port}"} https://127.0.0.1:${d.port}/`;
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trimEnd().split("\n");
  const port = Number(lines.pop());
  return { body: lines.join("\n"), line: await d.connection(port) };
}

/** A private-protocol client: what came back, and its log line. */
async function privateClient(d: TestDaemon, text = "PRIV hello"): Promise<[string, LogLine]> {
  const c = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
  try {
    return [await roundTrip(c, text, text.length), await d.connection(c.localAddr.port)];
  } finally {
    c.close();
  }
}

async function reload(d: TestDaemon, dir: string, text: string): Promise<void> {
  const before = d.logs.filter((l) => l.event === "reloaded").length;
  await Deno.writeTextFile(join(dir, "config.yaml"), text);
  Deno.kill(d.pid, "SIGHUP");
  await d.waitFor(() => d.logs.filter((l) => l.event === "reloaded").length > before);
}

Deno.test("with nothing broken, runtime-checked says every mechanism passed, at start and after a reload", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-runtime-check-" });
  const d = await startDaemon({ dataDir: dir, config: config() });
  try {
    const start = await checked(d, "start");
    assert.equal(start.level, "info");
    assert.deepEqual(start.passed, ["fd", "release", "inject", "lane"]);
    assert.deepEqual(start.failed, []);
    assert.equal(start.fd_via, "symbol");
    assert.match(String((start.notes as Record<string, string>).lane), /runtime's accept/);
    // A few ms on an idle machine; the bound only catches a check that waited.
    assert.ok(Number(start.ms) < 400, `took ${start.ms} ms`);
    assert.ok((await metrics(d)).split("\n").includes("portmux_runtime_check_failures_total 0"));

    // Each reload proves them again; the lane only under a new site (a
    // reload right after start may make the sites anew): its check takes
    // one of the lane's listener slots.
    for (let i = 0; i < 2; i++) {
      await reload(d, dir, config());
      const again = d.logs.filter((l) => l.event === "runtime-checked").at(-1)!;
      assert.equal(again.trigger, "reload");
      assert.deepEqual(again.failed, []);
      const sites = d.logs.filter((l) => l.event === "reloaded").at(-1)!.https;
      const lane = sites === "unchanged" ? [] : ["lane"];
      assert.deepEqual(again.passed, ["fd", "release", "inject", ...lane]);
      if (!lane.length) assert.deepEqual(again.skipped, { lane: "proven under this site before" });
    }
    assert.ok(!d.logs.some((l) => l.event === "runtime-check-failed"));
    assert.match((await curl(d)).body, /delivery: inject/);
  } finally {
    await d.stop();
  }
});

Deno.test("injection failing its check: said, counted, and HTTPS is bridged for curl", async () => {
  const d = await startDaemon({
    config: config(),
    env: { PORTMUX_TEST_FAULTS: "runtime-inject:2" },
  });
  try {
    const failed = await saidAndCounted(d, "inject");
    assert.match(String(failed.error), /did not answer/);
    assert.ok(d.logs.some((l) => l.event === "https-bridge-fallback" && l.level === "warn"));
    // The lane was checked after the fallback: no site left to accept under.
    const start = await checked(d, "start");
    assert.match(String((start.notes as Record<string, string>).lane), /no HTTPS site/);
    const { body, line } = await curl(d);
    assert.match(body, /portmux: HTTPS is served here/);
    assert.match(body, /delivery: bridge/);
    assert.equal(line.outcome, "https");
    assert.equal(line.delivery, "bridge");
    assert.equal((await privateClient(d))[0], "PRIV hello");
  } finally {
    await d.stop();
  }
});

Deno.test("release failing its check: said, counted, and a handoff of a connection Deno accepted goes to its route's fallback at once", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-runtime-check-" });
  const d = await startDaemon({
    dataDir: dir,
    // The lane off: every connection is one Deno accepted (the lane's own
    // need no release, and it hands them off).
    config: config("preread: { express: false }"),
    env: { PORTMUX_TEST_FAULTS: "runtime-release:2" },
  });
  try {
    const failed = await saidAndCounted(d, "release");
    assert.match(String(failed.error), /EPIPE|EOF/);
    // Not handed off (closing its Deno object would cut the service's
    // copy): the route's fallback, close, ends it at once, and says why.
    const c = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
    await c.write(new TextEncoder().encode("PRIV hello"));
    assert.ok(await seesEnd(c, 3000), "the client is closed, not left waiting");
    const refused = await d.connection(c.localAddr.port);
    assert.equal(refused.route, "private");
    assert.equal(refused.outcome, "closed");
    assert.equal(refused.fallback, "close");
    assert.equal(refused.level, "warn");
    assert.match(String(refused.handoff_error), /release failed its runtime check/);
    assert.match((await curl(d)).body, /portmux: HTTPS is served here/);
    // A reload does not undo it.
    await reload(d, dir, config("preread: { express: false }"));
    const again = await checked(d, "reload");
    assert.equal((again.skipped as Record<string, string>).release, "off since it failed a check");
  } finally {
    await d.stop();
  }
});

Deno.test("the lane's trick failing its check: said, counted, and the daemon's path serves HTTPS and handoffs", async () => {
  const d = await startDaemon({ config: config(), env: { PORTMUX_TEST_FAULTS: "runtime-lane:2" } });
  try {
    const failed = await saidAndCounted(d, "lane");
    assert.match(String(failed.error), /took no connection/);
    const { body, line } = await curl(d);
    assert.match(body, /delivery: inject/);
    assert.notEqual(line.accepted_by, "express");
    const [echoed, privateLine] = await privateClient(d);
    assert.equal(echoed, "PRIV hello");
    assert.equal(privateLine.outcome, "handed-off");
    assert.notEqual(privateLine.accepted_by, "express");
  } finally {
    await d.stop();
  }
});

Deno.test("the fd symbol failing its check: said, counted, and connections are served through the lookup", async () => {
  const d = await startDaemon({
    config: config("preread: { express: false }"),
    env: { PORTMUX_TEST_FAULTS: "runtime-fd:2" },
  });
  try {
    const failed = await saidAndCounted(d, "fd");
    assert.match(String(failed.error), /Deno\.internal\.fd/);
    assert.equal((await checked(d, "start")).fd_via, "lookup");
    const [echoed, line] = await privateClient(d);
    assert.equal(echoed, "PRIV hello");
    assert.equal(line.outcome, "handed-off");
    assert.equal(line.fd_lookup, "fallback");
  } finally {
    await d.stop();
  }
});

Deno.test("a check that fails once (a busy host missing a deadline) is tried again before its mechanism is turned off", async () => {
  const d = await startDaemon({ config: config(), env: { PORTMUX_TEST_FAULTS: "runtime-lane" } });
  try {
    const start = await checked(d, "start");
    assert.deepEqual(start.failed, []);
    assert.ok((start.passed as string[]).includes("lane"));
    assert.ok(!d.logs.some((l) => l.event === "runtime-check-failed"));
  } finally {
    await d.stop();
  }
});
