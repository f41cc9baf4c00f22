/**
 * The express lane decides in C; the daemon decides in TypeScript. The
 * lane must never decide differently: here both look at the same bytes
 * (real ClientHellos, every truncation of them, random corruptions,
 * prefixes, garbage) and every decision the lane makes must be the
 * daemon's. The lane may pass a connection on ("daemon") where it is not
 * sure; it must still decide the common cases itself.
 */
import assert from "node:assert/strict";
import { decide, type Fallbacks } from "../src/route/classify.ts";
import { parseConfig } from "../src/config/config.ts";
import { laneTable } from "../src/route/express_lane.ts";
import { pickSite } from "../src/actions/https/sites.ts";
import { type NamePattern, parseNamePattern } from "../src/route/name_pattern.ts";
import { contractMismatch, EVENT_LAYOUT, LANE_TABLE_LIMITS, Shim } from "../ffi/shim.ts";
import { join } from "node:path";
import { encodeRecord } from "../src/actions/handoff/record.ts";
import { $, startDaemon } from "./helpers/daemon.ts";
import { startPythonService } from "./helpers/python_service.ts";
import { readAtLeast, roundTrip } from "./helpers/client.ts";
import {
  alpnExtension,
  buildHello,
  fixture,
  FIXTURES,
  handshakeOf,
  inRecords,
  sniExtension,
} from "./helpers/tls_records.ts";

const enc = new TextEncoder();
const shim = new Shim();

function config(routesYaml: string) {
  return parseConfig(
    `listen: [{ address: 127.0.0.1, port: 1 }]
tls: { self_signed: true }
services: { svc: { socket: /run/portmux-test/svc.sock } }
routes:
${routesYaml}`,
    "test",
    "/tmp",
  );
}

const ROUTES = config(`
  - { name: api, match: { protocol: tls, sni: api.example.com }, action: https }
  - { name: wild, match: { protocol: tls, sni: "*.example.org", alpn: h2 }, action: https }
  - { name: priv, match: { prefix: PRIV }, action: handoff, service: svc }
  - { name: tls, match: { protocol: tls }, action: https }
  - { name: other, match: { prefix: "GET " }, action: close }
  - { name: http, match: { protocol: http }, action: close }
  - { name: late, match: { prefix: SSH- }, action: handoff, service: svc }
`);
const TABLE = laneTable(ROUTES, 1, [{ listenerFd: 7, names: [] }], new Map([["svc", 3]]));

const HELLOS = [...Deno.readDirSync(FIXTURES)].map((f) => fixture(f.name.replace(/\.bin$/, "")));

/** Checks one input: returns what the lane said. Where the lane decides,
 * the daemon must decide the same route, read the same SNI and ALPN, and
 * pick the same HTTPS site (sites: the names the table was made with). */
function agree(
  bytes: Uint8Array,
  routes = ROUTES,
  table = TABLE,
  sites: readonly { names: NamePattern[] }[] = [{ names: [] }],
): number | "more" | "daemon" {
  const lane = shim.lane.decide(table, Uint8Array.from(bytes));
  const fallbacks: Fallbacks = routes;
  const input = { bytes, client: { address: "192.0.2.1", port: 1 }, maxBytes: 16384 };
  const daemon = decide(routes.routes, fallbacks, input, null);
  const show = () =>
    `lane ${JSON.stringify(lane)}, daemon ${daemon?.route.name ?? "more"} on ${bytes.length} bytes`;
  if (typeof lane.route === "number") {
    assert.equal(daemon?.reason, "matched", show());
    assert.equal(daemon.route, routes.routes[lane.route], show());
    assert.equal(lane.sni, daemon.facts.sni ?? "", show());
    assert.deepEqual(lane.alpn, daemon.facts.alpn ?? [], show());
    const https = daemon.route.action.kind === "https";
    assert.equal(lane.site, https ? pickSite(sites, daemon.facts.sni ?? null) : null, show());
  } else if (lane.route === "more") {
    assert.equal(daemon, null, show());
  }
  return lane.route;
}

Deno.test("the lane's table: what it evaluates, what it leaves to the daemon", () => {
  const lines = TABLE.trim().split("\n");
  assert.equal(lines[0], "limits 16384 5000 20000 50000 1000 1");
  assert.equal(lines[1], "site 7 ");
  assert.match(lines[2]!, /^rule 0 https -1 - tls 1 =api\.example\.com -1$/);
  assert.match(lines[3]!, /^rule 1 https -1 - tls 1 \*\.example\.org 1 6832$/); // "h2"
  assert.match(lines[4]!, /^rule 2 handoff 3 [0-9a-f]+ prefix 50524956$/);
  assert.match(lines[6]!, /^rule 4 slow -1 - prefix 47455420$/); // close: the daemon's
  assert.match(lines[7]!, /^rule 5 slow -1 - opaque$/); // http: not the lane's to read
  // An access log needs each request's facts from the daemon: no https here.
  const logged = config(`  - { name: tls, match: { protocol: tls }, action: https }`);
  const withLog = { ...logged, https: { ...logged.https, accessLog: "/tmp/x.log" } };
  assert.match(laneTable(withLog, 2, [{ listenerFd: 7, names: [] }], new Map()), /rule 0 slow/);
  // A site that cannot inject (bridge): same.
  assert.match(laneTable(logged, 3, [{ listenerFd: null, names: [] }], new Map()), /rule 0 slow/);
  assert.throws(() => shim.lane.decide("limits 0 1 1 1 1\n", new Uint8Array(1)), /EINVAL/);
  assert.throws(
    () => shim.lane.decide(TABLE + "rule 9 https -1 - nonsense\n", new Uint8Array(1)),
    /EINVAL/,
  );
});

Deno.test("a config larger than the lane's table: the rest is left to the daemon, nothing fails", () => {
  const prefixes = Array.from(
    { length: 70 },
    (_, i) => `  - { name: r${i}, match: { prefix: "P${i}x" }, action: close }`,
  );
  const names = Array.from({ length: 20 }, (_, i) => `a${i}.example`).join(", ");
  const big = config(
    `  - { name: sni, match: { protocol: tls, sni: [${names}] }, action: https }\n` +
      prefixes.join("\n"),
  );
  const table = laneTable(big, 1, [{ listenerFd: 7, names: [] }], new Map());
  assert.match(table, /^rule 0 https -1 - opaque$/m, "20 names: more than the lane holds");
  for (const hello of HELLOS) assert.equal(agree(hello, big, table), "daemon");
  const small = config(prefixes.join("\n"));
  const t2 = laneTable(small, 1, [{ listenerFd: 7, names: [] }], new Map());
  assert.equal(agree(enc.encode("P3x"), small, t2), 3);
  assert.equal(agree(enc.encode("P62x"), small, t2), 62);
  assert.equal(agree(enc.encode("P69x"), small, t2), "daemon", "past the 64th rule");
});

Deno.test("the lane decides real ClientHellos as the daemon does, SNI included", () => {
  for (const hello of HELLOS) {
    assert.equal(typeof agree(hello), "number", "a whole hello is the lane's");
  }
  const api = buildHello([sniExtension("API.Example.COM")]);
  assert.equal(agree(inRecords(api, [])), 0);
  const h2 = inRecords(
    buildHello([sniExtension("www.example.org"), alpnExtension([0x1a, 0x1a], "h2")]),
    [],
  );
  assert.equal(agree(h2), 1);
  const noH2 = inRecords(
    buildHello([sniExtension("www.example.org"), alpnExtension("http/1.1")]),
    [],
  );
  assert.equal(agree(noH2), 3);
  const bare = inRecords(buildHello([sniExtension("example.org"), alpnExtension("h2")]), []);
  assert.equal(agree(bare), 3, "*.example.org does not name example.org itself");
  assert.equal(agree(inRecords(buildHello([sniExtension("api.example.com.")]), [])), 0);
  assert.equal(agree(enc.encode("PRIV and more")), 2);
  assert.equal(agree(enc.encode("PRI")), "more");
  assert.equal(agree(enc.encode("GET / HTTP/1.1\r\n")), 4);
  assert.equal(
    agree(enc.encode("SSH-2.0-x\r\n")),
    "daemon",
    "behind an http route: not the lane's",
  );
  assert.equal(agree(new Uint8Array(0)), "more");
});

Deno.test("every truncation and 20,000 corruptions of real hellos: the lane never decides otherwise", () => {
  let decided = 0, passed = 0;
  for (const hello of HELLOS) {
    for (let n = 0; n <= hello.length; n++) agree(hello.subarray(0, n));
    // Over several records: the daemon reassembles; the lane passes it on.
    assert.equal(agree(inRecords(handshakeOf(hello), [40])), "daemon");
  }
  let seed = 42;
  const random = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
  for (let i = 0; i < 20_000; i++) {
    const bytes = Uint8Array.from(HELLOS[i % HELLOS.length]!);
    for (let k = 1 + Math.floor(random() * 3); k > 0; k--) {
      const at = Math.floor(random() * Math.min(bytes.length, i % 2 ? 64 : bytes.length));
      bytes[at] = Math.floor(random() * 256);
    }
    const r = agree(bytes.subarray(0, bytes.length - Math.floor(random() * 4) * (i % 3)));
    if (typeof r === "number") decided++;
    else if (r === "daemon") passed++;
  }
  // Most corruptions hit bytes the parse does not check (the random, key
  // shares): those hellos are still the lane's.
  assert.ok(decided > 5000 && passed > 1000, `decided ${decided}, passed on ${passed}`);
});

const SITES = [{ listenerFd: 7, names: ["a.test"] }, { listenerFd: 8, names: ["b.test"] }].map((
  s,
) => ({ ...s, names: s.names.map((n) => parseNamePattern(n)!) }));

/** A hello for name in one record of the given record version. */
function helloFor(name: string | null, version = 0x0301, ...alpn: string[]): Uint8Array {
  const exts: [number, number[]][] = name ? [sniExtension(name)] : [];
  if (alpn.length) exts.push(alpnExtension(...alpn));
  return inRecords(buildHello(exts), [], version);
}

Deno.test("a route decided without reading the hello sends HTTPS to the default site, as the daemon does", () => {
  const routes = config(`
  - { name: legacy, match: { prefix_hex: "160301" }, action: https }
  - { name: web, match: { protocol: tls }, action: https }
`);
  const table = laneTable(routes, 1, SITES, new Map());
  const decide = (b: Uint8Array) => shim.lane.decide(table, Uint8Array.from(b));
  // 16 03 03: not legacy's; web reads the hello and picks by SNI.
  assert.deepEqual(decide(helloFor("b.test", 0x0303)), {
    route: 1,
    sni: "b.test",
    alpn: [],
    site: 1,
  });
  // A hello for b.test after it, through legacy: no SNI was read, so the
  // default site, whatever an earlier look left behind.
  assert.deepEqual(decide(helloFor("b.test")), { route: 0, sni: "", alpn: [], site: 0 });
  for (const name of ["a.test", "b.test", null]) {
    for (const version of [0x0301, 0x0303]) agree(helloFor(name, version), routes, table, SITES);
  }
});

Deno.test("a hello offering one 255-byte ALPN name is left to the daemon, and every name the lane keeps is described whole", () => {
  const routes = config(`  - { name: tls, match: { protocol: tls }, action: https }`);
  const table = laneTable(routes, 1, SITES, new Map());
  const long = "x".repeat(255);
  // 1 + 255 bytes fill the lane's 256-byte ALPN buffer, leaving no room
  // for the 0 that ends it in an event: the daemon reads this hello.
  assert.equal(agree(helloFor("a.test", 0x0301, long), routes, table, SITES), "daemon");
  const most = "y".repeat(254);
  assert.deepEqual(shim.lane.decide(table, Uint8Array.from(helloFor("b.test", 0x0301, most))), {
    route: 0,
    sni: "b.test",
    alpn: [most],
    site: 1,
  });
  const names = Array.from({ length: 30 }, (_, i) => `p${String(i).padStart(5, "0")}`);
  for (let n = 1; n <= names.length; n++) {
    agree(helloFor("a.test", 0x0301, ...names.slice(0, n)), routes, table, SITES);
  }
});

Deno.test("every match and action the table compiler accepts, two routes at a time: the lane never decides otherwise", () => {
  const matches = [
    "{ protocol: tls }",
    "{ protocol: tls, sni: b.test }",
    '{ protocol: tls, sni: "*.test", alpn: h2 }',
    "{ protocol: tls, alpn: http/1.1 }",
    '{ prefix_hex: "160301" }',
    "{ prefix: PRIV }",
    "{ protocol: http }",
    "{ protocol: ssh }",
    "{ min_length: 4 }",
    '{ regex: { expression: "^P" } }',
    '{ pattern: { offset: 1, bytes: "03 ??" } }',
    "{ protocol: tls, source: 192.0.2.0/24 }",
  ];
  const actions = [
    "action: https",
    "action: handoff, service: svc",
    'action: proxy, upstream: "127.0.0.1:9"',
    "action: close",
  ];
  const inputs = [
    ...HELLOS,
    ...["a.test", "b.test", "c.test", null].flatMap((n) => [
      helloFor(n),
      helloFor(n, 0x0303, "h2"),
      helloFor(n, 0x0301, "http/1.1", "h2"),
    ]),
    HELLOS[0]!.subarray(0, 3),
    enc.encode("PRIV hello\n"),
    enc.encode("GET / HTTP/1.1\r\nHost: b.test\r\n\r\n"),
    enc.encode("SSH-2.0-x\r\n"),
    enc.encode("P"),
    Uint8Array.from([0x16, 0x03, 0x03, 0, 5, 1, 0, 0, 1, 0]),
  ];
  const ids = new Map([["svc", 3]]);
  let decided = 0;
  for (const [i, m1] of matches.entries()) {
    for (const [j, m2] of matches.entries()) {
      for (const [k, a1] of actions.entries()) {
        const a2 = actions[(k + i + j) % actions.length]!; // every pair of actions over the loop
        const routes = config(`
  - { name: one, match: ${m1}, ${a1} }
  - { name: two, match: ${m2}, ${a2} }
  - { name: three, match: { protocol: tls }, action: https }
`);
        const table = laneTable(routes, 1, SITES, ids);
        for (const bytes of inputs) {
          if (typeof agree(bytes, routes, table, SITES) === "number") decided++;
        }
      }
    }
  }
  assert.ok(decided > 3000, `the lane decided ${decided} times: it must still decide`);
});

Deno.test("routes the lane cannot read stop it: nothing after them is decided by it", () => {
  const routes = config(`
  - { name: from, match: { protocol: tls, source: 10.0.0.0/8 }, action: https }
  - { name: tls, match: { protocol: tls }, action: https }
`);
  const table = laneTable(routes, 1, [{ listenerFd: 7, names: [] }], new Map());
  for (const hello of HELLOS) assert.equal(agree(hello, routes, table), "daemon");
  const prefixFirst = config(`
  - { name: priv, match: { prefix: PRIV }, action: handoff, service: svc }
  - { name: regex, match: { regex: { expression: "^x" } }, action: close }
  - { name: tls, match: { protocol: tls }, action: https }
`);
  const t2 = laneTable(prefixFirst, 1, [{ listenerFd: 7, names: [] }], new Map([["svc", 1]]));
  assert.equal(agree(enc.encode("PRIV"), prefixFirst, t2), 0);
  assert.equal(agree(HELLOS[0]!, prefixFirst, t2), "daemon");
});

Deno.test("the real daemon: the lane serves HTTPS and handoffs itself, sends the daemon's exact record, and leaves no fd", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-lane-" });
  const svc = await startPythonService(join(dir, "svc.sock"));
  const d = await startDaemon({
    dataDir: dir,
    config: `
listen: [{ address: 127.0.0.1, port: 0 }]
tls: { self_signed: true }
services: { svc: { socket: ${JSON.stringify(svc.socket)} } }
routes:
  - { name: web, match: { protocol: tls }, action: https }
  - { name: private, match: { prefix: PRIV }, action: handoff, service: svc }
`,
  });
  try {
    const one = async (i: number) => {
      const c = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
      assert.equal(await roundTrip(c, `PRIV ${i}`, `ECHO:PRIV ${i}`.length), `ECHO:PRIV ${i}`);
      return c;
    };
    (await one(0)).close(); // opens the channel (the daemon's path: the lane has none yet)
    await new Promise((r) => setTimeout(r, 50));
    const baseline = d.fdCount();
    const clients: Deno.Conn[] = [];
    for (let i = 1; i <= 200; i++) clients.push(await one(i));
    for (const c of clients) c.close();
    for (let i = 0; i < 2; i++) {
      const r = await $`curl -sk ${i ? "--http2" : "--http1.1"} https://127.0.0.1:${d.port}/`;
      assert.match(r.stdout, /portmux/);
    }
    await svc.waitForRecords(201);
    // The record the lane wrote is the one the daemon writes (src/actions/handoff/record.ts).
    const laneRecord = svc.records[200]!;
    const client = laneRecord.client as { address: string; port: number };
    assert.deepEqual(
      JSON.parse(new TextDecoder().decode(encodeRecord({
        v: 1,
        route: "private",
        service: "svc",
        client,
        local: { address: "127.0.0.1", port: d.port },
        peeked: 8,
      }))),
      laneRecord,
    );
    const line = await d.connection(client.port);
    assert.equal(line.accepted_by, "express");
    assert.equal(line.outcome, "handed-off");
    assert.equal(line.socket, svc.socket);
    await d.waitFor((l) => l.event === "connection" && l.route === "web" && l.alpn !== undefined);
    const lines = d.logs.filter((l) => l.event === "connection");
    const byLane = lines.filter((l) => l.accepted_by === "express");
    assert.ok(byLane.length >= 195, `the lane served ${byLane.length} of ${lines.length}`);
    assert.equal(lines.filter((l) => l.outcome === "failed").length, 0);
    assert.ok(await d.settleFds(baseline) <= baseline, "no fd left behind");
  } finally {
    await d.stop();
    await svc.stop();
  }
});

Deno.test("preread.express: false turns the lane off: the daemon's path serves everything", async () => {
  const d = await startDaemon({
    config: `
listen: [{ address: 127.0.0.1, port: 0 }]
preread: { express: false }
services: { echo: { builtin: echo } }
routes:
  - { name: private, match: { prefix: PRIV }, action: handoff, service: echo }
`,
  });
  try {
    for (let i = 0; i < 3; i++) {
      const c = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
      assert.equal(await roundTrip(c, "PRIV x", 6), "PRIV x");
      c.close();
      assert.notEqual((await d.connection(c.localAddr.port)).accepted_by, "express");
    }
  } finally {
    await d.stop();
  }
});

Deno.test("a reload that gives a lane listener the PROXY protocol: the daemon reads the header first", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-lane-proxy-" });
  const config = (proxy: string) => `
listen: [{ address: 127.0.0.1, port: 0${proxy} }]
services: { echo: { builtin: echo } }
routes:
  - { name: private, match: { prefix: PRIV }, action: handoff, service: echo }
  # Would take the PROXY header itself, if the lane looked at it.
  - { name: looks-like-proxy, match: { prefix: PROXY }, action: handoff, service: echo }
`;
  const d = await startDaemon({ dataDir: dir, config: config("") });
  const send = async (bytes: string) => {
    const c = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
    await c.write(enc.encode(bytes));
    assert.equal(await readAtLeast(c, 6), "PRIV x");
    c.close();
    return c.localAddr.port;
  };
  try {
    const before = d.logs.filter((l) => l.event === "reloaded").length;
    await send("PRIV x"); // opens the channel
    assert.equal((await d.connection(await send("PRIV x"))).accepted_by, "express");
    await Deno.writeTextFile(
      join(dir, "config.yaml"),
      config(", proxy_protocol: { trusted: [127.0.0.1/32] }"),
    );
    Deno.kill(d.pid, "SIGHUP");
    await d.waitFor(() => d.logs.filter((l) => l.event === "reloaded").length > before);
    await send("PROXY TCP4 192.0.2.9 127.0.0.1 5555 443\r\nPRIV x");
    const line = await d.waitFor((l) => l.event === "connection" && l.client === "192.0.2.9:5555");
    assert.equal(line.outcome, "handed-off");
    assert.equal(line.proxied_by?.toString().startsWith("127.0.0.1:"), true);
  } finally {
    await d.stop();
  }
});

Deno.test("a reload turns the lane off and on (preread.express), for a lane started either way", async () => {
  for (const startOn of [true, false]) {
    const dir = await Deno.makeTempDir({ prefix: "portmux-lane-toggle-" });
    const config = (on: boolean) => `
listen: [{ address: 127.0.0.1, port: 0 }]
preread: { express: ${on} }
services: { echo: { builtin: echo } }
routes:
  - { name: private, match: { prefix: PRIV }, action: handoff, service: echo }
`;
    const d = await startDaemon({ dataDir: dir, config: config(startOn) });
    const takenBy = async () => {
      const c = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
      assert.equal(await roundTrip(c, "PRIV x", 6), "PRIV x");
      c.close();
      return (await d.connection(c.localAddr.port)).accepted_by;
    };
    const reload = async (on: boolean) => {
      const before = d.logs.filter((l) => l.event === "reloaded").length;
      await Deno.writeTextFile(join(dir, "config.yaml"), config(on));
      Deno.kill(d.pid, "SIGHUP");
      await d.waitFor(() => d.logs.filter((l) => l.event === "reloaded").length > before);
    };
    try {
      await takenBy(); // opens the channel
      assert.equal(await takenBy() === "express", startOn);
      await reload(!startOn);
      await takenBy();
      assert.equal(await takenBy() === "express", !startOn, `after turning it ${!startOn}`);
      await reload(startOn);
      assert.equal(await takenBy() === "express", startOn, `back to ${startOn}`);
    } finally {
      await d.stop();
    }
  }
});

Deno.test("out of fds while the runtime accepts for the lane: it pauses, says so, and serves HTTPS and handoffs again once fds free up", async () => {
  // A hard limit of 100 open files; defer_accept off: the silent flood is
  // accepted and held, until no fd is left.
  const d = await startDaemon({
    openFiles: 100,
    config: `
listen: [{ address: 127.0.0.1, port: 0 }]
preread: { timeout_ms: 30000, defer_accept: false }
limits: { max_per_source: 5000 }
tls: { self_signed: true }
services: { echo: { builtin: echo } }
routes:
  - { name: web, match: { protocol: tls }, action: https }
  - { name: private, match: { prefix: PRIV }, action: handoff, service: echo }
`,
  });
  const privateRoundTrip = async (text: string) => {
    const c = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
    assert.equal(await roundTrip(c, text, text.length), text);
    c.close();
  };
  const https = async () => {
    const r = await $`curl -sk --max-time 5 https://127.0.0.1:${d.port}/`;
    assert.match(r.stdout, /portmux/);
  };
  try {
    await privateRoundTrip("PRIV before");
    await https();

    const flood: Deno.Conn[] = [];
    for (let i = 0; i < 120; i++) {
      flood.push(await Deno.connect({ hostname: "127.0.0.1", port: d.port }));
    }
    // Said as the daemon's own accept loop says it: an event, not a
    // connection line (no connection was accepted).
    const failed = await d.waitFor((l) =>
      l.event === "accept-failed" && l.accepted_by === "express"
    );
    assert.equal(failed.level, "error");
    assert.match(String(failed.error), /EMFILE/);

    await new Promise((r) => setTimeout(r, 1000)); // it retries every 100 ms meanwhile
    const saidFailed = d.logs.filter((l) => l.event === "accept-failed");
    // Once, and again only after an accept worked in between (a fd freed
    // for a moment), not at each of the ten retries.
    assert.ok(saidFailed.length >= 1 && saidFailed.length <= 3, `said ${saidFailed.length} times`);
    assert.equal(d.logs.filter((l) => l.outcome === "failed").length, 0);
    flood.forEach((c) => c.close());
    // The lane frees the flood's fds as it sees each end; it serves again
    // once there are some (the first tries may still be refused).
    const deadline = Date.now() + 10_000;
    for (;;) {
      try {
        await privateRoundTrip("PRIV after");
        await https();
        break;
      } catch (e) {
        if (Date.now() > deadline) throw e;
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    // Each failure is said to have ended, with how many accepts failed
    // (one per 100 ms retry), and they are all counted.
    const said = (event: string) => d.logs.filter((l) => l.event === event);
    await d.waitFor(() => said("accept-recovered").length === said("accept-failed").length);
    const failures = said("accept-recovered").reduce((n, l) => n + Number(l.failures), 0);
    assert.ok(failures >= 5, `${failures} failed accepts in a second of retries`);
    assert.equal((await d.stop()).code, 0);
    const stats = d.logs.find((l) => l.event === "stats")!;
    assert.equal(stats.portmux_accept_failures_total, failures);
  } finally {
    await d.stop();
  }
});

Deno.test("the lane's event record and table limits are one contract: checked against the shim when it loads", () => {
  const ours = Object.values(EVENT_LAYOUT);
  assert.equal(contractMismatch(EVENT_LAYOUT, ours), null);
  // A field moved on one side only is named, so the shim is refused at load.
  const moved = [...ours];
  moved[Object.keys(EVENT_LAYOUT).indexOf("failures")]! += 4;
  assert.match(contractMismatch(EVENT_LAYOUT, moved)!, /^failures: C 48, ts 44$/);
  assert.match(contractMismatch(EVENT_LAYOUT, ours.slice(1))!, /numbers from C/);
  // The table's capacities too: a C side with room for 32 rules is named.
  const limits = Object.values(LANE_TABLE_LIMITS);
  assert.equal(contractMismatch(LANE_TABLE_LIMITS, limits), null);
  assert.match(
    contractMismatch(LANE_TABLE_LIMITS, [32, ...limits.slice(1)])!,
    /^rules: C 32, ts 64$/,
  );
  assert.equal(shim.lane.decide(TABLE, enc.encode("PRIV")).route, 2); // this shim passed the check
});
