/**
 * Builds the C shim (c/*.c) into build/libportmux.so with the
 * system C compiler ($CC, else cc), when it is missing or older than its
 * source. `--force` rebuilds anyway. Used by `deno task build`, by the
 * launcher and before the tests.
 *
 * The sanitized shim (build/asan/libportmux.so: AddressSanitizer and
 * UBSan, gcc only) is built instead with `--sanitize`, or for the launcher
 * when PORTMUX_SHIM_SANITIZE=1. `--sanitize -- COMMAND...` then runs the
 * command with it preloaded into every process (`deno task test:asan`),
 * and fails if a sanitizer reported anything.
 */

const root = new URL("../", import.meta.url);
const C_FILES = [
  "portmux_shim.c",
  "interposer.c",
  "channel_send.c",
  "express_lane.c",
  "lane_table.c",
  "lane_hello.c",
  "lane_decide.c",
  "lane_events.c",
  "handoff_receiver.c",
  "relay.c",
  "shim_internal.h",
  "lane.h",
]
  .map((f) => new URL(`c/${f}`, root).pathname);
const SOURCES = C_FILES.filter((f) => f.endsWith(".c"));
/** The shim's C files (tests/c_fuzz_test.ts builds them into its harness). */
export const SHIM_SOURCES: readonly string[] = SOURCES;
export const SHIM_OUTPUT = new URL("build/libportmux.so", root).pathname;
export const SANITIZED_SHIM_OUTPUT = new URL("build/asan/libportmux.so", root).pathname;
const REPORTS = new URL("build/asan/reports/", root).pathname;

/** True when the sanitized shim is asked for (PORTMUX_SHIM_SANITIZE=1). */
export function sanitizedShimWanted(): boolean {
  return Deno.env.get("PORTMUX_SHIM_SANITIZE") === "1";
}

function mtime(path: string): number | null {
  try {
    return Deno.statSync(path).mtime?.getTime() ?? null;
  } catch {
    return null;
  }
}

/** True when the library is missing or older than one of its sources. */
export function shimIsStale(output = SHIM_OUTPUT): boolean {
  const built = mtime(output);
  return built === null || C_FILES.some((f) => built < (mtime(f) ?? Infinity));
}

/** Builds the shim (sanitized: the sanitized one) if needed, or always with
 * force; returns its path. */
export async function buildShim(force = false, sanitized = sanitizedShimWanted()): Promise<string> {
  const output = sanitized ? SANITIZED_SHIM_OUTPUT : SHIM_OUTPUT;
  if (!force && !shimIsStale(output)) return output;
  await Deno.mkdir(output.slice(0, output.lastIndexOf("/")), { recursive: true });
  const cc = Deno.env.get("CC") ?? "cc";
  // Build to a temporary name and rename: a running daemon may have the old
  // library mapped, and a half-written file must never be loaded.
  const tmp = `${output}.${Deno.pid}.tmp`;
  const args = sanitized ? await sanitizedArgs(cc, tmp) : [
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-fPIC",
    "-shared",
    "-fvisibility=hidden",
    "-o",
    tmp,
    ...SOURCES,
    "-ldl",
    "-lpthread",
  ];
  let out: Deno.CommandOutput;
  try {
    // Deno.Command, not dax: the launcher and the service SDK (no import map) import this module.
    out = await new Deno.Command(cc, { args, stderr: "piped" }).output();
  } catch (e) {
    throw new Error(`cannot run the C compiler "${cc}" (install gcc or set CC): ${e}`);
  }
  if (!out.success) {
    throw new Error(`building the shim failed:\n${new TextDecoder().decode(out.stderr)}`);
  }
  await Deno.rename(tmp, output);
  return output;
}

/**
 * The sanitized build's arguments. The sanitizer runtimes are linked into
 * the library, whole: preloaded first, it brings ASan in before anything
 * else, as ASan requires, even where a test preloads the shim alone
 * (`LD_PRELOAD: shim.path`); with gcc's shared libasan that would need
 * libasan.so first in every LD_PRELOAD. UBSan reports and goes on (every
 * report is collected); ASan stops the process at its first error.
 */
async function sanitizedArgs(cc: string, output: string): Promise<string[]> {
  return [
    "-fsanitize=address,undefined",
    "-fno-omit-frame-pointer",
    "-g",
    "-O1",
    "-Wall",
    "-Wextra",
    "-fPIC",
    "-shared",
    "-fvisibility=hidden",
    "-static-libasan",
    "-static-libubsan",
    // ASan starts before any other library's constructor: preloaded, it
    // would start last, inside the first intercepted call, and p11-kit's
    // (curl's) newlocale then leaves glibc's locale lock broken (hangs).
    "-Wl,-z,initfirst",
    "-o",
    output,
    ...SOURCES,
    "-Wl,--whole-archive",
    await sanitizerRuntime(cc, "libasan.a"),
    "-Wl,--no-whole-archive",
    await sanitizerRuntime(cc, "libubsan.a"),
    "-ldl",
    "-lpthread",
  ];
}

/** A sanitizer runtime of the compiler's (libasan.a); throws if it has none. */
async function sanitizerRuntime(cc: string, name: string): Promise<string> {
  let path = "";
  try {
    const out = await new Deno.Command(cc, { args: [`-print-file-name=${name}`] }).output();
    path = new TextDecoder().decode(out.stdout).trim();
  } catch (e) {
    throw new Error(`cannot run the C compiler "${cc}" (install gcc or set CC): ${e}`);
  }
  // gcc answers the bare name when it has no such file.
  if (!path.startsWith("/")) {
    throw new Error(
      `"${cc}" has no ${name}: the sanitized shim needs gcc with its sanitizer runtimes ` +
        `(Debian: libgcc-12-dev, libasan8, libubsan1, which come with gcc)`,
    );
  }
  return path;
}

/**
 * Runs command (a program and its arguments; "deno" is this Deno) with the
 * sanitized shim preloaded into it and every process it starts, which
 * write their sanitizer reports to build/asan/reports. Returns the
 * command's exit code, or 1 if it succeeded but a report says an error.
 */
export async function runSanitized(command: readonly string[]): Promise<number> {
  const shim = await buildShim(true, true); // its flags may have changed, not only its sources
  console.error(`built ${shim}`);
  await Deno.remove(REPORTS, { recursive: true }).catch(() => {});
  await Deno.mkdir(REPORTS, { recursive: true });
  const env = {
    PORTMUX_SHIM_SANITIZE: "1",
    LD_PRELOAD: [shim, Deno.env.get("LD_PRELOAD")].filter(Boolean).join(":"),
    ASAN_OPTIONS: [
      // Deno and V8 are not built for LeakSanitizer: what they hold at exit
      // is not leaks, and its exit code would fail every process.
      "detect_leaks=0",
      "abort_on_error=1",
      // A test's ulimit makes malloc fail: NULL, as without ASan.
      "allocator_may_return_null=1",
      // Freed memory kept poisoned, less of it: dozens of Deno processes.
      "quarantine_size_mb=64",
      `log_path=${REPORTS}asan`,
      "log_exe_name=1",
    ].join(":"),
    UBSAN_OPTIONS: `print_stacktrace=1:halt_on_error=0:log_path=${REPORTS}ubsan:log_exe_name=1`,
  };
  const [program, ...args] = command;
  if (!program) throw new Error("--sanitize --: no command to run");
  const started = performance.now();
  const status = await new Deno.Command(program === "deno" ? Deno.execPath() : program, {
    args,
    env,
  }).spawn().status;
  const minutes = ((performance.now() - started) / 60_000).toFixed(1);
  const errors = await sanitizerReports();
  console.error(
    `\n${command.join(" ")}: exit ${status.code} in ${minutes} min with the sanitized shim; ` +
      `${errors} sanitizer error report${errors === 1 ? "" : "s"} (${REPORTS})`,
  );
  return status.code !== 0 ? status.code : errors > 0 ? 1 : 0;
}

/** Prints each distinct report in build/asan/reports once, with the
 * processes that wrote it; returns how many say an error. */
async function sanitizerReports(): Promise<number> {
  const seen = new Map<string, string[]>();
  for await (const entry of Deno.readDir(REPORTS)) {
    const text = await Deno.readTextFile(`${REPORTS}${entry.name}`);
    // The same report from many processes differs by pid and addresses.
    const key = text.replace(/==\d+==/g, "==PID==").replace(/0x[0-9a-f]+/g, "0x…");
    seen.set(key, [...seen.get(key) ?? [], entry.name]);
  }
  let errors = 0;
  for (const [report, files] of seen) {
    const error = /ERROR: |runtime error: /.test(report);
    if (error) errors += files.length;
    console.error(
      `\n--- ${error ? "error" : "note"} from ${files.length} process(es): ${files.join(" ")}`,
    );
    console.error(report);
  }
  return errors;
}

if (import.meta.main) {
  try {
    const dashes = Deno.args.indexOf("--");
    if (dashes >= 0) Deno.exit(await runSanitized(Deno.args.slice(dashes + 1)));
    const force = Deno.args.includes("--force");
    const sanitized = Deno.args.includes("--sanitize");
    const wasStale = force || shimIsStale(sanitized ? SANITIZED_SHIM_OUTPUT : SHIM_OUTPUT);
    const path = await buildShim(force, sanitized);
    if (wasStale) console.error(`built ${path}`);
  } catch (e) {
    console.error((e as Error).message);
    Deno.exit(1);
  }
}
