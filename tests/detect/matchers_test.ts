import assert from "node:assert/strict";
import {
  matchMinLength,
  matchPattern,
  matchRegex,
  parseBytePattern,
} from "../../src/detect/private.ts";
import { cidrContains, ipBytes, parseCidr } from "../../src/net/ip.ts";
import { nameMatches, parseNamePattern } from "../../src/route/name_pattern.ts";

const enc = new TextEncoder();

Deno.test("parseBytePattern() reads hex pairs and ?? wildcards", () => {
  assert.deepEqual(parseBytePattern("50 52 ?? 56"), [0x50, 0x52, null, 0x56]);
  assert.deepEqual(parseBytePattern("5052??56"), [0x50, 0x52, null, 0x56]);
  for (const bad of ["5", "5G", "50 5", "?", "zz"]) assert.equal(parseBytePattern(bad), null, bad);
});

Deno.test("matchPattern() checks bytes at an offset, waiting for them", () => {
  const p = { offset: 1, bytes: [0xaa, null, 0xcc] };
  assert.equal(matchPattern(p, Uint8Array.of(0, 0xaa, 1, 0xcc)), "match");
  assert.equal(matchPattern(p, Uint8Array.of(0, 0xaa, 1)), "more");
  assert.equal(matchPattern(p, Uint8Array.of(0, 0xab)), "no");
});

Deno.test("matchRegex() reads bytes as latin1 and gives up at its bound", () => {
  // Matching control bytes is the point of a byte regex (in the config,
  // \xNN in the expression stands for a byte).
  // deno-lint-ignore no-control-regex
  const r = { expression: /^\x00\xffHELLO/s, maxBytes: 10 };
  assert.equal(matchRegex(r, Uint8Array.of(0, 0xff, ...enc.encode("HELLO"))), "match");
  assert.equal(matchRegex(r, Uint8Array.of(0, 0xff, ...enc.encode("HEL"))), "more");
  assert.equal(matchRegex(r, enc.encode("0123456789")), "no");
  // Bytes past the bound are not looked at.
  assert.equal(matchRegex({ expression: /X/, maxBytes: 3 }, enc.encode("abcX")), "no");
  assert.equal(matchMinLength(3, enc.encode("ab")), "more");
  assert.equal(matchMinLength(3, enc.encode("abc")), "match");
});

Deno.test("CIDR blocks contain their addresses, IPv4-mapped IPv6 included", () => {
  const c = parseCidr("10.0.0.0/8")!;
  assert.ok(cidrContains(c, "10.255.0.1"));
  assert.ok(cidrContains(c, "::ffff:10.1.2.3"));
  assert.ok(!cidrContains(c, "11.0.0.1"));
  assert.ok(!cidrContains(c, "::1"));
  const v6 = parseCidr("2001:db8::/33")!;
  assert.ok(cidrContains(v6, "2001:db8:7fff::1"));
  assert.ok(!cidrContains(v6, "2001:db8:8000::1"));
  assert.ok(cidrContains(parseCidr("::1")!, "::1"));
  assert.ok(cidrContains(parseCidr("0.0.0.0/0")!, "192.0.2.1"));
  for (
    const bad of [
      "10.0.0.0/33",
      "1.2.3",
      "::1/129",
      "a.b.c.d/8",
      "1.2.3.4/8/1",
      "1:2:3:4:5:6:7:8:9",
    ]
  ) {
    assert.equal(parseCidr(bad), null, bad);
  }
  assert.deepEqual([...ipBytes("::ffff:1.2.3.4")!], [1, 2, 3, 4]);
  assert.equal(ipBytes("2001:db8::1")?.length, 16);
});

Deno.test("name patterns: exact and *.suffix, case-insensitive", () => {
  const exact = parseNamePattern("API.example.com.")!;
  assert.ok(nameMatches(exact, "api.example.com"));
  assert.ok(!nameMatches(exact, "x.api.example.com"));
  const wild = parseNamePattern("*.example.com")!;
  assert.ok(nameMatches(wild, "a.example.com"));
  assert.ok(nameMatches(wild, "a.b.Example.com"));
  assert.ok(!nameMatches(wild, "example.com"));
  assert.ok(!nameMatches(wild, "badexample.com"));
  for (const bad of ["a.*.com", "*", "exa mple.com", "-a.com", "*.", ""]) {
    assert.equal(parseNamePattern(bad), null, bad);
  }
});
