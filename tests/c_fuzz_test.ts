/**
 * The shim's C that reads bytes it does not control, under AddressSanitizer
 * and UBSan: the express lane's table parser, its ClientHello parser with
 * decide() and the event it fills, the handoff receiver's records, and
 * pm_verify_fd's hosts, fed the hello fixtures, every truncation of them
 * and 100,000 seeded mutations (c/fuzz/fuzz_lane.c says how). Needs gcc
 * with its sanitizer runtimes (Debian: libasan8 and libubsan1, which come
 * with gcc): without them this fails, it does not skip.
 */
import assert from "node:assert/strict";
import { SHIM_SOURCES } from "../src/build_shim.ts";
import { $, runToEnd } from "./helpers/daemon.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const FIXTURES = `${ROOT}tests/fixtures/tls/`;
const FLAGS = [
  "-fsanitize=address,undefined",
  "-fno-sanitize-recover=all",
  "-g",
  "-O1",
  "-fno-omit-frame-pointer",
  "-Wall",
  "-Wextra",
];
// The harness includes these files' source, to reach their static functions.
const INCLUDED = ["express_lane.c", "handoff_receiver.c"];
// The harness's own options (see c/fuzz/fuzz_lane.c), and not under the
// sanitized shim that `deno task test:asan` preloads into every process.
const ENV = {
  LD_PRELOAD: "",
  ASAN_OPTIONS: "abort_on_error=1:detect_leaks=1:detect_stack_use_after_return=1",
  UBSAN_OPTIONS: "print_stacktrace=1:halt_on_error=1:abort_on_error=1",
};

async function compile(args: string[]): Promise<void> {
  const cc = Deno.env.get("CC") ?? "cc";
  const out = await $`${cc} ${args}`.env(ENV);
  if (out.code !== 0) {
    throw new Error(
      `${cc} failed: the fuzz harness needs gcc with libasan and libubsan\n${out.stderr}`,
    );
  }
}

Deno.test("the C parsers under ASan and UBSan: every truncation, 100,000 mutations", async () => {
  // A folder of its own: another test run may build at the same time.
  await Deno.mkdir(`${ROOT}build/fuzz`, { recursive: true });
  const dir = await Deno.makeTempDir({ dir: `${ROOT}build/fuzz`, prefix: "run-" });
  const receiver = `${dir}/fuzz_receiver.o`;
  await compile([
    ...FLAGS,
    "-c",
    "-o",
    receiver,
    `${ROOT}c/fuzz/fuzz_receiver.c`,
  ]);
  const harness = `${dir}/fuzz_lane`;
  await compile([
    ...FLAGS,
    "-o",
    harness,
    `${ROOT}c/fuzz/fuzz_lane.c`,
    `${ROOT}c/fuzz/fuzz_express.c`,
    receiver,
    ...SHIM_SOURCES.filter((f) => !INCLUDED.some((name) => f.endsWith(`/${name}`))),
    "-ldl",
    "-lpthread",
  ]);
  const fixtures = [...Deno.readDirSync(FIXTURES)].map((e) => e.name)
    .filter((name) => name.endsWith(".bin")).sort().map((name) => FIXTURES + name);
  assert.ok(fixtures.length >= 7, `hello fixtures: ${fixtures.length}`);

  // A sanitizer's abort (a leak found at exit, after the summary) must fail.
  const run = await runToEnd(harness, ["--crash-dir", dir, ...fixtures], ENV);
  const said = run.stdout + run.stderr;
  // The sanitizer's report and the input that caused it (kept in dir).
  assert.equal(run.code, 0, `the fuzz harness failed (${dir}):\n${said}`);
  const counts = said.match(/fuzz: (\d+) inputs in \d+ ms .*: lane (\d+) /);
  assert.ok(counts, `no summary from the harness:\n${said}`);
  assert.ok(Number(counts[1]) >= 100_000, said);
  assert.ok(Number(counts[2]) >= 100_000, `the lane alone: ${said}`);
  await Deno.remove(dir, { recursive: true });
});
