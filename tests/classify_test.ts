import assert from "node:assert/strict";
import { decide, matchPrefix, matchTlsClientHello } from "../src/classify.ts";
import type { DefaultRoute, Route } from "../src/config.ts";

const enc = new TextEncoder();
const bytes = (...b: number[]) => Uint8Array.from(b);

// The first 6 bytes of a real ClientHello (curl 7.88 / OpenSSL 3.0): a
// handshake record, legacy version TLS 1.0, length 512, client_hello.
const HELLO_HEAD = bytes(0x16, 0x03, 0x01, 0x02, 0x00, 0x01);

Deno.test("matchTlsClientHello() matches a handshake record holding a client_hello", () => {
  assert.equal(matchTlsClientHello(HELLO_HEAD), "match");
  assert.equal(matchTlsClientHello(bytes(0x16, 0x03, 0x03, 0x00, 0x40, 0x01)), "match");
  assert.equal(matchTlsClientHello(bytes(0x16, 0x03, 0x00, 0x00, 0x40, 0x01)), "match"); // SSL 3.0 record
});

Deno.test("matchTlsClientHello() asks for more bytes until it can tell", () => {
  for (let n = 0; n < HELLO_HEAD.length; n++) {
    assert.equal(matchTlsClientHello(HELLO_HEAD.subarray(0, n)), "more", `after ${n} bytes`);
  }
});

Deno.test("matchTlsClientHello() says no to other records, versions and plaintext", () => {
  assert.equal(matchTlsClientHello(bytes(0x17, 0x03, 0x03)), "no"); // application data
  assert.equal(matchTlsClientHello(bytes(0x16, 0x02)), "no"); // SSL 2
  assert.equal(matchTlsClientHello(bytes(0x16, 0x03, 0x05)), "no"); // no such version
  assert.equal(matchTlsClientHello(bytes(0x16, 0x03, 0x01, 0x00, 0x10, 0x02)), "no"); // server_hello
  assert.equal(matchTlsClientHello(enc.encode("GET / HTTP/1.1\r\n")), "no");
  assert.equal(matchTlsClientHello(enc.encode("SSH-2.0-OpenSSH_9.2")), "no");
});

Deno.test("matchPrefix() matches, waits for the rest of a prefix, or refuses", () => {
  const p = enc.encode("PRIV");
  assert.equal(matchPrefix(p, enc.encode("PRIV")), "match");
  assert.equal(matchPrefix(p, enc.encode("PRIVATE data")), "match");
  assert.equal(matchPrefix(p, enc.encode("PR")), "more");
  assert.equal(matchPrefix(p, enc.encode("")), "more");
  assert.equal(matchPrefix(p, enc.encode("PX")), "no");
  assert.equal(matchPrefix(p, enc.encode("priv")), "no");
});

const tls: Route = { name: "web", match: { protocol: "tls" }, action: { kind: "https" } };
const longPrefix: Route = {
  name: "long",
  match: { prefix: enc.encode("PRIVATE-LONG") },
  action: { kind: "close" },
};
const priv: Route = {
  name: "priv",
  match: { prefix: enc.encode("PRIV") },
  action: { kind: "close" },
};
const fallback: DefaultRoute = { name: "default", action: { kind: "close" } };

Deno.test("decide() takes the first route that matches", () => {
  const d = decide([tls, priv], fallback, HELLO_HEAD, null);
  assert.equal(d?.route, tls);
  assert.equal(d?.reason, "matched");
  assert.equal(decide([tls, priv], fallback, enc.encode("PRIV!"), null)?.route, priv);
});

Deno.test("decide() waits while an earlier route still needs bytes, even if a later one matches", () => {
  assert.equal(decide([longPrefix, priv], fallback, enc.encode("PRIVATE"), null), null);
  assert.equal(
    decide([longPrefix, priv], fallback, enc.encode("PRIVATE-LONG"), null)?.route,
    longPrefix,
  );
  assert.equal(decide([longPrefix, priv], fallback, enc.encode("PRIV-other"), null)?.route, priv);
});

Deno.test("decide() settles on what it has when no more bytes will come", () => {
  // At the deadline "more" counts as "no": the later, matching route wins.
  const d = decide([longPrefix, priv], fallback, enc.encode("PRIVATE"), "timeout");
  assert.equal(d?.route, priv);
  assert.equal(d?.reason, "matched");
  const none = decide([tls, priv], fallback, enc.encode(""), "timeout");
  assert.equal(none?.route, fallback);
  assert.equal(none?.reason, "timeout");
  assert.equal(decide([tls, priv], fallback, enc.encode("PR"), "eof")?.reason, "eof");
  assert.equal(decide([tls, priv], fallback, enc.encode("hello"), null)?.reason, "no-match");
});
