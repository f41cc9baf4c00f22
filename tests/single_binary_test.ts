/**
 * The single binary's start-up, without `deno compile` (its runtime
 * download cannot be reached here): the embedded shim is extracted to a
 * private folder, hash-checked, preloaded into a new run of the entry, and
 * HTTPS uses accept injection; the built-in service runs in its role.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { extractShim } from "../src/ops/embedded_shim.ts";
import { $, TestDaemon } from "./helpers/daemon.ts";
import { roundTrip } from "./helpers/client.ts";
import denoJson from "../deno.json" with { type: "json" };

const SHIM = new URL("../build/libportmux.so", import.meta.url).pathname;

Deno.test("extractShim() writes the shim to a private folder, reuses a good copy, replaces a tampered one", async () => {
  const base = await Deno.makeTempDir();
  const dir = join(base, "runtime");
  const bytes = await Deno.readFile(SHIM);
  const path = await extractShim(bytes, dir);
  assert.equal((await Deno.stat(dir)).mode! & 0o777, 0o700);
  assert.deepEqual(await Deno.readFile(path), bytes);
  assert.match(path, /libportmux-[0-9a-f]{16}\.so$/);

  const first = (await Deno.stat(path)).mtime!.getTime();
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(await extractShim(bytes, dir), path);
  assert.equal((await Deno.stat(path)).mtime!.getTime(), first, "a good copy is reused");

  await Deno.chmod(path, 0o600);
  await Deno.writeFile(path, new TextEncoder().encode("not the shim"));
  assert.equal(await extractShim(bytes, dir), path);
  assert.deepEqual(await Deno.readFile(path), bytes, "a tampered copy is replaced");
});

Deno.test("extractShim() refuses a folder that others can use or that is not ours", async () => {
  const open = await Deno.makeTempDir();
  await Deno.chmod(open, 0o777);
  await assert.rejects(
    extractShim(await Deno.readFile(SHIM), open),
    /can be used by others \(mode 777\); it must be 0700/,
  );
  if (Deno.uid() === 0) { // as root, a folder of another user can be made
    const foreign = await Deno.makeTempDir();
    await Deno.chown(foreign, 65534, 65534);
    await assert.rejects(extractShim(await Deno.readFile(SHIM), foreign), /belongs to uid 65534/);
  }
});

Deno.test("the single binary's entry extracts the shim, preloads it into itself, and serves with injection", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-single-" });
  const runtime = join(dir, "run");
  await Deno.mkdir(runtime, { mode: 0o700 });
  await Deno.writeTextFile(
    join(dir, "c.yaml"),
    `listen: [{ address: 127.0.0.1, port: 0 }]
tls: { self_signed: true }
services: { echo: { builtin: echo } }
routes:
  - { name: web, match: { protocol: tls }, action: https }
  - { name: private, match: { prefix: PRIV }, action: handoff, service: echo }
`,
  );
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("../src/portmux.ts", import.meta.url).pathname,
      "--parallel",
      "1",
      "--config",
      join(dir, "c.yaml"),
    ],
    env: { XDG_RUNTIME_DIR: runtime, PORTMUX_DATA_DIR: dir },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const d = new TestDaemon(child);
  try {
    const started = await d.waitFor((l) => l.event === "started", 30_000);
    assert.equal(started.https, "inject", "the extracted shim is preloaded");
    const listening = await d.waitFor((l) => l.event === "listening");
    const port = Number(String(listening.address).split(":").pop());
    const extracted = [...Deno.readDirSync(join(runtime, "portmux"))].map((e) => e.name);
    assert.equal(extracted.length, 1);
    assert.match(extracted[0]!, /^libportmux-[0-9a-f]{16}\.so$/);

    const r = await $`curl -sk https://127.0.0.1:${port}/`;
    assert.match(r.stdout, /delivery: inject/);
    const c = await Deno.connect({ hostname: "127.0.0.1", port });
    assert.equal(await roundTrip(c, "PRIV single", 11), "PRIV single");
    c.close();
    // The built-in service runs as the entry itself, in its role (a compiled
    // binary has no `deno run`).
    const ps = await $`ps -eo pid,args --no-headers`;
    const service = ps.stdout.split("\n").find((l) =>
      l.includes("--exit-with-stdin") && l.includes(dir) // this test's, not another's
    );
    assert.ok(service, "the built-in service runs");
    assert.match(service!, /src\/portmux\.ts --socket /);
    const environ = await Deno.readTextFile(`/proc/${service!.trim().split(/\s+/)[0]}/environ`);
    assert.ok(environ.split("\0").includes("PORTMUX_ROLE=echo-service"));
  } finally {
    await d.stop();
  }
});

Deno.test("deno task compile embeds the shim and the default config into one binary", () => {
  const task = denoJson.tasks.compile;
  assert.match(task, /deno compile .*--include build\/libportmux\.so/);
  assert.match(task, /--include config\/default\.yaml/);
  assert.match(task, /src\/portmux\.ts$/);
});
