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

Deno.test("detectProxyHeader() refuses v1 addresses and ports that are not canonical", () => {
  const v1 = (family: string, src: string, dst: string, sport = "1", dport = "2") =>
    `PROXY ${family} ${src} ${dst} ${sport} ${dport}\r\n`;
  for (
    const bad of [
      v1("TCP6", ":::::::::::", "::1"), // the audit's reproducer
      v1("TCP6", "::1", ":::::::::::"),
      v1("TCP6", ":.:", "::1"),
      v1("TCP6", "1::2::3", "::1"),
      v1("TCP6", ":1::", "::1"),
      v1("TCP6", "1:2:3:4:5:6:7:8:9", "::1"),
      v1("TCP6", "1:2:3:4:5:6:7", "::1"),
      v1("TCP6", "12345::", "::1"),
      v1("TCP6", "::ffff:1.2.3.256", "::1"),
      v1("TCP6", "::ffff:01.2.3.4", "::1"),
      v1("TCP6", "fe80::1%eth0", "::1"),
      v1("TCP6", "192.0.2.1", "::1"),
      v1("TCP4", "192.0.2.01", "10.1.1.1"),
      v1("TCP4", "192.0.2.1", "010.1.1.1"),
      v1("TCP4", "00.0.0.0", "10.1.1.1"),
      v1("TCP4", "192.0.2", "10.1.1.1"),
      v1("TCP4", "192.0.2.1.", "10.1.1.1"),
      v1("TCP4", "::ffff:192.0.2.1", "10.1.1.1"),
      v1("TCP4", "192.0.2.1", "10.1.1.1", "00"),
      v1("TCP4", "192.0.2.1", "10.1.1.1", "+1"),
      v1("TCP4", "192.0.2.1", "10.1.1.1", "1", "99999"),
    ]
  ) assert.equal(detectProxyHeader(enc.encode(bad)).verdict, "no", JSON.stringify(bad));
  for (
    const good of [
      v1("TCP4", "0.0.0.0", "255.255.255.255", "0", "65535"),
      v1("TCP6", "::ffff:192.0.2.1", "::", "0", "65535"),
      v1("TCP6", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::"),
      v1("TCP6", "::2:3:4:5:6:7:8", "FE80::A"),
    ]
  ) assert.equal(detectProxyHeader(enc.encode(good)).verdict, "match", JSON.stringify(good));
});

Deno.test("detectProxyHeader(): every v1 address it accepts can go upstream in a v2 header", () => {
  let seed = 1;
  const random = (n: number) => (seed = (seed * 48271) % 0x7fffffff) % n; // repeatable
  const alphabet = "0:1f.:a:9";
  let matched = 0;
  for (let i = 0; i < 20000; i++) {
    let address = "";
    for (let n = 1 + random(16); n > 0; n--) address += alphabet[random(alphabet.length)];
    const d = detectProxyHeader(enc.encode(`PROXY TCP6 ${address} ::1 1 2\r\n`));
    if (d.verdict !== "match") continue;
    matched++;
    const { source, destination } = d.info;
    assert.doesNotThrow(() => encodeProxyV2(source!, destination!), address);
  }
  assert.ok(matched > 0, "some addresses are valid");
});
