/**
 * Fuzzing the detectors and the whole classifier: thousands of random and
 * mutated inputs each. Malformed input must be a verdict, never an
 * exception, and no input may make a call take long (a hang or a blow-up
 * with input size). Seeded, so a failure can be replayed.
 */
import assert from "node:assert/strict";
import { decide } from "../../src/route/classify.ts";
import { parseConfig } from "../../src/config/config.ts";
import { detectHttp1, detectHttp2 } from "../../src/detect/http.ts";
import { detectProxyHeader, encodeProxyV2, V2_SIGNATURE } from "../../src/detect/proxy_protocol.ts";
import { detectSsh } from "../../src/detect/ssh.ts";
import { detectTls } from "../../src/detect/tls.ts";
import { FIXTURES } from "../helpers/tls_records.ts";

const SEED = Number(Deno.env.get("FUZZ_SEED") ?? 20261121);
const RUNS = Number(Deno.env.get("FUZZ_RUNS") ?? 4000);
const MAX_CALL_MS = 50; // a bound against hangs, not a speed figure

/** mulberry32: small, seeded, good enough to spread inputs. */
function rng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return { next, int: (n: number) => Math.floor(next() * n) };
}

const enc = new TextEncoder();
const SEEDS: Uint8Array[] = [
  ...[...Deno.readDirSync(FIXTURES)].map((e) => Deno.readFileSync(FIXTURES + e.name)),
  enc.encode("GET /index.html HTTP/1.1\r\nHost: www.example.com\r\nAccept: */*\r\n\r\n"),
  enc.encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
  enc.encode("SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"),
  enc.encode("PROXY TCP4 192.0.2.9 10.1.1.1 56324 443\r\nPRIV"),
  encodeProxyV2({ address: "2001:db8::1", port: 1 }, { address: "::1", port: 2 }),
];
const STARTS = [
  [0x16, 0x03, 0x01],
  [...enc.encode("GET ")],
  [...enc.encode("SSH-2.0-")],
  [
    ...enc.encode("PROXY "),
  ],
  [...V2_SIGNATURE],
  [...enc.encode("PRIV")],
];

function randomInput(r: ReturnType<typeof rng>): Uint8Array {
  const len = r.next() < 0.7 ? r.int(64) : r.int(4096);
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) b[i] = r.int(256);
  if (r.next() < 0.5) b.set(STARTS[r.int(STARTS.length)]!.slice(0, len));
  return b;
}

/** A real input with a few bytes flipped, cut, duplicated or set to extremes. */
function mutate(r: ReturnType<typeof rng>): Uint8Array {
  let b = Uint8Array.from(SEEDS[r.int(SEEDS.length)]!);
  const edits = 1 + r.int(4);
  for (let e = 0; e < edits && b.length > 0; e++) {
    const at = r.int(b.length);
    switch (r.int(5)) {
      case 0:
        b[at] = r.int(256);
        break;
      case 1:
        b[at] = r.next() < 0.5 ? 0x00 : 0xff; // lengths at their extremes
        break;
      case 2:
        b = b.slice(0, at);
        break;
      case 3:
        b = Uint8Array.from([
          ...b.subarray(0, at),
          ...b.subarray(at - Math.min(at, 100), at),
          ...b.subarray(at),
        ]);
        break;
      case 4:
        b = Uint8Array.from([...b.subarray(0, at), ...b.subarray(at + 1 + r.int(16))]);
        break;
    }
  }
  return b;
}

const ROUTES = parseConfig(
  `listen: [{ address: 127.0.0.1, port: 1 }]
tls: { self_signed: true }
routes:
  - { name: a, match: { protocol: tls, sni: "*.example.com", alpn: h2 }, action: https }
  - { name: b, match: { protocol: http, host: www.example.com }, action: close }
  - { name: c, match: { protocol: http2 }, action: close }
  - { name: d, match: { protocol: ssh, source: 10.0.0.0/8 }, action: close }
  - { name: e, match: { pattern: { offset: 3, bytes: "?? 00 ff" } }, action: close }
  - { name: f, match: { regex: { expression: "^(MY|YOUR)P/[0-9]+", max_bytes: 64 } }, action: close }
  - { name: g, match: { prefix: PRIV, min_length: 8 }, action: close }
  - { name: h, match: { protocol: tls }, action: https }
`,
  "fuzz",
  "/tmp",
);

const DETECTORS: [string, (b: Uint8Array) => { verdict: string }][] = [
  ["detectTls", (b) => detectTls(b, 16384)],
  ["detectTls (small limit)", (b) => detectTls(b, 600)],
  ["detectHttp1", detectHttp1],
  ["detectHttp2", detectHttp2],
  ["detectSsh", detectSsh],
  ["detectProxyHeader", detectProxyHeader],
  [
    "decide (all routes)",
    (b) => {
      const client = { address: "10.1.2.3", port: 1 };
      const d = decide(ROUTES.routes, ROUTES, { bytes: b, client, maxBytes: 16384 }, null);
      const final = decide(ROUTES.routes, ROUTES, { bytes: b, client, maxBytes: 16384 }, "eof");
      assert.ok(final !== null, "a final decision always names a route");
      return { verdict: d === null ? "more" : "match" };
    },
  ],
];

for (const [name, detect] of DETECTORS) {
  Deno.test(`${name}: ${2 * RUNS} random and mutated inputs give a verdict, never an exception`, () => {
    const r = rng(SEED);
    const verdicts = { match: 0, no: 0, more: 0 } as Record<string, number>;
    for (let i = 0; i < 2 * RUNS; i++) {
      const input = i % 2 === 0 ? randomInput(r) : mutate(r);
      const t0 = performance.now();
      let v: string;
      try {
        v = detect(input).verdict;
      } catch (e) {
        throw new Error(
          `${name} threw on input #${i} (seed ${SEED}): ${e}\n${[...input].join(",")}`,
        );
      }
      const ms = performance.now() - t0;
      assert.ok(ms < MAX_CALL_MS, `${name} took ${ms.toFixed(1)} ms on input #${i}`);
      assert.ok(v in verdicts, `bad verdict ${v}`);
      verdicts[v]!++;
    }
    // The inputs must reach more than one answer, or they test nothing.
    assert.ok(Object.values(verdicts).filter((n) => n > 0).length >= 2, JSON.stringify(verdicts));
  });
}
