/**
 * Routing with real clients and peers: openssl s_client (SNI, ALPN),
 * curl (HTTP/1.1 by Host, HTTP/2 prior knowledge), an OpenSSH client to a
 * real sshd, HAProxy sending PROXY v2 in front of portmux, and hellos
 * delivered a byte at a time.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { $, startDaemon } from "./helpers/daemon.ts";
import { readAtLeast, roundTrip, seesEnd, writeAll } from "./helpers/client.ts";
import {
  startHaproxy,
  startHttpUpstream,
  startProxyHeaderEcho,
  startSshd,
  startTlsUpstream,
} from "./helpers/peers.ts";
import { startPythonService } from "./helpers/python_service.ts";
import { fixture } from "./helpers/tls_records.ts";
import { makeSelfSignedCert } from "../src/actions/https/self_signed_cert.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function sClient(port: number, ...flags: string[]) {
  return await $`openssl s_client -connect 127.0.0.1:${port} -quiet ${flags}`
    .stdinText("GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
}

Deno.test("openssl s_client: SNI picks the in-process site or TLS passthrough; ALPN picks a route", async () => {
  const { cert, key } = await makeSelfSignedCert();
  const upstream = startTlsUpstream("upstream-tls", cert, key);
  const d = await startDaemon({
    config: `
listen: [{ address: 127.0.0.1, port: 0 }]
tls: { self_signed: true }
routes:
  - { name: local-site, match: { protocol: tls, sni: local.example }, action: https }
  - name: passthrough
    match: { protocol: tls, sni: "*.pass.example" }
    action: proxy
    upstream: "127.0.0.1:${upstream.port}"
  - { name: imap, match: { protocol: tls, alpn: imap }, action: close }
  - { name: other-tls, match: { protocol: tls }, action: https }
`,
  });
  try {
    const local = await sClient(d.port, "-servername", "local.example");
    assert.match(local.stdout, /portmux: HTTPS is served here/);
    const pass = await sClient(d.port, "-servername", "a.b.pass.example");
    assert.match(pass.stdout, /upstream-tls terminated this TLS/);
    const imap = await sClient(d.port, "-servername", "mail.example", "-alpn", "imap,h2");
    assert.doesNotMatch(imap.stdout, /HTTP\/1\.1 200/);
    const other = await sClient(d.port, "-servername", "pass.example"); // not below pass.example
    assert.match(other.stdout, /portmux: HTTPS is served here/);

    await d.waitFor(() => d.logs.filter((l) => l.event === "connection").length === 4);
    const lines = d.logs.filter((l) => l.event === "connection");
    const by = (sni: string) => lines.find((l) => l.sni === sni)!;
    assert.equal(by("local.example").route, "local-site");
    assert.equal(by("a.b.pass.example").route, "passthrough");
    assert.equal(by("a.b.pass.example").outcome, "proxied");
    assert.equal(by("mail.example").route, "imap");
    assert.deepEqual(by("mail.example").alpn, ["imap", "h2"]);
    assert.equal(by("mail.example").outcome, "closed");
    assert.equal(by("pass.example").route, "other-tls");
    assert.equal(by("local.example").protocol, "tls");
  } finally {
    await d.stop();
    await upstream.stop();
  }
});

Deno.test("curl: plaintext HTTP by Host, and HTTP/2 with prior knowledge, reach their upstreams", async () => {
  const admin = startHttpUpstream("admin");
  const web = startHttpUpstream("web");
  const d = await startDaemon({
    config: `
listen: [{ address: 127.0.0.1, port: 0 }]
routes:
  - { name: admin, match: { protocol: http, host: admin.example }, action: proxy, upstream: "127.0.0.1:${admin.port}" }
  - { name: http, match: { protocol: http }, action: proxy, upstream: "127.0.0.1:${web.port}" }
  - { name: h2c, match: { protocol: http2 }, action: proxy, upstream: "127.0.0.1:${web.port}" }
`,
  });
  try {
    const url = `http://127.0.0.1:${d.port}`;
    const a = await $`curl -s -H 'Host: Admin.Example' ${url}/x`;
    assert.equal(a.stdout, "admin got /x for Admin.Example\n");
    const w = await $`curl -s ${url}/y`;
    assert.equal(w.stdout, `web got /y for 127.0.0.1:${d.port}\n`);
    const h2 = await $`curl -s --http2-prior-knowledge -w '%{http_version}' ${url}/z`;
    assert.match(h2.stdout, /^web got \/z for .*\n2$/);
    await d.waitFor(() => d.logs.filter((l) => l.event === "connection").length === 3);
    const routes = d.logs.filter((l) => l.event === "connection").map((
      l,
    ) => [l.route, l.protocol, l.host]);
    assert.deepEqual(routes, [
      ["admin", "http", "admin.example"],
      ["http", "http", "127.0.0.1"],
      ["h2c", "http2", undefined],
    ]);
  } finally {
    await d.stop();
    await admin.stop();
    await web.stop();
  }
});

Deno.test("ssh: a real OpenSSH client reaches sshd through portmux, and a silent client gets sshd on timeout", async () => {
  const sshd = await startSshd();
  const d = await startDaemon({
    config: `
listen: [{ address: 127.0.0.1, port: 0 }]
preread: { timeout_ms: 400 }
tls: { self_signed: true }
routes:
  - { name: web, match: { protocol: tls }, action: https }
  - { name: ssh, match: { protocol: ssh }, action: proxy, upstream: "127.0.0.1:${sshd.port}" }
on_timeout: ssh
`,
  });
  try {
    const user = await $`id -un`.text();
    const r = await $`ssh -o BatchMode=yes -o StrictHostKeyChecking=no \
      -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -i ${sshd.key} -p ${d.port} \
      ${user}@127.0.0.1 'echo through-portmux'`;
    assert.equal(r.stdout, "through-portmux\n", r.stderr);
    const line = await d.waitFor((l) => l.event === "connection" && l.route === "ssh");
    assert.equal(line.protocol, "ssh");
    assert.equal(line.reason, "matched");

    // A client that waits for the server to speak first.
    const silent = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
    const banner = await readAtLeast(silent, 8);
    assert.match(banner, /^SSH-2\.0-OpenSSH/);
    const timed = await d.connection(silent.localAddr.port);
    assert.equal(timed.route, "ssh");
    assert.equal(timed.reason, "timeout");
    silent.close();
  } finally {
    await d.stop();
    await sshd.stop();
  }
});

Deno.test("PROXY v2 from HAProxy: the real client reaches HTTPS handlers, handoff records and upstreams", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-pp-" });
  const service = await startPythonService(join(dir, "py.sock"));
  const echo = startProxyHeaderEcho();
  const d = await startDaemon({
    dataDir: dir,
    config: `
listen: [{ address: 127.0.0.1, port: 0, proxy_protocol: { trusted: [127.0.0.1/32] } }]
tls: { self_signed: true }
services: { py: { socket: ${JSON.stringify(service.socket)} } }
routes:
  - { name: web, match: { protocol: tls }, action: https }
  - { name: private, match: { prefix: PRIV }, action: handoff, service: py }
  - name: upstream
    match: { prefix: ECHO }
    action: proxy
    upstream: "127.0.0.1:${echo.port}"
    proxy_protocol: v2
`,
  });
  const haproxy = await startHaproxy(d.port);
  try {
    // HTTPS: the handler sees curl's own address and port, not HAProxy's.
    const r = await $`curl -sk -w '%{local_port}' https://127.0.0.1:${haproxy.port}/`;
    const curlPort = r.stdout.match(/(\d+)$/)![1];
    assert.match(r.stdout, new RegExp(`client: 127\\.0\\.0\\.1:${curlPort}\\n`));
    const https = await d.connection(Number(curlPort));
    assert.match(String(https.proxied_by), /^127\.0\.0\.1:\d+$/);
    assert.notEqual(https.proxied_by, `127.0.0.1:${curlPort}`);

    // Handoff: the record names the real client.
    const c = await Deno.connect({ hostname: "127.0.0.1", port: haproxy.port });
    assert.equal(await roundTrip(c, "PRIV via lb", 16), "ECHO:PRIV via lb");
    await service.waitForRecords(1);
    assert.deepEqual((service.records[0] as { client: unknown }).client, {
      address: "127.0.0.1",
      port: c.localAddr.port,
    });
    c.close();

    // Proxy with PROXY v2 to the upstream: it learns the real client too.
    const u = await Deno.connect({ hostname: "127.0.0.1", port: haproxy.port });
    const expected = `client=127.0.0.1:${u.localAddr.port} ECHO hi`;
    assert.equal(await roundTrip(u, "ECHO hi", expected.length), expected);
    u.close();

    // A trusted source that sends no PROXY header is refused, and says so.
    const bare = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
    await writeAll(bare, new TextEncoder().encode("PRIV no header"));
    assert.ok(await seesEnd(bare));
    const refused = await d.connection(bare.localAddr.port);
    assert.equal(refused.outcome, "failed");
    assert.match(String(refused.error), /no valid PROXY protocol header from trusted/);
  } finally {
    await haproxy.stop();
    await d.stop();
    await service.stop();
    await echo.stop();
  }
});

Deno.test("a PROXY header from an untrusted source is just bytes: no address spoofing", async () => {
  const d = await startDaemon({
    config: `
listen: [{ address: 127.0.0.1, port: 0, proxy_protocol: { trusted: [10.0.0.0/8] } }]
routes: [{ name: private, match: { prefix: PRIV }, action: close }]
`,
  });
  try {
    const c = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
    await writeAll(c, new TextEncoder().encode("PROXY TCP4 203.0.113.9 10.0.0.1 4444 443\r\nPRIV"));
    assert.ok(await seesEnd(c));
    const line = await d.connection(c.localAddr.port);
    assert.equal(line.client, `127.0.0.1:${c.localAddr.port}`);
    assert.equal(line.route, "default");
    assert.equal(line.proxied_by, undefined);
  } finally {
    await d.stop();
  }
});

Deno.test("ClientHellos delivered a byte per segment, or in two late halves, are routed by SNI", async () => {
  const d = await startDaemon({
    config: `
listen: [{ address: 127.0.0.1, port: 0 }]
routes:
  - { name: api, match: { protocol: tls, sni: api.example.com }, action: close }
  - { name: chrome, match: { protocol: tls, sni: chrome.example.com }, action: close }
  - { name: other, match: { protocol: tls }, action: close }
`,
  });
  try {
    const slow = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
    slow.setNoDelay(true);
    const hello = fixture("curl-openssl3-h2");
    for (let i = 0; i < hello.length; i++) {
      await writeAll(slow, hello.subarray(i, i + 1));
      if (i % 8 === 0) await sleep(1);
    }
    const a = await d.connection(slow.localAddr.port);
    assert.equal(a.route, "api");
    assert.equal(a.peeked, hello.length);
    slow.close();

    const pq = fixture("chromium-pq");
    const halves = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
    halves.setNoDelay(true);
    await writeAll(halves, pq.subarray(0, 1000));
    await sleep(200);
    await writeAll(halves, pq.subarray(1000));
    const b = await d.connection(halves.localAddr.port);
    assert.equal(b.route, "chrome");
    assert.equal(b.peeked, pq.length);
    // From its accept, which may come a few ms after the first half arrived.
    assert.ok(Number(b.decide_ms) >= 150, `decided only with the second half (${b.decide_ms} ms)`);
    halves.close();
  } finally {
    await d.stop();
  }
});

Deno.test("the proxy action keeps half-close: the client's EOF reaches the upstream, its answer still comes back", async () => {
  // This upstream answers only after the client's EOF reached it: a proxy
  // that drops the EOF gets no answer, one that closes on it loses it.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const upstream = (async () => {
    const conn = await listener.accept();
    const got = await readAtLeast(conn, Infinity);
    await writeAll(conn, new TextEncoder().encode(`after EOF: got ${got.length} bytes`));
    conn.close();
  })();
  const d = await startDaemon({
    config: `
listen: [{ address: 127.0.0.1, port: 0 }]
routes: [{ name: up, match: { prefix: ECHO }, action: proxy, upstream: "127.0.0.1:${listener.addr.port}" }]
`,
  });
  try {
    const c = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
    await writeAll(c, new TextEncoder().encode("ECHO all of this, then EOF"));
    await c.closeWrite();
    assert.equal(await readAtLeast(c, Infinity), "after EOF: got 26 bytes");
    c.close();
    await upstream;
  } finally {
    await d.stop();
    listener.close();
  }
});

Deno.test("a proxied connection that stays open holds a stop only up to the drain timeout", async () => {
  const upstream = startHttpUpstream("held");
  const d = await startDaemon({
    config: `
listen: [{ address: 127.0.0.1, port: 0 }]
drain_timeout_ms: 500
routes: [{ name: up, match: { protocol: http }, action: proxy, upstream: "127.0.0.1:${upstream.port}" }]
`,
  });
  const c = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
  try {
    // A keep-alive HTTP/1.1 connection: it stays open after its answer.
    await writeAll(c, new TextEncoder().encode("GET /x HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert.match(await readAtLeast(c, 10), /^HTTP\/1\.1 200/);
    await d.connection(c.localAddr.port);
    const t0 = performance.now();
    const status = await d.stop();
    assert.equal(status.code, 0);
    assert.ok(performance.now() - t0 < 3000, `stop took ${(performance.now() - t0).toFixed(0)} ms`);
    assert.equal(d.logs.find((l) => l.event === "drain-timeout")?.relays_open, 1);
  } finally {
    c.close();
    await d.stop();
    await upstream.stop();
  }
});
