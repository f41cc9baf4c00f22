/**
 * Finding and loading the portmux shim for the service package
 * (src/service/mod.ts), from wherever the package was imported: the shim
 * belongs to the checkout this file is in, not to the service's folder.
 *
 * In this order: the file PORTMUX_SHIM names; the copy preloaded with
 * LD_PRELOAD (dlopen must reach that very instance); this checkout's
 * build/libportmux.so, built with the C compiler when it is missing or
 * older than its sources. Each failure says what to do.
 */
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { preloadedShim, Shim } from "../../ffi/shim.ts";
import { buildShim } from "../build_shim.ts";

const CHECKOUT = new URL("../../", import.meta.url);

/** The checkout's own shim, or null when this module was not imported
 * from files (a remote URL): nothing can be built then. */
function ownShim(): { checkout: string; path: string } | null {
  if (CHECKOUT.protocol !== "file:") return null;
  const checkout = fileURLToPath(CHECKOUT).replace(/\/$/, "");
  return { checkout, path: `${checkout}/build/libportmux.so` };
}

/** The command that builds the shim, from any folder. */
function buildCommand(): string {
  const own = ownShim();
  return own
    ? `deno task --cwd ${own.checkout} build`
    : "deno task build (in a checkout of portmux)";
}

/** The shim to use, loaded; throws an Error that says what to do. */
export async function loadShim(): Promise<Shim> {
  const named = Deno.env.get("PORTMUX_SHIM");
  if (named) {
    return open(named, `PORTMUX_SHIM names ${named}`, [
      `build it (${buildCommand()}) and point PORTMUX_SHIM at its build/libportmux.so`,
      "or unset PORTMUX_SHIM to use this checkout's own",
    ]);
  }
  const preloaded = preloadedShim();
  if (preloaded) {
    return open(preloaded, `LD_PRELOAD names ${preloaded}`, [
      `preload a built one by its absolute path (${buildCommand()} builds ${
        ownShim()?.path ?? "build/libportmux.so"
      })`,
      "or run without LD_PRELOAD (slower: JavaScript then reads the channels)",
    ]);
  }
  const own = ownShim();
  if (!own) {
    throw new Error(
      `the portmux shim cannot be found or built for ${
        new URL("mod.ts", import.meta.url).href
      }, which is not a local file. Clone portmux, build its shim there (deno task build), ` +
        "then set PORTMUX_SHIM=<the checkout>/build/libportmux.so, or import " +
        "<the checkout>/src/service/mod.ts instead",
    );
  }
  try {
    await buildShim(false, false); // only when missing or older than its sources
  } catch (e) {
    if (!exists(own.path)) {
      throw new Error(
        `the portmux shim is missing at ${own.path} and could not be built: ${
          brief((e as Error).message)
        }\nBuild it once with: ${buildCommand()} (this needs a C compiler, cc or $CC, and ` +
          `permission to write in ${dirname(own.path)}), or set PORTMUX_SHIM to a ` +
          "libportmux.so built from the same portmux version",
      );
    }
    // Older than its sources and not rebuildable here (no compiler, a
    // checkout we may not write): used as it is, but said.
    console.warn(
      `portmux: the shim at ${own.path} is older than its sources and could not be rebuilt ` +
        `(${brief((e as Error).message)}); using it as it is. Rebuild it: ${buildCommand()}`,
    );
  }
  return open(own.path, `the portmux shim at ${own.path}`, [
    `rebuild it: ${buildCommand()}`,
  ]);
}

function open(path: string, what: string, todo: string[]): Shim {
  if (!exists(path)) throw new Error(`${what}, which does not exist: ${todo.join(", ")}`);
  try {
    return new Shim(path);
  } catch (e) {
    throw new Error(`${what}, which cannot be used: ${brief((e as Error).message)}; ${todo[0]}`);
  }
}

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** The start of a long message (a compiler's output). */
function brief(message: string): string {
  const lines = message.trim().split("\n");
  return lines.length > 12 ? [...lines.slice(0, 12), "..."].join("\n") : lines.join("\n");
}
