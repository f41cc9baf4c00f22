import assert from "node:assert/strict";
import { decide, type Fallbacks } from "../src/route/classify.ts";
import { parseConfig, type Route } from "../src/config/config.ts";
import { fixture } from "./helpers/tls_records.ts";

const enc = new TextEncoder();
const client = { address: "192.0.2.7", port: 40000 };

/** Routes from YAML, as an operator writes them. */
function routes(yaml: string): { routes: readonly Route[]; fallbacks: Fallbacks } {
  const c = parseConfig(
    `listen: [{ address: 127.0.0.1, port: 1 }]
tls: { self_signed: true }
routes:
${yaml}`,
    "test",
    "/tmp",
  );
  return { routes: c.routes, fallbacks: c };
}

function route(
  r: ReturnType<typeof routes>,
  bytes: Uint8Array | string,
  opts: { final?: "timeout" | "eof" | "peek-limit"; from?: string; maxBytes?: number } = {},
) {
  const input = {
    bytes: typeof bytes === "string" ? enc.encode(bytes) : bytes,
    client: opts.from ? { address: opts.from, port: 1 } : client,
    maxBytes: opts.maxBytes ?? 16384,
  };
  return decide(r.routes, r.fallbacks, input, opts.final ?? null);
}

const WEB = routes(`
  - { name: api, match: { protocol: tls, sni: api.example.com }, action: close }
  - { name: wild, match: { protocol: tls, sni: "*.example.org" }, action: close }
  - { name: h2, match: { protocol: tls, alpn: h2 }, action: https }
  - { name: tls, match: { protocol: tls }, action: https }
  - { name: http-admin, match: { protocol: http, host: admin.example.com }, action: close }
  - { name: http, match: { protocol: http }, action: close }
  - { name: h2c, match: { protocol: http2 }, action: close }
  - { name: ssh, match: { protocol: ssh }, action: close }
`);

Deno.test("decide() routes real ClientHellos by SNI (exact, wildcard) and ALPN", () => {
  const api = route(WEB, fixture("curl-openssl3-h2"));
  assert.equal(api?.route.name, "api");
  assert.deepEqual(api?.facts, {
    protocol: "tls",
    sni: "api.example.com",
    alpn: ["h2", "http/1.1"],
  });
  assert.equal(route(WEB, fixture("curl-openssl3-http1-tls12"))?.route.name, "wild"); // www.example.org
  assert.equal(route(WEB, fixture("chromium-pq"))?.route.name, "h2"); // no SNI rule, offers h2
  assert.equal(route(WEB, fixture("openssl-s_client-no-sni"))?.route.name, "tls");
});

Deno.test("decide() waits for the rest of a ClientHello before routing on SNI", () => {
  const hello = fixture("chromium-pq");
  assert.equal(route(WEB, hello.subarray(0, 1400)), null);
  // At the deadline a partial hello matches no TLS route: the default.
  const late = route(WEB, hello.subarray(0, 1400), { final: "timeout" });
  assert.equal(late?.route.name, "default");
  assert.equal(late?.reason, "timeout");
});

Deno.test("decide() routes a hello larger than the peek limit on 'tls' alone, at once", () => {
  const d = route(WEB, fixture("chromium-pq").subarray(0, 800), { maxBytes: 1024 });
  assert.equal(d?.route.name, "tls");
  assert.equal(d?.facts.sni, null);
});

Deno.test("decide() routes HTTP/1.x by Host once the headers say it", () => {
  const admin = "GET / HTTP/1.1\r\nUser-Agent: x\r\nHost: Admin.Example.com:8080\r\n\r\n";
  assert.equal(route(WEB, admin)?.route.name, "http-admin");
  assert.equal(route(WEB, admin)?.facts.host, "admin.example.com");
  assert.equal(route(WEB, "GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n")?.route.name, "http");
  // Headers not complete, Host not yet seen: wait.
  assert.equal(route(WEB, "GET / HTTP/1.1\r\nUser-Agent: x\r\n"), null);
  assert.equal(
    route(WEB, "GET / HTTP/1.1\r\nUser-Agent: x\r\n", { final: "eof" })?.route.name,
    "http",
  );
  assert.equal(route(WEB, "GET / HTTP/1.0\r\n\r\n")?.route.name, "http"); // no Host at all
});

Deno.test("decide() knows the HTTP/2 preface and the SSH banner", () => {
  assert.equal(route(WEB, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")?.route.name, "h2c");
  assert.equal(route(WEB, "PRI * HTTP/2.0\r\n"), null);
  assert.equal(route(WEB, "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n")?.route.name, "ssh");
  assert.equal(route(WEB, "SSH-2.0-")?.route.name, "ssh");
  assert.equal(route(WEB, "SSH-2")?.route.name, undefined); // still could be SSH
});

Deno.test("decide() sends garbage to the default route without waiting", () => {
  const d = route(WEB, Uint8Array.of(0, 1, 2, 3, 0xff));
  assert.equal(d?.route.name, "default");
  assert.equal(d?.reason, "no-match");
});

Deno.test("decide() takes the timeout route only for a client that sent nothing", () => {
  const r = routes(`
  - { name: ssh, match: { protocol: ssh }, action: close }
  - { name: web, match: { protocol: tls }, action: https }
on_timeout: ssh
default: web
`);
  assert.equal(route(r, "", { final: "timeout" })?.route.name, "ssh");
  assert.equal(route(r, "", { final: "timeout" })?.reason, "timeout");
  assert.equal(route(r, "SS", { final: "timeout" })?.route.name, "web"); // something came: default
  assert.equal(route(r, "", { final: "eof" })?.route.name, "web");
});

Deno.test("decide() applies private matchers: prefix, pattern, regex, min_length, all together", () => {
  const r = routes(`
  - { name: hex, match: { prefix_hex: "00ff" }, action: close }
  - { name: pattern, match: { pattern: { offset: 2, bytes: "ab ?? cd" } }, action: close }
  - { name: both, match: { prefix: "Z", min_length: 4 }, action: close }
  - { name: regex, match: { regex: { expression: "^MYP/[0-9]+ ", max_bytes: 16 } }, action: close }
`);
  assert.equal(route(r, Uint8Array.of(0x00, 0xff, 1))?.route.name, "hex");
  assert.equal(route(r, Uint8Array.of(1, 1, 0xab, 0x77, 0xcd))?.route.name, "pattern");
  assert.equal(route(r, Uint8Array.of(1, 1, 0xab, 0x77)), null); // pattern needs byte 4
  assert.equal(route(r, Uint8Array.of(1, 1, 0xab, 0x77, 0xce)), null); // regex: up to 16 bytes
  assert.equal(
    route(r, Uint8Array.of(1, 1, 0xab, 0x77, 0xce), { final: "eof" })?.route.name,
    "default",
  );
  assert.equal(route(r, "MYP/12 hello")?.route.name, "regex");
  assert.equal(route(r, "MYP/1"), null); // could still match, within 16 bytes
  assert.equal(route(r, "NOPE-not-it-at-all")?.route.name, "default"); // 16 bytes: regex gives up
  assert.equal(route(r, "Zab"), null);
  assert.equal(route(r, "Zabc")?.route.name, "both");
});

Deno.test("decide() waits while an earlier route still needs bytes, even if a later one matches", () => {
  const r = routes(`
  - { name: long, match: { prefix: PRIVATE-LONG }, action: close }
  - { name: short, match: { prefix: PRIV }, action: close }
`);
  assert.equal(route(r, "PRIVATE"), null);
  assert.equal(route(r, "PRIVATE-LONG")?.route.name, "long");
  assert.equal(route(r, "PRIV-other")?.route.name, "short");
  // At the deadline "more" counts as "no": the later, matching route wins.
  assert.equal(route(r, "PRIVATE", { final: "timeout" })?.route.name, "short");
});

Deno.test("decide() checks the source address, IPv4 and IPv6, mapped or not", () => {
  const r = routes(`
  - { name: office, match: { source: [10.0.0.0/8, "2001:db8::/32"], prefix: X }, action: close }
  - { name: anyone, match: { prefix: X }, action: close }
`);
  assert.equal(route(r, "X", { from: "10.1.2.3" })?.route.name, "office");
  assert.equal(route(r, "X", { from: "::ffff:10.1.2.3" })?.route.name, "office");
  assert.equal(route(r, "X", { from: "2001:db8:1::5" })?.route.name, "office");
  assert.equal(route(r, "X", { from: "11.0.0.1" })?.route.name, "anyone");
  assert.equal(route(r, "X", { from: "2001:db9::1" })?.route.name, "anyone");
});

Deno.test("decide() never matches a route without match; it is there to be named", () => {
  const r = routes(`
  - { name: backup, action: close }
  - { name: priv, match: { prefix: PRIV }, action: close }
default: backup
`);
  assert.equal(route(r, "PRIV")?.route.name, "priv");
  assert.equal(route(r, "other")?.route.name, "backup");
  assert.equal(route(r, "other")?.reason, "no-match");
});
