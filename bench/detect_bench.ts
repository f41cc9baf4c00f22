/**
 * `deno bench` for the detectors (pure functions, one core). The figure the
 * detection issue asks for: ClientHellos parsed per second for a typical
 * 512-byte hello (curl's), at least 1,000,000.
 */
import { decide } from "../src/route/classify.ts";
import { parseConfig } from "../src/config/config.ts";
import { detectHttp1 } from "../src/detect/http.ts";
import { detectSsh } from "../src/detect/ssh.ts";
import { detectTls } from "../src/detect/tls.ts";

const fixture = (name: string) =>
  Deno.readFileSync(new URL(`../tests/fixtures/tls/${name}.bin`, import.meta.url));
const curl = fixture("curl-openssl3-h2");
const chromium = fixture("chromium-pq");

Deno.bench("detectTls: curl ClientHello, 517 bytes", { group: "tls", baseline: true }, () => {
  if (detectTls(curl).verdict !== "match") throw new Error("not parsed");
});
Deno.bench("detectTls: Chromium post-quantum ClientHello, 1958 bytes", { group: "tls" }, () => {
  if (detectTls(chromium).verdict !== "match") throw new Error("not parsed");
});

const enc = new TextEncoder();
const request = enc.encode(
  "GET /index.html HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n",
);
const banner = enc.encode("SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n");

Deno.bench("detectHttp1: a curl request with Host", { group: "other" }, () => {
  if (detectHttp1(request).verdict !== "match") throw new Error("not parsed");
});
Deno.bench("detectSsh: an OpenSSH banner", { group: "other" }, () => {
  if (detectSsh(banner).verdict !== "match") throw new Error("not parsed");
});

// A whole decision over a realistic route table: the hello is checked by
// three SNI routes before it matches on ALPN.
const config = parseConfig(
  `listen: [{ address: 127.0.0.1, port: 1 }]
tls: { self_signed: true }
routes:
  - { name: a, match: { protocol: tls, sni: a.example.net }, action: https }
  - { name: b, match: { protocol: tls, sni: "*.example.org" }, action: https }
  - { name: c, match: { prefix: PRIV }, action: close }
  - { name: d, match: { protocol: tls, alpn: h2 }, action: https }
  - { name: e, match: { protocol: ssh }, action: close }
`,
  "bench",
  "/tmp",
);
const input = { bytes: curl, client: { address: "192.0.2.1", port: 1 }, maxBytes: 16384 };
Deno.bench("decide: curl ClientHello through 5 routes", { group: "other" }, () => {
  if (decide(config.routes, config, input, null)?.route.name !== "d") throw new Error("misrouted");
});
