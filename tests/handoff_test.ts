import assert from "node:assert/strict";
import { join } from "node:path";
import { $, startDaemon } from "./helpers/daemon.ts";
import { startPythonService } from "./helpers/python_service.ts";
import { enc, readAtLeast, roundTrip, seesEnd, writeAll } from "./helpers/client.ts";

function handoffConfig(socket: string, uid?: number) {
  return `
listen:
  - { address: 127.0.0.1, port: 0 }
services:
  py:
    socket: ${JSON.stringify(socket)}
${uid === undefined ? "" : `    uid: ${uid}\n`}
routes:
  - name: private
    match: { prefix: PRIV }
    action: handoff
    service: py
    wait_ms: 300
default: close
`;
}

Deno.test("a Python service gets the handed-off client from its first byte and keeps talking after the daemon let go", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-handoff-" });
  const service = await startPythonService(join(dir, "py.sock"));
  const d = await startDaemon({ config: handoffConfig(service.socket), dataDir: dir });
  try {
    const client = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
    const first = await roundTrip(client, "PRIV first", "ECHO:PRIV first".length);
    assert.equal(first, "ECHO:PRIV first"); // the peeked bytes reached the service

    // The daemon has sent the fd and closed its handle by the time it logs.
    const line = await d.connection(client.localAddr.port);
    assert.equal(line.outcome, "handed-off");
    assert.equal(line.route, "private");
    assert.equal(line.service, "py");

    await service.waitForRecords(1);
    assert.deepEqual(service.records[0], {
      v: 1,
      route: "private",
      service: "py",
      client: { address: "127.0.0.1", port: client.localAddr.port },
      local: { address: "127.0.0.1", port: d.port },
      peeked: "PRIV first".length,
    });

    // A FIN from the daemon's close would end this exchange.
    const until = Date.now() + 1200;
    for (let i = 0; Date.now() < until; i++) {
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(await roundTrip(client, `ping ${i}`, `ECHO:ping ${i}`.length), `ECHO:ping ${i}`);
    }
    client.close();
  } finally {
    await d.stop();
    await service.stop();
  }
});

Deno.test("a client the service closes sees its end at once, with the express lane on and off (the daemon's copy of a handed-off socket goes when the service reads it)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-handoff-end-" });
  const service = await startPythonService(join(dir, "py.sock"));
  for (const express of [true, false]) {
    const config = handoffConfig(service.socket) + `preread: { express: ${express} }\n`;
    const d = await startDaemon({ config, dataDir: dir });
    try {
      for (let i = 0; i < 10; i++) {
        const client = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
        const text = `PRIV ${i} BYE`;
        assert.equal(await roundTrip(client, text, `ECHO:${text}`.length), `ECHO:${text}`);
        // Only the last copy's close ends a TCP connection: a copy the
        // daemon still held would keep this one open.
        assert.ok(await seesEnd(client, 1000), `express ${express}: client ${i} saw no end`);
      }
    } finally {
      await d.stop();
    }
  }
  await service.stop();
});

Deno.test("behind a backlog of records (over a quarter of the channel's buffer, when the kernel says nothing of reads), a client the service closes still sees its end at once", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-handoff-backlog-" });
  const service = await startPythonService(join(dir, "py.sock"), "--slow-reader", "2");
  const d = await startDaemon({ config: handoffConfig(service.socket), dataDir: dir });
  try {
    const lags = await Promise.all(Array.from({ length: 200 }, async (_, i) => {
      const client = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
      const text = `PRIV ${i} BYE`;
      assert.equal(await roundTrip(client, text, `ECHO:${text}`.length), `ECHO:${text}`);
      const echoed = performance.now();
      assert.ok(await seesEnd(client, 5000), `client ${i} saw no end`);
      return performance.now() - echoed;
    }));
    const worst = Math.max(...lags);
    assert.ok(worst < 150, `a client waited ${Math.round(worst)} ms for its end after its echo`);
  } finally {
    await d.stop();
    await service.stop();
  }
});

Deno.test("handoff to a service that is not running closes the client, says why, and serves the next one", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-handoff-" });
  const socket = join(dir, "nobody.sock");
  const d = await startDaemon({ config: handoffConfig(socket), dataDir: dir });
  try {
    const client = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
    await client.write(enc.encode("PRIV lost?"));
    assert.ok(await seesEnd(client), "the client must see the connection end");
    const line = await d.connection(client.localAddr.port);
    assert.equal(line.outcome, "closed");
    assert.equal(line.level, "warn");
    assert.equal(line.fallback, "close");
    assert.ok(Number(line.waited_ms) >= 300, `waited ${line.waited_ms} ms for the service`);
    assert.match(
      String(line.handoff_error),
      /service "py" did not take it: .*nobody\.sock: not listening \(ENOENT\)/,
    );

    // The service comes up: the next client is handed off normally.
    const service = await startPythonService(socket);
    try {
      const next = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
      assert.equal(await roundTrip(next, "PRIV again", 15), "ECHO:PRIV again");
      next.close();
    } finally {
      await service.stop();
    }
    // The lost one waited (and looked again every few ms): one wait counted.
    await d.stop();
    const stats = d.logs.find((l) => l.event === "stats")!;
    assert.equal(stats['portmux_handoff_waits_total{service="py"}'], 1);
  } finally {
    await d.stop();
  }
});

Deno.test("a service running as an unexpected uid gets nothing (SO_PEERCRED check)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-handoff-" });
  const service = await startPythonService(join(dir, "py.sock"));
  const otherUid = (Deno.uid() ?? 0) + 4242; // the service runs as us, not as this
  const d = await startDaemon({ config: handoffConfig(service.socket, otherUid), dataDir: dir });
  try {
    const client = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
    await client.write(enc.encode("PRIV secret"));
    assert.ok(await seesEnd(client));
    const line = await d.connection(client.localAddr.port);
    assert.equal(line.outcome, "closed");
    assert.match(
      String(line.handoff_error),
      /refused: the listener is not uid \d+ \(SO_PEERCRED\); nothing sent/,
    );
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(service.records.length, 0);
  } finally {
    await d.stop();
    await service.stop();
  }
});

Deno.test("the built-in echo service echoes a handed-off client byte for byte", async () => {
  const d = await startDaemon({
    config: `
listen: [{ address: 127.0.0.1, port: 0 }]
services: { echo: { builtin: echo } }
routes: [{ name: private, match: { prefix_hex: "50524956" }, action: handoff, service: echo }]
`,
  });
  try {
    const client = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
    const payload = "PRIV" + "x".repeat(100_000);
    const [, echoed] = await Promise.all([
      writeAll(client, enc.encode(payload)),
      readAtLeast(client, payload.length),
    ]);
    assert.equal(echoed, payload);
    client.close();
  } finally {
    await d.stop();
  }
});

const PRIVATE_PROTO_TO_ECHO = `
listen: [{ address: 127.0.0.1, port: 0 }]
services: { echo: { builtin: echo } }
routes: [{ name: private, match: { prefix: PRIVATE-PROTO }, action: handoff, service: echo }]
`;

Deno.test("a prefix that arrives split over several segments is waited for, then handed off whole", async () => {
  const d = await startDaemon({
    config: PRIVATE_PROTO_TO_ECHO,
  });
  try {
    const client = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
    client.setNoDelay(true);
    for (const piece of ["PRI", "VATE-", "PRO", "TO rest"]) {
      await writeAll(client, enc.encode(piece));
      await new Promise((r) => setTimeout(r, 150));
    }
    assert.equal(await readAtLeast(client, 18), "PRIVATE-PROTO rest");
    const line = await d.connection(client.localAddr.port);
    assert.equal(line.outcome, "handed-off");
    assert.ok(Number(line.ms) >= 300, `decided after the last piece, not before (${line.ms} ms)`);
    client.close();
  } finally {
    await d.stop();
  }
});

Deno.test("a client that resets during the preread is closed as ended (eof), not as a failure", async () => {
  const d = await startDaemon({
    // Accepted before it sends anything, so the reset reaches the daemon.
    config: PRIVATE_PROTO_TO_ECHO + "preread: { defer_accept: false }\n",
  });
  try {
    // python3 sets SO_LINGER 0: close() then sends RST instead of FIN. With
    // nothing queued, the daemon's peek then fails with ECONNRESET.
    const script = `
import socket, struct, time, sys
s = socket.create_connection(("127.0.0.1", ${d.port}))
time.sleep(0.2)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
print(s.getsockname()[1]); sys.stdout.flush()
s.close()
`;
    const client = await $`python3 -c ${script}`;
    const port = Number(client.stdout);
    assert.ok(client.code === 0 && port > 0, `the Python client failed: ${client.stderr}`);
    const line = await d.connection(port);
    assert.equal(line.outcome, "closed");
    assert.equal(line.reason, "eof");
    assert.equal(line.peeked, 0);
  } finally {
    await d.stop();
  }
});

/** How long the daemon took to decide on a client that sends nothing. */
async function silentClientDecided(extraConfig: string, deferAccept = "auto") {
  const d = await startDaemon({
    config: `
listen: [{ address: 127.0.0.1, port: 0 }]
preread: { timeout_ms: 200, defer_accept: ${deferAccept} }
services: { svc: { builtin: echo } }
routes:
  - { name: private, match: { prefix: PRIV }, action: handoff, service: svc }
  - { name: waiting, action: handoff, service: svc }
${extraConfig}
`,
  });
  try {
    const talker = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
    assert.equal(await roundTrip(talker, "PRIV hi", 7), "PRIV hi");
    talker.close();
    const silent = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
    const connected = Date.now();
    const line = await d.connection(silent.localAddr.port);
    silent.close();
    return { ms: Date.now() - connected, route: line.route };
  } finally {
    await d.stop();
  }
}

Deno.test("preread.defer_accept (auto by default): a client is accepted once its first bytes are in; a silent one about a second late, unless a route serves silent clients", async () => {
  // Nothing serves a silent client: deferred. Accepted at once, it would be
  // decided after timeout_ms (200 ms); the kernel held it until its first
  // retransmitted handshake (~1 s).
  const closed = await silentClientDecided("default: close");
  assert.ok(closed.ms >= 800, `decided after ${closed.ms} ms`);
  assert.equal(closed.route, "default");
  // on_timeout serves it: not deferred, decided at timeout_ms.
  const served = await silentClientDecided("on_timeout: waiting");
  assert.ok(served.ms < 800, `decided after ${served.ms} ms`);
  assert.equal(served.route, "waiting");
  // Forced on, the silent client that on_timeout serves waits too.
  const forced = await silentClientDecided("on_timeout: waiting", "true");
  assert.ok(forced.ms >= 800, `decided after ${forced.ms} ms`);
  assert.equal(forced.route, "waiting");
});
