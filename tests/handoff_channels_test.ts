/**
 * Handoff over persistent channels, with real processes on loopback: many
 * handoffs without loss, a service killed and restarted mid-run, a service
 * that stops reading, several instances, fallbacks, trust checks, and a
 * receiver that runs out of fds.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { httpsStatus, type LogLine, startDaemon, type TestDaemon } from "./helpers/daemon.ts";
import { roundTrip, seesEnd, writeAll } from "./helpers/client.ts";
import { loadClients } from "./helpers/load_clients.ts";
import { startProxyHeaderEcho } from "./helpers/peers.ts";
import { startPythonService } from "./helpers/python_service.ts";
import { shimPath } from "../ffi/shim.ts";

const enc = new TextEncoder();
const lines = (d: TestDaemon, pred: (l: LogLine) => boolean = () => true) =>
  d.logs.filter((l) => l.event === "connection" && pred(l));

/** Waits until the daemon logged n connection lines. */
async function logged(d: TestDaemon, n: number, timeoutMs = 60_000): Promise<void> {
  await d.waitFor(() => lines(d).length >= n, timeoutMs);
}

/** Sends a PRIV client that must be refused: closed, and its log line. */
async function refusedHandoff(d: TestDaemon): Promise<LogLine> {
  const c = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
  await writeAll(c, enc.encode("PRIV secret"));
  assert.ok(await seesEnd(c), "the client is closed");
  c.close();
  return await d.connection(c.localAddr.port);
}

function handoffTo(service: string, extra = "") {
  return `
listen: [{ address: 127.0.0.1, port: 0 }]
limits: { max_per_source: 10000 }
tls: { self_signed: true }
${service}
routes:
  - { name: web, match: { protocol: tls }, action: https }
  - { name: private, match: { prefix: PRIV }, action: handoff, service: svc${extra} }
`;
}

/** n clients, 50 at a time, each with its payload echoed back whole. */
async function everyEchoed(port: number, n: number, timeoutMs: number): Promise<void> {
  const load = loadClients("echo", port, n, 50);
  const result = await load.waitFor("echoed", timeoutMs);
  await load.done();
  assert.deepEqual(
    { ok: result.ok, bad: result.bad, errors: result.errors },
    { ok: n, bad: 0, errors: 0 },
    String(result.first_error),
  );
}

Deno.test("20,000 handoffs to the Deno example service: every byte arrives and comes back, none lost", async () => {
  const d = await startDaemon({ config: handoffTo("services: { svc: { builtin: echo } }") });
  try {
    await everyEchoed(d.port, 20_000, 180_000);
    await logged(d, 20_000);
    assert.equal(lines(d, (l) => l.outcome === "handed-off").length, 20_000);
    // One channel carried them all: the service was connected to once.
    assert.equal(d.logs.filter((l) => l.event === "service-down").length, 0);
  } finally {
    await d.stop();
  }
});

Deno.test("the Deno example service without the shim preloaded (JavaScript reads its channels): 3,000 handoffs, none lost", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-preloaded-receiver-" });
  const socket = join(dir, "svc.sock");
  const service = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("../src/service/demo_echo.ts", import.meta.url).pathname,
      "--socket",
      socket,
    ],
    env: { LD_PRELOAD: "" },
    stdout: "piped",
  }).spawn();
  const out = service.stdout.pipeThrough(new TextDecoderStream()).getReader();
  assert.equal((await out.read()).value?.trim(), "ready");
  const d = await startDaemon({
    dataDir: dir,
    config: handoffTo(`services: { svc: { socket: ${JSON.stringify(socket)} } }`),
  });
  try {
    await everyEchoed(d.port, 3_000, 120_000);
  } finally {
    await d.stop();
    service.kill();
    await service.status;
    await out.cancel();
  }
});

Deno.test("a service killed and restarted mid-run: every connection reached a service or its fallback, all in the log", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-restart-" });
  const socket = join(dir, "py.sock");
  let service = await startPythonService(socket);
  const d = await startDaemon({
    dataDir: dir,
    config: handoffTo(
      `services: { svc: { socket: ${JSON.stringify(socket)} } }`,
      ", wait_ms: 3000",
    ),
  });
  try {
    const load = loadClients("echo", d.port, 3000, 20, "ECHO:");
    await d.waitFor(() => lines(d).length >= 1000, 60_000);
    await service.stop(); // SIGKILL, mid-run
    await new Promise((r) => setTimeout(r, 500));
    service = await startPythonService(socket);
    const result = await load.waitFor("echoed", 120_000);
    await load.done();
    await logged(d, 3000);

    const all = lines(d);
    assert.equal(all.length, 3000, "one line for every connection");
    const handed = all.filter((l) => l.outcome === "handed-off").length;
    const fellBack = all.filter((l) => l.fallback !== undefined).length;
    assert.equal(handed + fellBack, 3000);
    assert.equal(fellBack, 0, "the 3 s wait outlasts a 0.5 s outage");
    // Those that waited for the restart are in the log with their wait.
    assert.ok(all.some((l) => Number(l.waited_ms) >= 300), "some waited for the restart");
    // Client side: only connections the killed process already held died with it.
    assert.equal(Number(result.ok) + Number(result.bad) + Number(result.errors), 3000);
    assert.ok(Number(result.ok) >= 3000 - 100, JSON.stringify(result));
    assert.ok(d.logs.some((l) => l.event === "service-down"), "the outage is logged");
  } finally {
    await d.stop();
    await service.stop();
  }
});

Deno.test("a service that stops reading its channel: handoffs wait, then fall back, and HTTPS is served all along", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-deaf-" });
  const deaf = await startPythonService(join(dir, "deaf.sock"), "--deaf");
  const d = await startDaemon({
    dataDir: dir,
    config: handoffTo(
      `services: { svc: { socket: ${JSON.stringify(deaf.socket)} } }`,
      ", wait_ms: 500",
    ),
  });
  try {
    // Those sent before the channel filled are never answered: 2 s each.
    const load = loadClients("echo", d.port, 1500, 100, "", 2);
    await d.waitFor((l) => l.event === "connection" && l.fallback === "close", 60_000);
    // The channel is full and handoffs are waiting: HTTPS must not wait.
    for (let i = 0; i < 20; i++) {
      const code = await httpsStatus(d.port, 2);
      assert.equal(code, "200", `HTTPS request ${i} while the channel is full`);
    }
    await load.waitFor("echoed", 120_000);
    await load.done();
    await logged(d, 1500 + 20);
    const fallbacks = lines(d, (l) => l.fallback === "close");
    assert.ok(fallbacks.length > 0);
    assert.match(
      String(fallbacks[0]!.handoff_error),
      /channel full \(the service is not reading\)/,
    );
    assert.ok(Number(fallbacks[0]!.waited_ms) >= 500);
    assert.equal(lines(d, (l) => l.outcome === "failed").length, 0);
  } finally {
    await d.stop();
    await deaf.stop();
  }
});

Deno.test("several instances: handoffs are spread over them, and a dead one is skipped without loss", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-instances-" });
  const a = await startPythonService(join(dir, "a.sock"));
  const b = await startPythonService(join(dir, "b.sock"));
  const d = await startDaemon({
    dataDir: dir,
    config: handoffTo(
      `services: { svc: { socket: [${JSON.stringify(a.socket)}, ${JSON.stringify(b.socket)}] } }`,
    ),
  });
  try {
    const one = async (i: number) => {
      const c = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
      const text = `PRIV ${i}`;
      assert.equal(await roundTrip(c, text, 5 + text.length), `ECHO:${text}`);
      c.close();
    };
    for (let i = 0; i < 40; i++) await one(i);
    await logged(d, 40);
    const order = lines(d).map((l) => `${l.accepted_by}:${String(l.socket).slice(-6)}`).join(" ");
    assert.equal(a.records.length, 20, order); // the lane and the daemon keep one round robin
    assert.equal(b.records.length, 20, order);
    await a.stop();
    for (let i = 40; i < 60; i++) await one(i); // none lost to the dead instance
    assert.equal(b.records.length, 40);
    await logged(d, 60); // lines are written in batches
    const bySocket = lines(d).reduce(
      (m, l) => m.set(String(l.socket), (m.get(String(l.socket)) ?? 0) + 1),
      new Map(),
    );
    assert.deepEqual(bySocket, new Map([[a.socket, 20], [b.socket, 40]]));
  } finally {
    await d.stop();
    await b.stop();
  }
});

Deno.test("a handoff route falls back to another route (a proxy) when its service is down", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-fallback-" });
  const backup = startProxyHeaderEcho();
  const d = await startDaemon({
    dataDir: dir,
    config: `
listen: [{ address: 127.0.0.1, port: 0 }]
services: { svc: { socket: ${JSON.stringify(join(dir, "down.sock"))} } }
routes:
  - { name: private, match: { prefix: PRIV }, action: handoff, service: svc, wait_ms: 200, fallback: backup }
  - { name: backup, action: proxy, upstream: "127.0.0.1:${backup.port}" }
`,
  });
  try {
    const c = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
    // The peeked bytes were never consumed: the backup gets them all.
    assert.equal(await roundTrip(c, "PRIV to backup", 26), "client=none PRIV to backup");
    c.close();
    const line = await d.connection(c.localAddr.port);
    assert.equal(line.route, "private");
    assert.equal(line.outcome, "proxied");
    assert.equal(line.fallback, "backup");
    assert.equal(line.level, "warn");
    assert.match(String(line.handoff_error), /not listening \(ENOENT\)/);
  } finally {
    await d.stop();
    await backup.stop();
  }
});

Deno.test("trust: a foreign listener on the socket path, or a socket in a folder others can write, gets nothing", async (t) => {
  await t.step("a listener running as another user (SO_PEERCRED)", async () => {
    const dir = await Deno.makeTempDir({ prefix: "portmux-foreign-" });
    await Deno.chmod(dir, 0o755);
    const foreign = await startPythonService(join(dir, "svc.sock"), "--listen-as-uid", "65534");
    const d = await startDaemon({
      dataDir: dir,
      config: handoffTo(
        `services: { svc: { socket: ${JSON.stringify(foreign.socket)} } }`,
        ", wait_ms: 100",
      ),
    });
    try {
      const line = await refusedHandoff(d);
      assert.match(
        String(line.handoff_error),
        new RegExp(`refused: the listener is not uid ${Deno.uid()} \\(SO_PEERCRED\\)`),
      );
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(foreign.records.length, 0);
    } finally {
      await d.stop();
      await foreign.stop();
    }
  });
  await t.step("a socket in a world-writable folder", async () => {
    const dir = await Deno.makeTempDir({ prefix: "portmux-open-" });
    await Deno.chmod(dir, 0o777);
    const service = await startPythonService(join(dir, "svc.sock"));
    const d = await startDaemon({
      config: handoffTo(
        `services: { svc: { socket: ${JSON.stringify(service.socket)} } }`,
        ", wait_ms: 100",
      ),
    });
    try {
      const line = await refusedHandoff(d);
      assert.match(
        String(line.handoff_error),
        /refused: its folder .* can be written by anyone \(mode 777\)/,
      );
      assert.equal(service.records.length, 0);
    } finally {
      await d.stop();
      await service.stop();
    }
  });
});

for (const preloaded of [true, false]) {
  Deno.test(
    `a receiver out of fds drops what it cannot take, says so, and serves again when fds free up (${
      preloaded ? "shim preloaded" : "JavaScript reads the channel"
    })`,
    () => outOfFds(preloaded),
  );
}

async function outOfFds(preloaded: boolean): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "portmux-receiver-fds-" });
  const socket = join(dir, "svc.sock");
  const script = new URL("../bench/echo_service.ts", import.meta.url).pathname;
  const service = new Deno.Command("bash", {
    args: [
      "-c",
      `ulimit -n 60 && exec "${Deno.execPath()}" run -A "${script}" --tcp-port 0 --socket "${socket}"`,
    ],
    env: { LD_PRELOAD: preloaded ? shimPath() : "" },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const out = service.stdout.pipeThrough(new TextDecoderStream()).getReader();
  assert.equal((await out.read()).value?.trim(), "ready");
  // Deno sets up its signal handling about 500 ms after it starts, and
  // panics if it has no fd left for it then: let it, before the flood.
  await new Promise((r) => setTimeout(r, 1000));
  const stderr: string[] = [];
  (async () => {
    for await (const chunk of service.stderr.pipeThrough(new TextDecoderStream())) {
      stderr.push(chunk);
    }
  })();
  const d = await startDaemon({
    dataDir: dir,
    config: handoffTo(`services: { svc: { socket: ${JSON.stringify(socket)} } }`),
  });
  try {
    // Hold open connections until the service runs out of fds.
    const held: Deno.Conn[] = [];
    for (let i = 0; i < 80; i++) {
      const c = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
      await writeAll(c, enc.encode(`PRIV held ${i}\n`));
      held.push(c);
    }
    await logged(d, 80);
    const deadline = Date.now() + 10_000;
    while (!stderr.join("").includes("its fd was lost") && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.match(stderr.join(""), /handoff dropped: its fd was lost \(MSG_CTRUNC/);
    held.forEach((c) => c.close());
    await new Promise((r) => setTimeout(r, 500));
    // Records after the lost ones kept their own fds: the service is fine.
    const c = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
    assert.equal(await roundTrip(c, "PRIV again", 10), "PRIV again");
    c.close();
  } finally {
    await d.stop();
    service.kill();
    await service.status;
    await out.cancel();
  }
}
