import assert from "node:assert/strict";
import { detectProxyHeader, encodeProxyV2, V2_SIGNATURE } from "../../src/detect/proxy_protocol.ts";

const enc = new TextEncoder();

Deno.test("detectProxyHeader() reads v1 TCP4, TCP6 and UNKNOWN lines", () => {
  assert.deepEqual(
    detectProxyHeader(enc.encode("PROXY TCP4 192.0.2.9 10.1.1.1 56324 443\r\nGET")),
    {
      verdict: "match",
      info: {
        version: 1,
        length: 41,
        source: { address: "192.0.2.9", port: 56324 },
        destination: { address: "10.1.1.1", port: 443 },
      },
    },
  );
  const v6 = detectProxyHeader(enc.encode("PROXY TCP6 2001:DB8::1 ::1 1 2\r\n"));
  assert.equal(v6.verdict === "match" && v6.info.source?.address, "2001:db8::1");
  const unknown = detectProxyHeader(enc.encode("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"));
  assert.equal(unknown.verdict === "match" && unknown.info.source, null);
});

Deno.test("detectProxyHeader() waits for a whole header and refuses broken ones", () => {
  const line = "PROXY TCP4 192.0.2.9 10.1.1.1 56324 443\r\n";
  for (let n = 0; n < line.length; n++) {
    assert.equal(detectProxyHeader(enc.encode(line.slice(0, n))).verdict, "more", `${n}`);
  }
  for (
    const bad of [
      "PROXY TCP4 192.0.2.300 10.1.1.1 1 2\r\n",
      "PROXY TCP4 192.0.2.1 10.1.1.1 1 65536\r\n",
      "PROXY TCP4 192.0.2.1 10.1.1.1 01 2\r\n",
      "PROXY TCP5 a b 1 2\r\n",
      "PROXY TCP4 192.0.2.1 10.1.1.1 1 2\n", // no CR
      "PROXY " + "x".repeat(120),
      "GET / HTTP/1.1\r\n",
    ]
  ) assert.equal(detectProxyHeader(enc.encode(bad)).verdict, "no", JSON.stringify(bad));
});

Deno.test("encodeProxyV2() and detectProxyHeader() agree, for IPv4, IPv6 and mixed families", () => {
  const cases = [
    [{ address: "192.0.2.1", port: 5000 }, { address: "10.0.0.1", port: 443 }, 28],
    [{ address: "2001:db8::1", port: 1 }, { address: "::1", port: 2 }, 52],
  ] as const;
  for (const [source, destination, length] of cases) {
    assert.deepEqual(detectProxyHeader(encodeProxyV2(source, destination)), {
      verdict: "match",
      info: { version: 2, length, source, destination },
    });
  }
  const mixed = detectProxyHeader(
    encodeProxyV2({ address: "192.0.2.1", port: 5 }, { address: "::1", port: 6 }),
  );
  assert.equal(mixed.verdict === "match" && mixed.info.source?.address, "::ffff:192.0.2.1");
});

Deno.test("detectProxyHeader() handles v2 LOCAL, TLVs, partial headers and bad versions", () => {
  const local = Uint8Array.from([...V2_SIGNATURE, 0x20, 0x00, 0, 0]);
  assert.deepEqual(detectProxyHeader(local), {
    verdict: "match",
    info: { version: 2, length: 16, source: null, destination: null },
  });
  const withTlv = encodeProxyV2({ address: "192.0.2.1", port: 1 }, {
    address: "192.0.2.2",
    port: 2,
  });
  const tlv = Uint8Array.from([...withTlv, 0x04, 0x00, 0x01, 0x00]); // a NOOP TLV
  tlv[15] = 12 + 4;
  const d = detectProxyHeader(tlv);
  assert.equal(d.verdict === "match" && d.info.length, 32);
  for (let n = 0; n < withTlv.length; n++) {
    assert.equal(detectProxyHeader(withTlv.subarray(0, n)).verdict, "more", `${n}`);
  }
  const v3 = Uint8Array.from(withTlv);
  v3[12] = 0x31;
  assert.equal(detectProxyHeader(v3).verdict, "no");
  const huge = Uint8Array.from([...V2_SIGNATURE, 0x21, 0x11, 0xff, 0xff]);
  assert.equal(detectProxyHeader(huge).verdict, "no");
});
