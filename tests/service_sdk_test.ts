/**
 * The Deno service SDK (src/service/mod.ts) as a service author uses it:
 * imported by path from a folder outside the repository (no import map, no
 * deno.json), it receives clients that the real daemon hands off, with the
 * shim preloaded and without it. Also: adopt() and what it gives, a clean
 * shutdown with clients live and records unread, the sender's uid, and
 * the shim found, built, or explained.
 */
import assert from "node:assert/strict";
import { dirname, join } from "node:path";
import { shimPath } from "../ffi/shim.ts";
import { startDaemon, type TestDaemon } from "./helpers/daemon.ts";
import { enc, readAtLeast, seesEnd, writeAll } from "./helpers/client.ts";
import { readLines } from "./helpers/lines.ts";
import { serve } from "../src/service/mod.ts";

const SDK = new URL("../src/service/mod.ts", import.meta.url).href;
const ROOT = new URL("../", import.meta.url).pathname;

Deno.test("a service written on src/service/mod.ts, outside the repository, gets the daemon's clients with their record", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-sdk-" });
  const socket = join(dir, "kv.sock");
  await Deno.writeTextFile(
    join(dir, "service.ts"),
    `import { serve } from ${JSON.stringify(SDK)};
const receiver = await serve(Deno.args[0], (client) => {
  const socket = client.adopt();
  socket.write("hello " + client.record.route + " " + client.record.client.address + "\\n");
  socket.pipe(socket);
});
console.log("ready");
Deno.addSignalListener("SIGTERM", () => {
  receiver.close();
  Deno.exit(0);
});
`,
  );
  const service = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "service.ts", socket],
    cwd: dir, // where an author's service lives: no import map there
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const ready = Promise.withResolvers<void>();
  const reading = readLines(service.stdout, (l) => l === "ready" && ready.resolve());
  const d = await startDaemon({
    dataDir: dir,
    config: `
listen: [{ address: 127.0.0.1, port: 0 }]
services: { kv: { socket: ${JSON.stringify(socket)} } }
routes: [{ name: kv, match: { prefix: "KV1" }, action: handoff, service: kv }]
`,
  });
  try {
    await ready.promise;
    const c = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
    await writeAll(c, new TextEncoder().encode("KV1\n"));
    assert.equal(await readAtLeast(c, 23), "hello kv 127.0.0.1\nKV1\n");
    c.close();
  } finally {
    await d.stop();
    service.kill("SIGTERM");
    await service.status;
    await reading;
  }
  assert.throws(
    () => Deno.lstatSync(socket),
    Deno.errors.NotFound,
    "close removed the socket file",
  );
});

/**
 * A service on the SDK, in a folder of its own, that says what happens on
 * stdout (one JSON object a line) and takes commands on stdin:
 *   - route "kv": adopts the client, says what adopt() gave, answers its
 *     first chunk with "first: " and that chunk, then echoes;
 *   - route "hold": says so and does not adopt it (it tries once the
 *     receiver is closed);
 *   - "fds": lists the fds it holds (as for the baseline);
 *   - "stall FILE": blocks its event loop until FILE exists (nothing is
 *     read meanwhile), then closes the receiver, and says what is left.
 * It lists its open fds before serve() (baseline), all but the runtime's
 * own sockets.
 */
const PROBE_SERVICE = `import net from "node:net";
import { serve } from ${JSON.stringify(SDK)};

const say = (o) => console.log(JSON.stringify(o));
const exists = (p) => { try { Deno.lstatSync(p); return true; } catch { return false; } };
const [path, senderUid] = Deno.args;
// Its open fds, but the runtime's own Unix sockets (a socketpair it may
// make on the way): a receiver's Unix sockets are at its path (the
// listener, the channels); its others are TCP (clients; when preloaded,
// the private server, which is in no table once the shim shuts it).
const fds = () => {
  const foreign = new Set();
  for (const line of Deno.readTextFileSync("/proc/net/unix").split("\\n").slice(1)) {
    const f = line.trim().split(/\\s+/);
    if (f.length >= 7 && f[7] !== path) foreign.add(f[6]);
  }
  return [...Deno.readDirSync("/proc/self/fd")].flatMap((e) => {
    let link;
    try { link = Deno.readLinkSync("/proc/self/fd/" + e.name); } catch { return []; }
    const socket = /^socket:\\[(\\d+)\\]$/.exec(link);
    return socket && foreign.has(socket[1]) ? [] : [e.name + " " + link];
  });
};
// Reading stdin opens an fd of its own: in the baseline.
const input = Deno.stdin.readable.pipeThrough(new TextDecoderStream()).getReader();
const firstInput = input.read();
await new Promise((r) => setTimeout(r, 100));
const baseline = fds();
let closing = false;
let afterClose = 0;
let held = null;
const receiver = await serve(path, (c) => {
  if (closing) afterClose++;
  const { record } = c;
  if (record.route === "hold") {
    held = c;
    return say({ event: "held", record });
  }
  const socket = c.adopt();
  say({
    event: "adopted", record,
    netSocket: socket instanceof net.Socket, same: c.adopt() === socket,
    remoteAddress: socket.remoteAddress, remotePort: socket.remotePort,
  });
  socket.on("error", () => socket.destroy());
  let first = true;
  socket.on("data", (chunk) => {
    if (!first) return socket.write(chunk);
    first = false;
    say({ event: "first", port: socket.remotePort, text: chunk.toString("latin1") });
    socket.write("first: " + chunk.toString("latin1"));
  });
  socket.on("end", () => socket.end());
}, {
  ...(senderUid ? { senderUid: Number(senderUid) } : {}),
  onProblem: (message) => say({ event: "problem", message }),
});
say({ event: "ready", port: receiver.port, baseline });
let rest = "";
for (let r = await firstInput; !r.done; r = await input.read()) {
  const lines = (rest + r.value).split("\\n");
  rest = lines.pop();
  for (const line of lines) {
    const [command, arg] = line.split(" ");
    if (command === "fds") say({ event: "fds", fds: fds() });
    if (command === "stall") {
      say({ event: "stalling" });
      while (!exists(arg)) { /* the event loop is blocked: nothing is read */ }
      closing = true;
      await receiver.close();
      let adoptHeld = "adopted";
      try { held?.adopt(); } catch (e) { adoptHeld = e.message; }
      say({ event: "closed", socketFile: exists(path), fds: fds(), afterClose, adoptHeld });
    }
  }
}
`;

interface ProbeService {
  readonly events: Record<string, unknown>[];
  readonly ready: Record<string, unknown>;
  waitFor(
    pred: (e: Record<string, unknown>) => boolean,
    what: string,
  ): Promise<Record<string, unknown>>;
  tell(command: string): Promise<void>;
  /** Sends a command; resolves with the next event of its name. */
  ask(command: string): Promise<Record<string, unknown>>;
  stop(): Promise<void>;
}

async function startProbe(
  dir: string,
  socket: string,
  opts: { preload: boolean; senderUid?: number },
): Promise<ProbeService> {
  await Deno.writeTextFile(join(dir, "service.ts"), PROBE_SERVICE);
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "service.ts",
      socket,
      ...(opts.senderUid === undefined ? [] : [String(opts.senderUid)]),
    ],
    cwd: dir,
    env: { LD_PRELOAD: opts.preload ? shimPath() : "" },
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const events: Record<string, unknown>[] = [];
  const reading = readLines(child.stdout, (line) => events.push(JSON.parse(line)));
  const stdin = child.stdin.getWriter();
  const waitFor = async (
    pred: (e: Record<string, unknown>) => boolean,
    what: string,
    from = 0,
  ) => {
    const end = Date.now() + 10_000;
    for (;;) {
      const found = events.slice(from).find(pred);
      if (found) return found;
      if (Date.now() > end) throw new Error(`no ${what} in ${JSON.stringify(events)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  const tell = (command: string) => stdin.write(enc.encode(`${command}\n`));
  const ready = await waitFor((e) => e.event === "ready", "ready");
  return {
    events,
    ready,
    waitFor,
    tell,
    async ask(command) {
      const from = events.length;
      await tell(command);
      return waitFor((e) => e.event === command, command, from);
    },
    async stop() {
      try {
        child.kill("SIGKILL");
      } catch { /* gone */ }
      await child.status;
      await stdin.close().catch(() => {});
      await reading;
    },
  };
}

/** The daemon, with routes kv (adopted) and hold (never adopted) to the
 * service at socket, and fallback a proxy to upstream. */
function daemonFor(dir: string, socket: string, fallbackPort: number, waitMs: number) {
  return startDaemon({
    dataDir: dir,
    config: `
listen: [{ address: 127.0.0.1, port: 0 }]
services: { kv: { socket: ${JSON.stringify(socket)} } }
routes:
  - { name: kv, match: { prefix: "KV1" }, action: handoff, service: kv, wait_ms: ${waitMs}, fallback: spare }
  - { name: hold, match: { prefix: "HOLD" }, action: handoff, service: kv, wait_ms: ${waitMs} }
  - { name: spare, action: proxy, upstream: "127.0.0.1:${fallbackPort}" }
`,
  });
}

/** A TCP server that answers "spare: " and the first bytes it gets. */
function startSpare(): { port: number; stop(): Promise<void> } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const serving = (async () => {
    for await (const conn of listener) {
      conns.add(conn);
      (async () => {
        const buf = new Uint8Array(4096);
        const n = await conn.read(buf);
        if (n) {
          await writeAll(conn, new Uint8Array([...enc.encode("spare: "), ...buf.subarray(0, n)]));
        }
      })().catch(() => {});
    }
  })().catch(() => {});
  return {
    port: listener.addr.port,
    async stop() {
      listener.close();
      conns.forEach((c) => {
        try {
          c.close();
        } catch { /* closed */ }
      });
      await serving;
    },
  };
}

/** A probe service in a folder of its own and the daemon handing off to
 * it (the spare behind the kv route's fallback); all stopped after body. */
async function withProbe(
  opts: { preload: boolean; senderUid?: number; waitMs?: number },
  body: (s: { dir: string; svc: ProbeService; d: TestDaemon }) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "portmux-sdk-" });
  const socket = join(dir, "kv.sock");
  const svc = await startProbe(dir, socket, opts);
  const spare = startSpare();
  const d = await daemonFor(dir, socket, spare.port, opts.waitMs ?? 3000);
  try {
    await body({ dir, svc, d });
  } finally {
    await d.stop();
    await svc.stop();
    await spare.stop();
  }
}

async function connect(d: TestDaemon, text: string): Promise<Deno.TcpConn> {
  const c = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
  await writeAll(c, enc.encode(text));
  return c;
}

for (const preload of [false, true]) {
  const way = preload ? "with the shim preloaded" : "without the preload";

  Deno.test(`${way}: adopt() gives a node:net Socket on the client's own connection that reads its first bytes, the peeked ones too, and writes back`, async () => {
    await withProbe({ preload }, async ({ svc, d }) => {
      assert.equal(svc.ready.port === null, !preload, "the receiver is on the expected path");
      const c = await connect(d, "KV1 hello\n");
      const port = c.localAddr.port;
      const adopted = await svc.waitFor(
        (e) => e.event === "adopted" && e.remotePort === port,
        "the adopted client",
      );
      const record = adopted.record as {
        peeked: number;
        client: { address: string; port: number };
      };
      assert.equal(adopted.netSocket, true, "a node:net Socket");
      assert.equal(adopted.same, true, "adopt() again gives the same Socket");
      assert.deepEqual(record.client, { address: "127.0.0.1", port }, "the client's address");
      assert.equal(adopted.remoteAddress, "127.0.0.1");
      assert.ok(record.peeked >= 3, `portmux peeked (${record.peeked})`);
      // The service reads from the very first byte: what portmux peeked
      // to match the route is there, with the rest.
      const first = await svc.waitFor((e) => e.event === "first" && e.port === port, "first");
      assert.equal(first.text, "KV1 hello\n");
      assert.equal(await readAtLeast(c, 17), "first: KV1 hello\n");
      await writeAll(c, enc.encode("more\n"));
      assert.equal(await readAtLeast(c, 5), "more\n", "it writes back");
      c.close();
    });
  });

  Deno.test(`${way}: a client that resets before the service adopts it does not end the service`, async () => {
    await withProbe({ preload }, async ({ svc, d }) => {
      // Held (never adopted), then reset: SO_LINGER 0, a Python client.
      const script = `
import socket, struct, sys, time
s = socket.create_connection(("127.0.0.1", ${d.port}))
s.sendall(b"HOLD me")
sys.stdin.readline()
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()
`;
      const resetter = new Deno.Command("python3", { args: ["-c", script], stdin: "piped" })
        .spawn();
      await svc.waitFor((e) => e.event === "held", "the held client");
      const go = resetter.stdin.getWriter();
      await go.write(enc.encode("\n"));
      await go.close();
      assert.equal((await resetter.status).code, 0);
      await new Promise((r) => setTimeout(r, 300)); // the reset reaches the service
      const c = await connect(d, "KV1 still\n");
      assert.equal(await readAtLeast(c, 17), "first: KV1 still\n", "the service still serves");
      c.close();
    });
  });

  Deno.test(`${way}: close() with clients live and records unread removes the socket file, keeps adopted clients, closes the rest, and leaves no fd open`, async () => {
    await withProbe({ preload }, async ({ dir, svc, d }) => {
      const clients: Deno.TcpConn[] = [];
      try {
        // A live client, adopted and served.
        const live = await connect(d, "KV1 live\n");
        clients.push(live);
        assert.equal(await readAtLeast(live, 16), "first: KV1 live\n");
        // A client given to onConnection and never adopted.
        const held = await connect(d, "HOLD\n");
        clients.push(held);
        await svc.waitFor(
          (e) =>
            e.event === "held" && (e.record as { client: { port: number } }).client.port ===
              held.localAddr.port,
          "the held client",
        );
        // A client whose record is still unread when the receiver closes:
        // sent while the service's event loop is blocked.
        await svc.tell(`stall ${join(dir, "go")}`);
        await svc.waitFor((e) => e.event === "stalling", "stalling");
        const unread = await connect(d, "KV1 late\n");
        clients.push(unread);
        const sent = await d.connection(unread.localAddr.port);
        assert.equal(sent.outcome, "handed-off");
        await Deno.writeTextFile(join(dir, "go"), "");
        const closed = await svc.waitFor((e) => e.event === "closed", "closed");

        assert.equal(closed.socketFile, false, "close() removed the socket file");
        assert.equal(closed.afterClose, 0, "onConnection is not called once close() is");
        assert.ok(
          !svc.events.some((e) =>
            (e.record as { client?: { port: number } } | undefined)?.client?.port ===
              unread.localAddr.port
          ),
          "the unread record was never given",
        );
        assert.ok(await seesEnd(unread), "the unread record's client is closed");
        assert.ok(await seesEnd(held), "the client never adopted is closed");
        assert.match(String(closed.adoptHeld), /closed before this connection was adopted/);
        // The adopted client is the service's: still served.
        await writeAll(live, enc.encode("still\n"));
        assert.equal(await readAtLeast(live, 6), "still\n");
        // Its fds, but for those it held before serve().
        const baseline = svc.ready.baseline as string[];
        const added = (fds: unknown) => (fds as string[]).filter((fd) => !baseline.includes(fd));
        assert.equal(
          added(closed.fds).length,
          1,
          `only the live client is left: ${added(closed.fds)}`,
        );
        live.close();
        // Once the service ends its last client, it holds what it held
        // before serve().
        const end = Date.now() + 5000;
        let left = added(closed.fds);
        while (left.length > 0 && Date.now() < end) {
          await new Promise((r) => setTimeout(r, 50));
          left = added((await svc.ask("fds")).fds);
        }
        assert.deepEqual(left, [], "no fd left open");
      } finally {
        clients.forEach((c) => {
          try {
            c.close();
          } catch { /* closed */ }
        });
      }
    });
  });
}

for (const preload of [false, true]) {
  const way = preload ? "with the shim preloaded" : "without the preload";

  Deno.test(`${way}: a sender of another uid than senderUid is refused: none of its clients reaches onConnection, each is ended or takes the fallback, and onProblem says who it was`, async () => {
    const notTheDaemons = (Deno.uid() ?? 0) + 4242;
    await withProbe({ preload, senderUid: notTheDaemons, waitMs: 300 }, async ({ svc, d }) => {
      for (let i = 0; i < 3; i++) {
        const c = await connect(d, `KV1 ${i}\n`);
        // The daemon's record goes with the channel it has just opened,
        // before the service can see who opened it: the refusal drops it
        // and its client is closed. A send on a channel already refused
        // fails, and the client takes the route's fallback.
        const got = await readAtLeast(c, 13);
        assert.ok(
          got === "" || got === `spare: KV1 ${i}\n`,
          `client ${i} got ${JSON.stringify(got)}`,
        );
        c.close();
      }
      const refusal = await svc.waitFor((e) => e.event === "problem", "the refusal");
      assert.equal(refusal.message, `refused a channel from uid ${Deno.uid()} (pid ${d.pid})`);
      assert.deepEqual(
        svc.events.filter((e) => e.event !== "ready" && e.event !== "problem"),
        [],
        "no client reached onConnection",
      );
    });
  });
}

Deno.test("the shim: missing, it is built next to the SDK (not in the service's folder); when it cannot be built, the error says what to do", async () => {
  // A copy of the modules the SDK is made of, and the shim's C sources,
  // without build/: as a fresh checkout is.
  const checkout = await Deno.makeTempDir({ prefix: "portmux-sdk-checkout-" });
  const info = JSON.parse(
    new TextDecoder().decode(
      (await new Deno.Command(Deno.execPath(), { args: ["info", "--json", SDK] }).output()).stdout,
    ),
  ) as { modules: { specifier: string }[] };
  const files = info.modules.map((m) => m.specifier).filter((s) => s.startsWith("file://"))
    .map((s) => new URL(s).pathname.slice(ROOT.length));
  assert.ok(files.includes("src/build_shim.ts"), String(files));
  for (
    const file of [
      ...files,
      ...[...Deno.readDirSync(join(ROOT, "c"))].map((e) => `c/${e.name}`),
    ]
  ) {
    if (Deno.statSync(join(ROOT, file)).isDirectory) continue;
    await Deno.mkdir(dirname(join(checkout, file)), { recursive: true });
    await Deno.copyFile(join(ROOT, file), join(checkout, file));
  }
  const sdk = new URL(`file://${checkout}/src/service/mod.ts`).href;
  const dir = await Deno.makeTempDir({ prefix: "portmux-sdk-service-" });
  await Deno.writeTextFile(
    join(dir, "service.ts"),
    `import { serve } from ${JSON.stringify(sdk)};
const receiver = await serve(Deno.args[0], (c) => c.adopt().end());
console.log(receiver.port === null ? "ready" : "preloaded?");
await receiver.close();
`,
  );
  const run = async (env: Record<string, string>) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "service.ts", join(dir, "svc.sock")],
      cwd: dir,
      env: { LD_PRELOAD: "", PORTMUX_SHIM: "", ...env },
      stdout: "piped",
      stderr: "piped",
    }).output();
    return {
      code: out.code,
      stdout: new TextDecoder().decode(out.stdout),
      stderr: new TextDecoder().decode(out.stderr),
    };
  };
  const shim = join(checkout, "build/libportmux.so");

  const noCompiler = await run({ CC: join(dir, "no-such-cc") });
  assert.notEqual(noCompiler.code, 0);
  assert.match(noCompiler.stderr, new RegExp(`the portmux shim is missing at ${shim}`));
  assert.match(noCompiler.stderr, /cannot run the C compiler/, "why");
  assert.ok(
    noCompiler.stderr.includes(`deno task --cwd ${checkout} build`),
    `what to do, from any folder: ${noCompiler.stderr}`,
  );
  assert.match(noCompiler.stderr, /PORTMUX_SHIM/, "or where else a shim may come from");
  assert.throws(() => Deno.statSync(shim), Deno.errors.NotFound, "nothing half-built is left");

  const built = await run({});
  assert.equal(built.code, 0, built.stderr);
  assert.equal(built.stdout, "ready\n");
  assert.ok(Deno.statSync(shim).isFile, "built in the SDK's checkout");
  assert.deepEqual(
    [...Deno.readDirSync(dir)].map((e) => e.name).sort(),
    ["service.ts"],
    "nothing in the service's folder but the service (its socket removed on close)",
  );

  const named = await run({ PORTMUX_SHIM: join(dir, "libportmux.so") });
  assert.notEqual(named.code, 0);
  assert.ok(
    named.stderr.includes(`PORTMUX_SHIM names ${join(dir, "libportmux.so")}, which does not exist`),
    named.stderr,
  );
  assert.ok(named.stderr.includes(`deno task --cwd ${checkout} build`), named.stderr);
});

Deno.test("senderUid must be a uid: serve() throws a TypeError and leaves no socket file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-sdk-bad-uid-" });
  const path = join(dir, "svc.sock");
  for (const senderUid of [-1, 1.5, Number.NaN]) {
    await assert.rejects(
      serve(path, () => {}, { senderUid }),
      TypeError,
      "senderUid must be a uid",
    );
  }
  assert.throws(() => Deno.lstatSync(path), Deno.errors.NotFound);
  const receiver = await serve(path, () => {}, { senderUid: 0 });
  await receiver.close();
  assert.throws(() => Deno.lstatSync(path), Deno.errors.NotFound, "close removed it");
});

Deno.test("the SDK's documentation: every export documented (deno doc --lint), and every example in it type-checks and runs", async () => {
  const files = ["src/service/mod.ts", "src/actions/handoff/record.ts", "src/net/address.ts"];
  const lint = await new Deno.Command(Deno.execPath(), {
    args: ["doc", "--lint", "src/service/mod.ts"],
    cwd: ROOT,
  }).output();
  assert.equal(lint.code, 0, new TextDecoder().decode(lint.stderr));
  const examples = await new Deno.Command(Deno.execPath(), {
    args: ["test", "--doc", "-A", ...files],
    cwd: ROOT,
    env: { NO_COLOR: "1" },
  }).output();
  const out = new TextDecoder().decode(examples.stdout) + new TextDecoder().decode(examples.stderr);
  assert.equal(examples.code, 0, out);
  assert.match(out, /ok \| [1-9]\d* passed/);
});
