/** https.proxy: requests, bodies and WebSockets go on to an upstream, with the real client. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { type Config, describeConfig, parseConfig } from "../src/config/config.ts";
import { forwardedElement, isAuthority } from "../src/actions/https/reverse_proxy.ts";
import { $, type DaemonOptions, startDaemon, type TestDaemon } from "./helpers/daemon.ts";

/** The fields the upstream reports back. */
const SEEN = [
  "x-forwarded-for",
  "x-forwarded-proto",
  "x-forwarded-host",
  "forwarded",
  "x-real-ip",
  "x-secret",
  "keep-alive",
];

/** onRequest: told of each request that reaches the upstream. */
function upstream(onRequest: () => void = () => {}) {
  return Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    onRequest();
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
    for (const h of SEEN) seen[h] = req.headers.get(h);
    return Response.json({ path: url.pathname + url.search, ...seen });
  });
}

/** A daemon that proxies TLS to up; proxy: more keys of https.proxy,
 * https: more keys of https. */
function proxyDaemon(
  up: Deno.HttpServer<Deno.NetAddr>,
  more: { proxy?: string; https?: string; dataDir?: string; inject?: boolean } = {},
): Promise<TestDaemon> {
  const opts: DaemonOptions = {
    config: `
listen: [{ address: 127.0.0.1, port: 0 }]
tls: { self_signed: true }
https: { proxy: { upstream: "http://127.0.0.1:${up.addr.port}"${more.proxy ?? ""} }${
      more.https ?? ""
    } }
routes: [{ name: web, match: { protocol: tls }, action: https }]
`,
    ...(more.dataDir ? { dataDir: more.dataDir } : {}),
    ...(more.inject === undefined ? {} : { inject: more.inject }),
  };
  return startDaemon(opts);
}

/** Sends request as it is over TLS (curl refuses some of these) and reads
 * the response to its end: the status and the body. */
async function rawRequest(
  d: TestDaemon,
  dataDir: string,
  request: string,
): Promise<{ status: number; body: string }> {
  const conn = await Deno.connectTls({
    hostname: "127.0.0.1",
    port: d.port,
    caCerts: [await Deno.readTextFile(join(dataDir, "self-signed-cert.pem"))],
  });
  await conn.write(new TextEncoder().encode(request));
  // The answer ends with the connection (HTTP/1.0, or Connection: close);
  // read to its end, the stream closes conn. A hung answer fails the read.
  const deadline = setTimeout(() => conn.close(), 5000);
  let text: string;
  try {
    text = await new Response(conn.readable).text();
  } finally {
    clearTimeout(deadline);
  }
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(text)?.[1] ?? 0);
  return { status, body: text.slice(text.indexOf("\r\n\r\n") + 4) };
}

/** The fields the upstream saw for curl's request (args: more of curl's). */
async function seenBy(url: string, args: string[]): Promise<Record<string, string | null>> {
  const r = await $`curl -sk ${args} ${url}`;
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout);
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
    // --http1.1: HTTP/2 has no Connection header.
    const r = await $`curl -sk --http1.1 -H 'Connection: keep-alive, x-secret' -H 'x-secret: hop' \
      -H 'X-Forwarded-For: 198.51.100.1' ${base + "/headers?q=1"}`;
    const seen = JSON.parse(r.stdout);
    assert.equal(seen.path, "/headers?q=1");
    assert.equal(seen["x-forwarded-for"], "127.0.0.1", "the client's own claim is dropped");
    assert.equal(seen["x-forwarded-proto"], "https");
    assert.equal(seen.forwarded, `for=127.0.0.1;proto=https;host="127.0.0.1:${d.port}"`);
    assert.equal(seen["x-secret"], null, "a field named in Connection is hop-by-hop");
    assert.equal(seen["keep-alive"], null);

    const file = join(dir, "body.bin");
    await Deno.writeFile(file, new Uint8Array(5 * 1024 * 1024).fill(7));
    const upload = await $`curl -sk --http2 --data-binary @${file} ${base}/upload`;
    assert.equal(upload.stdout, String(5 * 1024 * 1024));

    const slow = await $`curl -sk -o /dev/null -w '%{http_code}' ${base}/slow`;
    assert.equal(slow.stdout, "504");

    // A WebSocket client that trusts the demo certificate.
    const client = `
const ws = new WebSocket("wss://localhost:${d.port}/ws");
const got = [];
ws.onmessage = (e) => { got.push(e.data); if (got.length === 1) ws.send("ping"); else { console.log(JSON.stringify(got)); Deno.exit(0); } };
ws.onerror = (e) => { console.log("error", e.message); Deno.exit(1); };
setTimeout(() => { console.log(JSON.stringify(["timed out", ...got])); Deno.exit(1); }, 5000);`;
    const ws = await $`${Deno.execPath()} eval --cert ${
      join(dir, "self-signed-cert.pem")
    } ${client}`;
    assert.deepEqual(JSON.parse(ws.stdout), ["xff=127.0.0.1", "echo:ping"], ws.stderr);

    // The client left abruptly (close code 1006, which cannot be sent on):
    // the daemon is still there to answer the next request.
    await up.shutdown();
    const gone = await $`curl -sk -o /dev/null -w '%{http_code}' ${base}/x`;
    assert.equal(gone.stdout, "502");
  } finally {
    await d.stop();
    await up.shutdown().catch(() => {});
  }
});

Deno.test("the reverse proxy refuses a Host that is not host[:port] with 400, before forwarding", async () => {
  let asked = 0;
  const up = upstream(() => asked++);
  const dir = await Deno.makeTempDir({ prefix: "portmux-rproxy-" });
  const d = await proxyDaemon(up, { dataDir: dir });
  const get = (head: string, target = "/headers") =>
    rawRequest(d, dir, `GET ${target} HTTP/1.1\r\n${head}Connection: close\r\n\r\n`);
  try {
    // The audit's reproducer: quotes that would end host="..." and add a for=.
    const injected = await get(`Host: a.test";for=7.7.7.7;x="\r\n`);
    assert.equal(injected.status, 400, injected.body);
    for (
      const [head, target] of [
        ["Host: \r\n"], // empty (RFC 9112 §3.2)
        ["Host: a.test, b.test\r\n"], // a list
        ["Host: a.test:99999\r\n"], // no such port
        ["Host: a%22b.test\r\n"], // a quote once percent-decoded
        ["Host: [fe80::1%25eth0]\r\n"], // a zone ID
        ["Host: a.test\r\n", 'https://a"b.test/x'], // the absolute-form target's authority
      ]
    ) {
      const r = await get(head!, target);
      assert.equal(r.status, 400, `${head} ${target ?? ""}: ${r.body}`);
    }
    assert.equal(asked, 0, "nothing reached the upstream");

    for (const host of ["a.test:8443", "[2001:db8::1]:8443", "192.0.2.1"]) {
      const r = await get(`Host: ${host}\r\n`);
      assert.equal(r.status, 200, r.body);
      const seen = JSON.parse(r.body);
      assert.equal(seen.forwarded, `for=127.0.0.1;proto=https;host="${host}"`);
      assert.equal(seen["x-forwarded-host"], host);
    }
  } finally {
    await d.stop();
    await up.shutdown();
  }
});

Deno.test("isAuthority() accepts host[:port] only; Forwarded quotes and escapes (RFC 7239 §4)", () => {
  for (
    const ok of [
      "a.test",
      "A-b_c~.test:443",
      "a.test:",
      "192.0.2.1:1",
      "[::1]",
      "[::ffff:1.2.3.4]:8",
    ]
  ) {
    assert.ok(isAuthority(ok), ok);
  }
  for (
    const bad of [
      "",
      ":443",
      'a"b',
      "a\\b",
      "a b",
      "a/b",
      "a@b",
      "a:b:1",
      "[::1",
      "[1.2.3.4]",
      "[v1.x]",
      "a:70000",
    ]
  ) {
    assert.ok(!isAuthority(bad), bad);
  }
  assert.equal(
    forwardedElement("2001:db8::1", 'a"b\\c'),
    'for="[2001:db8::1]";proto=https;host="a\\"b\\\\c"',
  );
  assert.equal(forwardedElement("192.0.2.1", null), "for=192.0.2.1;proto=https");
});

Deno.test("client-sent X-Forwarded-For, Forwarded and X-Real-IP are replaced, but added to from trusted_forwarders", async () => {
  const up = upstream();
  // 127.0.0.2 (curl --interface) forwards for others; 127.0.0.1 is a client.
  const d = await proxyDaemon(up, { proxy: ", trusted_forwarders: [127.0.0.2, 10.0.0.0/8]" });
  const url = `https://127.0.0.1:${d.port}/headers`;
  const claims = [
    "-H",
    "X-Forwarded-For: 198.51.100.7",
    "-H",
    "Forwarded: for=198.51.100.7;proto=http",
    "-H",
    "X-Real-IP: 198.51.100.7",
  ];
  const host = `host="127.0.0.1:${d.port}"`;
  const claimed = (seen: Record<string, string | null>) => ({
    "x-forwarded-for": seen["x-forwarded-for"],
    forwarded: seen.forwarded,
    "x-real-ip": seen["x-real-ip"],
  });
  try {
    const client = await seenBy(url, claims);
    assert.deepEqual(claimed(client), {
      "x-forwarded-for": "127.0.0.1",
      forwarded: `for=127.0.0.1;proto=https;${host}`,
      "x-real-ip": "127.0.0.1",
    });

    const forwarder = await seenBy(url, ["--interface", "127.0.0.2", ...claims]);
    assert.deepEqual(claimed(forwarder), {
      "x-forwarded-for": "198.51.100.7, 127.0.0.2",
      forwarded: `for=198.51.100.7;proto=http, for=127.0.0.2;proto=https;${host}`,
      "x-real-ip": "127.0.0.2", // the peer portmux knows, always
    });
  } finally {
    await d.stop();
    await up.shutdown();
  }
});

Deno.test("https.proxy.trusted_forwarders is read as CIDR blocks and shown by check", () => {
  const config = (forwarders: string) => `
listen: [{ address: 127.0.0.1, port: 8443 }]
tls: { self_signed: true }
https: { proxy: { upstream: "http://127.0.0.1:8080"${forwarders} } }
routes: [{ name: web, match: { protocol: tls }, action: https }]
`;
  const proxy = (c: Config) => (describeConfig(c).https as { proxy: unknown }).proxy;
  assert.deepEqual(proxy(parseConfig(config(""), "test.yaml", "/tmp")), {
    upstream: "http://127.0.0.1:8080/",
    timeout_ms: 30000,
    trusted_forwarders: [],
  });
  const c = parseConfig(
    config(", trusted_forwarders: [10.0.0.0/8, '2001:db8::/32']"),
    "test.yaml",
    "/tmp",
  );
  assert.deepEqual((proxy(c) as { trusted_forwarders: string[] }).trusted_forwarders, [
    "10.0.0.0/8",
    "2001:db8::/32",
  ]);
  assert.throws(
    () => parseConfig(config(", trusted_forwarders: [lb.example]"), "test.yaml", "/tmp"),
    /https\.proxy\.trusted_forwarders: "lb\.example" is not an address or CIDR block/,
  );
});

Deno.test("an HTTP/1.0 request without Host is given the address the client connected to, never the internal server's", async () => {
  const up = upstream();
  // What the upstream is told of the host, and what it should be: the
  // address the client connected to where portmux knows it (its own path,
  // which an access log makes every connection take, and the bridge), else
  // none (injected with neither, as the express lane delivers: no
  // JavaScript sees the connection).
  const told: Record<string, unknown> = {};
  const expected: Record<string, unknown> = {};
  const variants = {
    "access log": (dir: string) => ({ https: `, access_log: ${join(dir, "access.log")}` }),
    bridge: () => ({ inject: false }),
    injected: () => ({}),
  };
  try {
    for (const [variant, more] of Object.entries(variants)) {
      const dir = await Deno.makeTempDir({ prefix: "portmux-rproxy-" });
      const d = await proxyDaemon(up, { dataDir: dir, ...more(dir) });
      try {
        const r = await rawRequest(d, dir, "GET /headers HTTP/1.0\r\n\r\n");
        assert.equal(r.status, 200, r.body);
        const seen = JSON.parse(r.body);
        told[variant] = [seen.forwarded, seen["x-forwarded-host"]];
        const local = variant === "injected" ? null : `127.0.0.1:${d.port}`;
        expected[variant] = local
          ? [`for=127.0.0.1;proto=https;host="${local}"`, local]
          : ["for=127.0.0.1;proto=https", null];
      } finally {
        await d.stop();
      }
    }
    assert.deepEqual(told, expected);
  } finally {
    await up.shutdown();
  }
});
