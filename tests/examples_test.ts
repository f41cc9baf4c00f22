/**
 * The examples (examples/): one small KV1 service written four times, in
 * Deno on the service SDK, Python, C and Rust. Each is built as its README
 * says, runs on a socket of its own, and takes clients from the real
 * daemon: a value set by one client is read by another, WHO gives the
 * client's own address and port from the record, a first line other than
 * KV1 is refused, and a slow client does not hold up the others.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { $, freePort, startDaemon, type TestDaemon } from "./helpers/daemon.ts";
import { enc, roundTrip, writeAll } from "./helpers/client.ts";
import { readLines } from "./helpers/lines.ts";

const EXAMPLES = new URL("../examples/", import.meta.url).pathname;
/** Compilers and foreign services run without the sanitized shim that
 * `deno task test:asan` preloads into every process. */
const PLAIN = { LD_PRELOAD: "" };

interface Example {
  readonly name: string;
  /** Builds it in dir (if it needs building); returns how to run it. */
  build(dir: string): Promise<{ command: string[]; env: Record<string, string> }>;
}

const EXAMPLE_LIST: Example[] = [
  {
    name: "deno",
    build() {
      const command = [Deno.execPath(), "run", "-A", join(EXAMPLES, "deno/kv.ts")];
      return Promise.resolve({ command, env: {} });
    },
  },
  {
    name: "python",
    async build() {
      await tool("python3", ["-c", "import socket; socket.CMSG_SPACE; socket.SO_PEERCRED"], [
        "the Python example needs python3 (3.9+)",
      ]);
      return { command: ["python3", "-u", join(EXAMPLES, "python/kv.py")], env: PLAIN };
    },
  },
  {
    name: "c",
    async build(dir) {
      const out = join(dir, "kv-c");
      const cc = Deno.env.get("CC") ?? "cc";
      await tool(cc, ["-O2", "-Wall", "-Wextra", "-Werror", "-pthread", "-o", out, "kv.c"], [
        "the C example needs a C compiler (Debian: apt-get install gcc libc6-dev)",
        join(EXAMPLES, "c"),
      ]);
      return { command: [out], env: PLAIN };
    },
  },
  {
    name: "rust",
    async build(dir) {
      const out = join(dir, "kv-rust");
      const args = ["--edition", "2021", "-O", "-D", "warnings", "-o", out, "src/main.rs"];
      await tool("rustc", args, [
        "the Rust example needs rustc (Debian: apt-get install rustc)",
        join(EXAMPLES, "rust"),
      ]);
      return { command: [out], env: PLAIN };
    },
  },
];

/** Runs a build tool; a missing one fails the test with what to install. */
async function tool(program: string, args: string[], [missing, cwd]: string[]): Promise<void> {
  if (!await $.commandExists(program)) throw new Error(`${program} is not installed: ${missing}`);
  const out = await $`${program} ${args}`.cwd(cwd ?? ".").env(PLAIN);
  if (out.code !== 0) {
    throw new Error(`${program} ${args.join(" ")}: failed\n${out.stderr}${out.stdout}`);
  }
}

/** An example service running, and the lines it logs (stderr). */
class Service {
  readonly lines: string[] = [];
  #waiters: { pred: (l: string) => boolean; resolve: () => void }[] = [];
  readonly #child: Deno.ChildProcess;
  readonly #reading: Promise<void>;
  readonly #ended: Promise<Deno.CommandStatus>;

  constructor(command: string[], env: Record<string, string>) {
    const [program, ...args] = command;
    this.#child = new Deno.Command(program!, {
      args,
      env,
      stdin: "null",
      stdout: "inherit",
      stderr: "piped",
    }).spawn();
    this.#ended = this.#child.status;
    this.#reading = readLines(this.#child.stderr, (line) => {
      this.lines.push(line);
      this.#waiters = this.#waiters.filter((w) => !(w.pred(line) && (w.resolve(), true)));
    });
  }

  /** The first line (past or future) that pred accepts. */
  waitFor(pred: (l: string) => boolean, what: string, timeoutMs = 10_000): Promise<void> {
    if (this.lines.some(pred)) return Promise.resolve();
    let timer: ReturnType<typeof setTimeout> | undefined;
    return Promise.race([
      new Promise<void>((resolve) => this.#waiters.push({ pred, resolve })),
      new Promise<never>((_, reject) => {
        const fail = (why: string) =>
          reject(new Error(`${what}: ${why}; its log:\n${this.lines.join("\n")}`));
        timer = setTimeout(() => fail(`not within ${timeoutMs} ms`), timeoutMs);
        this.#ended.then((s) => fail(`the service exited (code ${s.code})`));
      }),
    ]).finally(() => clearTimeout(timer));
  }

  /** SIGTERM (SIGKILL if it is still there 5 s later); its exit status. */
  async stop(): Promise<Deno.CommandStatus> {
    try {
      this.#child.kill("SIGTERM");
    } catch { /* gone already */ }
    const timer = setTimeout(() => {
      try {
        this.#child.kill("SIGKILL");
      } catch { /* gone */ }
    }, 5000);
    const status = await this.#ended;
    clearTimeout(timer);
    await this.#reading;
    return status;
  }
}

/** Closes a client (which readAtLeast's timer may have closed already). */
function shut(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch { /* closed already */ }
}

/** Sends text; the reply, as long as the one expected, within 3 s. */
const exchange = (conn: Deno.Conn, text: string, reply: string) =>
  roundTrip(conn, text, reply.length, 3000);

/** The clients, through the daemon's port. */
async function drive(d: TestDaemon, service: Service): Promise<void> {
  const one = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
  try {
    assert.equal(
      await exchange(one, "KV1\nSET color blue\nGET color\n", "OK\nblue\n"),
      "OK\nblue\n",
    );
    const me = one.localAddr;
    const who = `${me.hostname} ${me.port}\n`;
    assert.equal(await exchange(one, "WHO\n", who), who, "WHO: the client's own address");
    const logged = await d.connection(me.port);
    assert.equal(logged.outcome, "handed-off");
    assert.equal(logged.route, "kv");
  } finally {
    shut(one);
  }

  const two = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
  try {
    const reply = "blue\nNOTFOUND\nERR bad command\n";
    assert.equal(await exchange(two, "KV1\nGET color\nGET shape\nSET color\n", reply), reply);
  } finally {
    shut(two);
  }

  const refused = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
  try {
    const reply = "ERR expected KV1\n";
    assert.equal(await exchange(refused, "KV1 please\n", reply), reply, "the service reads KV1");
  } finally {
    shut(refused);
  }

  // A slow client: KV1, then nothing, kept open while another is served.
  const slow = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
  try {
    await writeAll(slow, enc.encode("KV1\n"));
    const port = slow.localAddr.port;
    const itsLine = new RegExp(`^kv: client \\S+ ${port}( |$)`);
    await service.waitFor((l) => itsLine.test(l), "the slow client reaches the service");
    await new Promise((r) => setTimeout(r, 200)); // it has read the slow client's KV1 by now
    const fast = await Deno.connect({ hostname: "127.0.0.1", port: d.port });
    try {
      const started = performance.now();
      const expected = `blue\n${fast.localAddr.hostname} ${fast.localAddr.port}\n`;
      const got = await exchange(fast, "KV1\nGET color\nWHO\n", expected);
      const ms = performance.now() - started;
      const what = `behind a slow client, another got ${JSON.stringify(got)} in ${
        ms.toFixed(0)
      } ms`;
      assert.ok(got === expected && ms < 1000, `${what} (expected ${JSON.stringify(expected)})`);
    } finally {
      shut(fast);
    }
    assert.equal(
      await exchange(slow, "GET color\n", "blue\n"),
      "blue\n",
      "the slow client is served",
    );
  } finally {
    shut(slow);
  }
}

/** The config docs/service-authors.md has a newcomer write, with this
 * test's socket and free ports: the walk-through is tested as written. */
function walkThroughConfig(socket: string): string {
  const doc = Deno.readTextFileSync(new URL("../docs/service-authors.md", import.meta.url));
  const written = /cat > \/tmp\/kv\/portmux\.yaml <<'EOF'\n([\s\S]*?)\nEOF/.exec(doc)?.[1];
  assert.ok(written, "docs/service-authors.md has the walk-through's config");
  return written.replaceAll("/tmp/kv/kv.sock", socket)
    .replace("port: 8443", "port: 0")
    .replace("port: 9090", `port: ${freePort()}`);
}

for (const example of EXAMPLE_LIST) {
  Deno.test(`examples/${example.name}: builds, and serves KV1 clients the daemon hands it`, async () => {
    const dir = await Deno.makeTempDir({ prefix: `portmux-example-${example.name}-` });
    const socket = join(dir, "kv.sock");
    let service: Service | undefined;
    let d: TestDaemon | undefined;
    try {
      const { command, env } = await example.build(dir);
      service = new Service([...command, socket], env);
      await service.waitFor(
        (l) => l.includes(`listening on ${socket}`),
        "the service starts",
        30_000,
      );
      d = await startDaemon({
        dataDir: dir,
        config: walkThroughConfig(socket),
      });
      await drive(d, service);
      await d.stop();
      d = undefined;
      const status = await service.stop();
      service = undefined;
      assert.equal(status.code, 0, "the service stops on SIGTERM");
      assert.throws(() => Deno.lstatSync(socket), Deno.errors.NotFound, "it removes its socket");
    } finally {
      await d?.stop();
      await service?.stop();
      await Deno.remove(dir, { recursive: true });
    }
  });
}
