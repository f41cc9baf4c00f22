/**
 * Builds the C shim (c/*.c) into build/libportmux.so with the
 * system C compiler ($CC, else cc), when it is missing or older than its
 * source. `--force` rebuilds anyway. Used by `deno task build`, by the
 * launcher and before the tests.
 */

const root = new URL("../", import.meta.url);
const C_FILES = [
  "portmux_shim.c",
  "express_lane.c",
  "handoff_receiver.c",
  "relay.c",
  "shim_internal.h",
]
  .map((f) => new URL(`c/${f}`, root).pathname);
const SOURCES = C_FILES.filter((f) => f.endsWith(".c"));
export const SHIM_OUTPUT = new URL("build/libportmux.so", root).pathname;

function mtime(path: string): number | null {
  try {
    return Deno.statSync(path).mtime?.getTime() ?? null;
  } catch {
    return null;
  }
}

/** True when the library is missing or older than one of its sources. */
export function shimIsStale(): boolean {
  const built = mtime(SHIM_OUTPUT);
  return built === null || C_FILES.some((f) => built < (mtime(f) ?? Infinity));
}

/** Builds the shim if needed (or always, with force); returns its path. */
export async function buildShim(force = false): Promise<string> {
  if (!force && !shimIsStale()) return SHIM_OUTPUT;
  await Deno.mkdir(new URL("build/", root), { recursive: true });
  const cc = Deno.env.get("CC") ?? "cc";
  // Build to a temporary name and rename: a running daemon may have the old
  // library mapped, and a half-written file must never be loaded.
  const tmp = `${SHIM_OUTPUT}.${Deno.pid}.tmp`;
  const args = [
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
    out = await new Deno.Command(cc, { args, stderr: "piped" }).output();
  } catch (e) {
    throw new Error(`cannot run the C compiler "${cc}" (install gcc or set CC): ${e}`);
  }
  if (!out.success) {
    throw new Error(`building the shim failed:\n${new TextDecoder().decode(out.stderr)}`);
  }
  await Deno.rename(tmp, SHIM_OUTPUT);
  return SHIM_OUTPUT;
}

if (import.meta.main) {
  try {
    const force = Deno.args.includes("--force");
    const wasStale = force || shimIsStale();
    const path = await buildShim(force);
    if (wasStale) console.error(`built ${path}`);
  } catch (e) {
    console.error((e as Error).message);
    Deno.exit(1);
  }
}
