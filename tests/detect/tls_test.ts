import assert from "node:assert/strict";
import { type ClientHello, detectTls } from "../../src/detect/tls.ts";
import type { Detection } from "../../src/detect/detection.ts";
import {
  alpnExtension,
  buildHello,
  fixture,
  handshakeOf,
  inRecords,
  sniExtension,
} from "../helpers/tls_records.ts";

function hello(d: Detection<ClientHello>): ClientHello {
  assert.equal(d.verdict, "match");
  return (d as { info: ClientHello }).info;
}

Deno.test("detectTls() parses real ClientHellos captured from curl, openssl, Python, Deno and Chromium", async (t) => {
  const expected: Record<string, Partial<ClientHello>> = {
    "curl-openssl3-h2": {
      sni: "api.example.com",
      alpn: ["h2", "http/1.1"],
      versions: [0x304, 0x303, 0x302, 0x301],
    },
    "curl-openssl3-http1-tls12": { sni: "www.example.org", alpn: ["http/1.1"], versions: [] },
    "openssl-s_client-alpn": { sni: "mail.example.net", alpn: ["imap", "h2"] },
    "openssl-s_client-no-sni": { sni: null, alpn: [] },
    "python-ssl": { sni: "py.example.com", alpn: ["http/1.1"] },
    "deno-rustls-ip-no-sni": { sni: null, alpn: ["h2", "http/1.1"], versions: [0x304, 0x303] },
    // Post-quantum key share: ~2 KB, more than one TCP segment on many links;
    // Chromium also sends GREASE versions, which must not show up.
    "chromium-pq": {
      sni: "chrome.example.com",
      alpn: ["h2", "http/1.1"],
      versions: [0x304, 0x303],
    },
  };
  for (const [name, want] of Object.entries(expected)) {
    await t.step(name, () => {
      const bytes = fixture(name);
      const h = hello(detectTls(bytes));
      assert.equal(h.complete, true);
      assert.equal(h.length, bytes.length);
      assert.equal(h.legacyVersion, 0x0303);
      for (const [k, v] of Object.entries(want)) assert.deepEqual(h[k as keyof ClientHello], v, k);
    });
  }
});

Deno.test("detectTls() says 'more' for every strict prefix of a hello, one byte at a time", () => {
  for (const name of ["curl-openssl3-h2", "chromium-pq"]) {
    const bytes = fixture(name);
    for (let n = 0; n < bytes.length; n++) {
      assert.equal(detectTls(bytes.subarray(0, n)).verdict, "more", `${name}, ${n} bytes`);
    }
    assert.equal(detectTls(bytes).verdict, "match");
  }
});

Deno.test("detectTls() reassembles a hello split over several records, SNI cut in the middle", () => {
  const message = handshakeOf(fixture("curl-openssl3-h2"));
  // Find the SNI name's bytes and cut the records inside it.
  const at = new TextDecoder("latin1").decode(message).indexOf("api.example.com");
  assert.ok(at > 0);
  const split = inRecords(message, [at + 4]);
  const h = hello(detectTls(split));
  assert.equal(h.sni, "api.example.com");
  assert.deepEqual(h.alpn, ["h2", "http/1.1"]);
  assert.equal(h.length, split.length);
  for (let n = 0; n < split.length; n++) {
    assert.equal(detectTls(split.subarray(0, n)).verdict, "more", `${n} bytes`);
  }
  // Records of 1 byte each, and a record holding only part of the header.
  assert.equal(
    hello(detectTls(inRecords(message, new Array(message.length).fill(1)))).sni,
    "api.example.com",
  );
  assert.equal(hello(detectTls(inRecords(message, [2, 3, 50]))).sni, "api.example.com");
});

Deno.test("detectTls() accepts an SSL 3.0 record version and reads TLS 1.0 hellos", () => {
  const message = handshakeOf(fixture("python-ssl"));
  assert.equal(hello(detectTls(inRecords(message, [], 0x0300))).recordVersion, 0x0300);
  const old = buildHello([sniExtension("legacy.example")], 0x0301);
  assert.equal(hello(detectTls(inRecords(old, []))).legacyVersion, 0x0301);
});

Deno.test("detectTls() refuses other records first, other handshakes, and plaintext", () => {
  const helloBytes = fixture("python-ssl");
  const ccs = Uint8Array.of(20, 3, 3, 0, 1, 1); // ChangeCipherSpec before the hello
  assert.equal(detectTls(Uint8Array.from([...ccs, ...helloBytes])).verdict, "no");
  const alert = Uint8Array.of(21, 3, 1, 0, 2, 2, 40);
  assert.equal(detectTls(alert).verdict, "no");
  const serverHello = Uint8Array.from(helloBytes);
  serverHello[5] = 2;
  assert.equal(detectTls(serverHello).verdict, "no");
  assert.equal(detectTls(new TextEncoder().encode("GET / HTTP/1.1\r\n")).verdict, "no");
  assert.equal(detectTls(Uint8Array.of(0x16, 0x02)).verdict, "no"); // SSL 2 style
  assert.equal(detectTls(Uint8Array.of(0x16, 0x03, 0x09)).verdict, "no");
  assert.equal(detectTls(Uint8Array.of(0x16, 0x03, 0x01, 0x00, 0x00)).verdict, "no"); // empty record
  assert.equal(detectTls(Uint8Array.of(0x16, 0x03, 0x01, 0x48, 0x01)).verdict, "no"); // > 2^14
});

Deno.test("detectTls() calls a hello with inconsistent lengths 'no', never throws", () => {
  const message = Uint8Array.from(handshakeOf(fixture("curl-openssl3-h2")));
  // The extensions block claims one byte more than there is.
  const broken = Uint8Array.from(message);
  const extLenAt = 4 + 2 + 32 + 1 + broken[4 + 2 + 32]!; // after session id
  const suites = (broken[extLenAt]! << 8) | broken[extLenAt + 1]!;
  const compAt = extLenAt + 2 + suites;
  const extAt = compAt + 1 + broken[compAt]!;
  const extLen = (broken[extAt]! << 8) | broken[extAt + 1]!;
  broken[extAt + 1] = (extLen + 1) & 0xff;
  assert.equal(detectTls(inRecords(broken, [])).verdict, "no");
  // An SNI entry with a zero length, and a non-ASCII name.
  assert.equal(detectTls(inRecords(buildHello([[0, [0, 3, 0, 0, 0]]]), [])).verdict, "no");
  assert.equal(
    detectTls(inRecords(buildHello([sniExtension("bad\u00e9.example")]), [])).verdict,
    "no",
  );
});

Deno.test("detectTls() says a hello larger than the limit is TLS with unknown SNI, at once", () => {
  const big = fixture("chromium-pq");
  const h = hello(detectTls(big.subarray(0, 600), 1024));
  assert.equal(h.complete, false);
  assert.equal(h.sni, null);
  // A hello declaring 16 MB in its handshake header, spread over records.
  const huge = Uint8Array.of(22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff);
  assert.equal(hello(detectTls(huge, 16384)).complete, false);
  const hugeOneRecord = Uint8Array.of(22, 3, 1, 0x40, 0x00, 1, 0xff, 0xff, 0xff);
  assert.equal(hello(detectTls(hugeOneRecord, 16384)).complete, false);
});

Deno.test("detectTls() drops GREASE from ALPN and supported_versions, lower-cases SNI", () => {
  const message = buildHello([
    sniExtension("Mixed.Example.COM"),
    alpnExtension([0x3a, 0x3a], "h2"),
    [43, [6, 0x7a, 0x7a, 0x03, 0x04, 0x03, 0x03]],
    [0x2a2a, []], // a GREASE extension type is skipped like any unknown one
  ]);
  const h = hello(detectTls(inRecords(message, [])));
  assert.equal(h.sni, "mixed.example.com");
  assert.deepEqual(h.alpn, ["h2"]);
  assert.deepEqual(h.versions, [0x0304, 0x0303]);
});
