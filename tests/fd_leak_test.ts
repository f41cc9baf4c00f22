/**
 * 1,000 mixed connections through the real daemon: HTTPS requests,
 * handoffs, garbage, silent clients and clients that leave at once. Each
 * ends the way its route says, and afterwards the daemon holds no more fds
 * than before.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { startDaemon, type TestDaemon } from "./helpers/daemon.ts";
import { enc, readAtLeast, roundTrip, seesEnd, writeAll } from "./helpers/client.ts";

const CONFIG = `
listen: [{ address: 127.0.0.1, port: 0 }]
preread: { timeout_ms: 300 }
tls: { self_signed: true }
services: { echo: { builtin: echo } }
routes:
  - { name: web, match: { protocol: tls }, action: https }
  - { name: private, match: { prefix: PRIV }, action: handoff, service: echo }
default: close
`;

type Kind = "https" | "handoff" | "garbage" | "silent" | "leaves";
const KINDS: Kind[] = ["https", "handoff", "garbage", "silent", "leaves"];

/** One client of the given kind; resolves when it saw the expected end. */
async function client(d: TestDaemon, kind: Kind, caCert: string, i: number): Promise<void> {
  const addr = { hostname: "127.0.0.1", port: d.port };
  switch (kind) {
    case "https": {
      const tls = await Deno.connectTls({ ...addr, caCerts: [caCert] });
      await writeAll(
        tls,
        enc.encode("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
      );
      const reply = await readAtLeast(tls, Infinity);
      tls.close();
      assert.match(reply, /^HTTP\/1\.1 200 OK/, `https #${i}`);
      return;
    }
    case "handoff": {
      const c = await Deno.connect(addr);
      const text = `PRIV ${i}`;
      assert.equal(await roundTrip(c, text, text.length), text);
      c.close();
      return;
    }
    case "garbage": {
      const c = await Deno.connect(addr);
      await writeAll(c, Uint8Array.from([0x00, 0xff, 0x13, 0x37, ...enc.encode(`junk ${i}`)]));
      assert.ok(await seesEnd(c), `garbage #${i} closed`);
      c.close();
      return;
    }
    case "silent": {
      const c = await Deno.connect(addr);
      assert.ok(await seesEnd(c), `silent #${i} closed after the deadline`);
      c.close();
      return;
    }
    case "leaves": {
      const c = await Deno.connect(addr);
      c.close();
      return;
    }
  }
}

async function runMixed(d: TestDaemon, total: number, concurrency: number, caCert: string) {
  let next = 0;
  const worker = async () => {
    while (next < total) {
      const i = next++;
      await client(d, KINDS[i % KINDS.length]!, caCert, i);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
}

for (const [inject, total] of [[true, 1000], [false, 250]] as const) {
  const mode = inject ? "inject" : "bridge";
  Deno.test(`after ${total} mixed connections (${mode}) every one is accounted for and the fd count is back to its baseline`, async () => {
    const dir = await Deno.makeTempDir({ prefix: "portmux-fds-" });
    const d = await startDaemon({ config: CONFIG, inject, dataDir: dir });
    try {
      const caCert = await Deno.readTextFile(join(dir, "self-signed-cert.pem"));
      await runMixed(d, KINDS.length, 1, caCert); // warm up every path once
      await d.waitFor(() => d.logs.filter((l) => l.event === "connection").length === 5);
      await new Promise((r) => setTimeout(r, 300));
      const baseline = d.fdCount();

      await runMixed(d, total, 50, caCert);
      const expected = KINDS.length + total;
      await d.waitFor(() => d.logs.filter((l) => l.event === "connection").length === expected);

      const lines = d.logs.filter((l) => l.event === "connection").slice(KINDS.length);
      const count = (pred: (l: Record<string, unknown>) => boolean) => lines.filter(pred).length;
      const each = total / KINDS.length;
      assert.equal(count((l) => l.outcome === "https"), each);
      assert.equal(count((l) => l.outcome === "handed-off"), each);
      assert.equal(count((l) => l.outcome === "closed" && l.reason === "no-match"), each);
      assert.equal(count((l) => l.outcome === "closed" && l.reason === "timeout"), each);
      assert.equal(count((l) => l.outcome === "closed" && l.reason === "eof"), each);
      assert.equal(count((l) => l.outcome === "failed"), 0);

      const after = await d.settleFds(baseline);
      assert.equal(after, baseline, `fds: ${baseline} before, ${after} after`);
    } finally {
      await d.stop();
    }
  });
}

Deno.test("the daemon's fds are listed by the test helper (sanity check of the measure)", async () => {
  // Silent clients accepted at once and held long enough to be counted
  // (with 300 ms, on a busy machine they could come and go between looks).
  const held = "preread: { timeout_ms: 10000, defer_accept: false }";
  const d = await startDaemon({ config: CONFIG.replace("preread: { timeout_ms: 300 }", held) });
  try {
    // After "listening" a worker still opens its channels and tells the
    // launcher it serves (a connection that comes and goes): measure once
    // the count holds still.
    await d.waitFor((l) => l.event === "started");
    let before = d.fdCount();
    for (let same = 0; same < 3;) {
      await new Promise((r) => setTimeout(r, 100));
      const now = d.fdCount();
      same = now === before ? same + 1 : 0;
      before = now;
    }
    const clients = await Promise.all(
      Array.from({ length: 20 }, () => Deno.connect({ hostname: "127.0.0.1", port: d.port })),
    );
    // 20 silent clients wait in preread: the daemon must hold 20 more fds.
    const deadline = Date.now() + 5000;
    while (d.fdCount() < before + 20 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.ok(d.fdCount() >= before + 20, `expected ${before + 20}+, got ${d.fdCount()}`);
    clients.forEach((c) => c.close());
    assert.equal(await d.settleFds(before), before);
  } finally {
    await d.stop();
  }
});
