import assert from "node:assert/strict";
import { join } from "node:path";
import { ConfigError, loadConfigFile, parseConfig } from "../src/config/config.ts";
import { VALID_CONFIG } from "./helpers/configs.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const VALID = VALID_CONFIG;

function errorOf(text: string): string {
  try {
    parseConfig(text, "test.yaml", "/tmp");
  } catch (e) {
    assert.ok(e instanceof ConfigError, `expected a ConfigError, got ${e}`);
    // One line; a YAML syntax error adds the parser's excerpt under it.
    const [first, ...excerpt] = e.message.split("\n");
    assert.ok(excerpt.every((l) => l.startsWith("  | ")), "one line (and an excerpt)");
    assert.ok(!excerpt.length || first!.includes("invalid YAML"), "one line");
    return first!;
  }
  assert.fail("the config was accepted");
}

Deno.test("parseConfig() reads a valid config into typed values with defaults", () => {
  const c = parseConfig(VALID, "test.yaml", "/tmp");
  assert.deepEqual(c.listen, [{ address: "127.0.0.1", port: 8443, proxyProtocol: null }]);
  assert.deepEqual(c.preread, {
    timeoutMs: 5000,
    maxBytes: 16384,
    express: true,
    deferAccept: true, // auto: nothing is served to a client that sends nothing
  });
  assert.equal(c.routes[0]?.action.kind, "handoff");
  assert.equal(c.services.get("svc")?.uid, Deno.uid());
  assert.equal(c.defaultRoute.action.kind, "close");
  assert.equal(c.tls, null);
});

Deno.test("preread.defer_accept: auto is off only when a route serves clients that send nothing", () => {
  const deferred = (extra: string) =>
    parseConfig(VALID + extra, "test.yaml", "/tmp").preread.deferAccept;
  const waiter = "  - { name: w, action: handoff, service: svc }\n";
  assert.equal(deferred(""), true);
  assert.equal(deferred("on_timeout: close\n"), true);
  assert.equal(deferred(waiter + "on_timeout: w\n"), false);
  assert.equal(deferred(waiter + "default: w\n"), false, "on_timeout falls back to default");
  assert.equal(deferred(waiter + "default: w\non_timeout: close\n"), true);
  assert.equal(deferred(waiter + "on_timeout: w\npreread: { defer_accept: true }\n"), true);
  assert.equal(deferred("preread: { defer_accept: false }\n"), false);
  assert.equal(deferred("preread: { defer_accept: auto }\n"), true);
});

Deno.test("the README's config by example loads", async () => {
  const dir = await Deno.makeTempDir();
  const readme = await Deno.readTextFile(join(ROOT, "README.md"));
  const example = /```yaml\n([\s\S]*?)```/.exec(readme)![1]!.replaceAll("/etc/portmux/", `${dir}/`);
  for (const f of ["example.pem", "example-key.pem"]) await Deno.writeTextFile(join(dir, f), "");
  const c = parseConfig(example, "README.md", dir);
  assert.deepEqual(c.routes.map((r) => [r.name, r.action.kind]), [
    ["web", "https"],
    ["chat", "handoff"],
    ["ssh", "proxy"],
  ]);
});

Deno.test("config/example.yaml documents a config that loads", async () => {
  const dir = await Deno.makeTempDir();
  // Its TLS files and handler module are placeholders: give them something to point at.
  const text = (await Deno.readTextFile(join(ROOT, "config/example.yaml")))
    .replace("/etc/portmux/cert.pem", join(dir, "c.pem"))
    .replace("/etc/portmux/key.pem", join(dir, "k.pem"));
  for (const f of ["c.pem", "k.pem", "app.ts"]) await Deno.writeTextFile(join(dir, f), "");
  const c = parseConfig(text, "example.yaml", dir);
  assert.deepEqual(c.routes.map((r) => r.name), [
    "api",
    "passthrough",
    "web",
    "ssh",
    "vpn",
    "vpn-relay",
    "legacy",
  ]);
  assert.deepEqual(c.services.get("vpn")?.sockets, ["/run/vpn/a.sock", "/run/vpn/b.sock"]);
  assert.equal(c.services.get("vpn")?.pidFile, "/run/vpn/vpn.pid");
  assert.equal(c.timeoutRoute.name, "ssh");
  assert.equal(c.listen[1]?.proxyProtocol?.trusted.length, 2);
  assert.deepEqual(c.limits, { maxConnections: 50000, maxPreread: 20000, maxPerSource: 1000 });
  assert.equal(c.drainTimeoutMs, 10000);
  assert.equal(c.https.hsts, "max-age=31536000; includeSubDomains");
  assert.equal(c.https.accessLog, "/var/log/portmux/access.log");
  assert.deepEqual(c.admin, { address: "127.0.0.1", port: 9090, token: null });
  assert.equal(c.services.get("vpn")?.uid, 998);
  assert.equal(c.services.get("echo")?.builtin, "echo");
  assert.deepEqual(c.listen.map((l) => l.address), ["0.0.0.0", "::1"]);
});

Deno.test("the embedded default config loads", async () => {
  const c = parseConfig(await Deno.readTextFile(join(ROOT, "config/default.yaml")), "default", ".");
  assert.deepEqual(c.listen, [{ address: "127.0.0.1", port: 8443, proxyProtocol: null }]);
  assert.deepEqual(c.tls, { kind: "self_signed" });
});

Deno.test("each config mistake gets one line naming the field and its line", async (t) => {
  const cases: [string, string, RegExp][] = [
    [
      "a typo in a top-level key",
      VALID + "defualt: close\n",
      /^test\.yaml:7: defualt: unknown key/,
    ],
    [
      "a typo inside a route",
      VALID.replace("action: handoff", "acton: handoff"),
      /^test\.yaml:6: routes\[0\]\.acton: unknown key \(expected one of: name, match, action, service, wait_ms, fallback, upstream, proxy_protocol\)/,
    ],
    [
      "a port out of range",
      VALID.replace("8443", "70000"),
      /^test\.yaml:2: listen\[0\]\.port: expected a whole number from 0 to 65535, got 70000/,
    ],
    [
      "an address that is a host name",
      VALID.replace("127.0.0.1", "localhost"),
      /listen\[0\]\.address: "localhost" is not an IPv4 or IPv6 address/,
    ],
    ["no listener", "listen: []\n", /^test\.yaml:1: listen: at least one listener is required/],
    [
      "an unknown action",
      VALID.replace("action: handoff", "action: hndoff"),
      /routes\[0\]\.action: unknown action "hndoff" \(expected https, handoff, proxy, close\)/,
    ],
    [
      "a handoff to an unknown service",
      VALID.replace("service: svc", "service: nope"),
      /routes\[0\]\.service: no service named "nope" under services/,
    ],
    [
      "a handoff without a service",
      VALID.replace(", service: svc", ""),
      /routes\[0\]\.service: is required/,
    ],
    [
      "an https route without tls",
      VALID + "  - { name: w, match: { protocol: tls }, action: https }\n",
      /routes\[1\]\.action: an https route needs a tls section/,
    ],
    [
      "an unknown protocol",
      VALID + "  - { name: w, match: { protocol: smtp }, action: close }\n",
      /routes\[1\]\.match\.protocol: unknown protocol "smtp" \(expected one of: tls, http, http2, ssh\)/,
    ],
    [
      "bad hex",
      VALID + "  - { name: h, match: { prefix_hex: abc }, action: close }\n",
      /routes\[1\]\.match\.prefix_hex: expected an even number of hex digits/,
    ],
    [
      "prefix and prefix_hex together",
      VALID + "  - { name: h, match: { prefix: a, prefix_hex: '61' }, action: close }\n",
      /routes\[1\]\.match\.prefix_hex: give prefix or prefix_hex, not both/,
    ],
    [
      "an empty match",
      VALID + "  - { name: h, match: {}, action: close }\n",
      /routes\[1\]\.match: give at least one of protocol, sni, alpn/,
    ],
    [
      "sni without protocol tls",
      VALID + "  - { name: h, match: { sni: a.example }, action: close }\n",
      /routes\[1\]\.match\.sni: only a route with protocol: tls can match on sni/,
    ],
    [
      "host on a tls route",
      VALID + "  - { name: h, match: { protocol: tls, host: a.example }, action: close }\n",
      /routes\[1\]\.match\.host: only a route with protocol: http can match on host/,
    ],
    [
      "a bad SNI pattern",
      VALID +
      "  - { name: h, match: { protocol: tls, sni: ['ok.example', 'a.*.example'] }, action: close }\n",
      /routes\[1\]\.match\.sni: "a\.\*\.example" is not a host name or a wildcard like \*\.example\.com/,
    ],
    [
      "a bad CIDR",
      VALID + "  - { name: h, match: { source: 10.0.0.0/33 }, action: close }\n",
      /routes\[1\]\.match\.source: "10\.0\.0\.0\/33" is not an address or CIDR block/,
    ],
    [
      "a bad byte pattern",
      VALID + "  - { name: h, match: { pattern: { bytes: '5G ??' } }, action: close }\n",
      /routes\[1\]\.match\.pattern\.bytes: expected hex byte pairs or \?\?/,
    ],
    [
      "a bad regular expression",
      VALID + "  - { name: h, match: { regex: { expression: '(' } }, action: close }\n",
      /routes\[1\]\.match\.regex\.expression: not a valid regular expression/,
    ],
    [
      "a proxy route without upstream",
      VALID + "  - { name: h, match: { protocol: ssh }, action: proxy }\n",
      /routes\[1\]\.upstream: is required/,
    ],
    [
      "an upstream without a port",
      VALID + "  - { name: h, match: { protocol: ssh }, action: proxy, upstream: localhost }\n",
      /routes\[1\]\.upstream: expected host:port/,
    ],
    [
      "proxy_protocol v1 to an upstream",
      VALID +
      "  - { name: h, match: { protocol: ssh }, action: proxy, upstream: '[::1]:22', proxy_protocol: v1 }\n",
      /routes\[1\]\.proxy_protocol: expected v2/,
    ],
    [
      "an upstream on a handoff route",
      VALID.replace("service: svc }", "service: svc, upstream: '1.2.3.4:5' }"),
      /routes\[0\]\.upstream: only a proxy route has upstream/,
    ],
    [
      "a fallback that names no route",
      VALID.replace("service: svc }", "service: svc, fallback: spare }"),
      /routes\[0\]\.fallback: no route named "spare"/,
    ],
    [
      "fallbacks in a circle",
      VALID.replace("service: svc }", "service: svc, fallback: q }") +
      "  - { name: q, action: handoff, service: svc, fallback: p }\n",
      /routes\[0\]\.fallback: fallbacks go round in a circle through "p"/,
    ],
    [
      "wait_ms on a close route",
      VALID + "  - { name: c, match: { prefix: X }, action: close, wait_ms: 5 }\n",
      /routes\[1\]\.wait_ms: only a handoff route has wait_ms/,
    ],
    [
      "a defer_accept that is not a boolean or auto",
      VALID + "preread: { defer_accept: yes please }\n",
      /preread\.defer_accept: expected true, false or auto/,
    ],
    [
      "an on_timeout that names no route",
      VALID + "on_timeout: ssh\n",
      /^test\.yaml:7: on_timeout: no route named "ssh"/,
    ],
    [
      "a listener's proxy_protocol without trusted sources",
      VALID.replace("port: 8443 }", "port: 8443, proxy_protocol: {} }"),
      /listen\[0\]\.proxy_protocol\.trusted: is required/,
    ],
    [
      "a bad trusted source",
      VALID.replace("port: 8443 }", "port: 8443, proxy_protocol: { trusted: [lb.example] } }"),
      /listen\[0\]\.proxy_protocol\.trusted: "lb\.example" is not an address or CIDR block/,
    ],
    [
      "a duplicate route name",
      VALID + "  - { name: p, match: { prefix: X }, action: close }\n",
      /routes\[1\]\.name: route name "p" is taken/,
    ],
    [
      "a default that names no route",
      VALID + "default: web\n",
      /^test\.yaml:7: default: no route named "web" \(expected close or a route's name\)/,
    ],
    [
      "a missing certificate file",
      VALID + "tls: { cert: /nonexistent/c.pem, key: /nonexistent/k.pem }\n",
      /tls\.cert: cannot read \/nonexistent\/c\.pem/,
    ],
    [
      "self_signed with files",
      VALID + "tls: { self_signed: true, cert: a.pem }\n",
      /tls\.self_signed: cannot be combined with cert, key or certificates/,
    ],
    [
      "certificates and cert together",
      VALID + "tls: { cert: /etc/hostname, key: /etc/hostname, certificates: [] }\n",
      /tls\.certificates: give cert and key, or certificates, not both/,
    ],
    [
      "a second certificate without names",
      VALID +
      "tls: { certificates: [{ cert: /etc/hostname, key: /etc/hostname }, { cert: /etc/hostname, key: /etc/hostname }] }\n",
      /tls\.certificates\[1\]\.names: is required \(only the first certificate, the default, may have none\)/,
    ],
    [
      "a certificate file that is not there",
      VALID +
      "tls: { certificates: [{ names: a.example, cert: /nonexistent.pem, key: /etc/hostname }] }\n",
      /tls\.certificates\[0\]\.cert: cannot read \/nonexistent\.pem/,
    ],
    [
      "a handler and a proxy",
      VALID + "https: { handler: /etc/hostname, proxy: { upstream: 'http://127.0.0.1:8080' } }\n",
      /https\.proxy: give one of handler, proxy or static/,
    ],
    [
      "a static folder that is a file",
      VALID + "https: { static: /etc/hostname }\n",
      /https\.static: \/etc\/hostname is not a folder portmux can read/,
    ],
    [
      "a proxy upstream that is not an http URL",
      VALID + "https: { proxy: { upstream: 'ftp://files' } }\n",
      /https\.proxy\.upstream: expected an http:\/\/ or https:\/\/ URL, got "ftp:\/\/files"/,
    ],
    [
      "a bad HSTS value",
      VALID + "https: { hsts: forever }\n",
      /https\.hsts: expected a Strict-Transport-Security value/,
    ],
    [
      "OCSP stapling asked for a certificate",
      VALID +
      "tls:\n  certificates:\n    - { cert: /etc/hostname, key: /etc/hostname, ocsp_stapling: true }\n",
      /tls\.certificates\[0\]\.ocsp_stapling: OCSP stapling is not supported: HTTPS is served by Deno\.serve, .* route the site's SNI to a server that does/,
    ],
    [
      "OCSP stapling asked for HTTPS",
      VALID + "https: { ocsp: on }\n",
      /https\.ocsp: OCSP stapling is not supported/,
    ],
    [
      "a bad log level",
      VALID + "log: { level: loud }\n",
      /log\.level: expected one of debug, info, warn, error/,
    ],
    [
      "a negative timeout",
      VALID + "preread: { timeout_ms: -1 }\n",
      /preread\.timeout_ms: expected a whole number from 1 to 600000, got -1/,
    ],
    [
      "a service without socket",
      VALID.replace("/tmp/svc.sock }", "/tmp/svc.sock }\n  x: {}"),
      /^test\.yaml:5: services\.x\.socket: is required/,
    ],
    [
      "an unknown built-in",
      VALID.replace("svc: { socket: /tmp/svc.sock }", "svc: { builtin: chat }"),
      /services\.svc\.builtin: unknown built-in service "chat" \(expected: echo\)/,
    ],
    ["broken YAML", "listen: [\n", /^test\.yaml:\d+: invalid YAML/],
    [
      "a duplicate key",
      VALID + "listen: []\n",
      /^test\.yaml:7: invalid YAML: Map keys must be unique/,
    ],
    ["an empty file", "", /^test\.yaml: the config is empty/],
    ["a list at the top", "- a\n", /expected a map/],
  ];
  for (const [name, text, expected] of cases) {
    await t.step(name, () => assert.match(errorOf(text), expected));
  }
});

Deno.test("loadConfigFile() names a missing file", () => {
  assert.throws(
    () => loadConfigFile("/nonexistent/portmux.yaml"),
    /^ConfigError: \/nonexistent\/portmux\.yaml: cannot read the config file/,
  );
});
