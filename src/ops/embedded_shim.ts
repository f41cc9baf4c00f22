/**
 * The single binary's copy of the shim: `deno compile --include` embeds
 * build/libportmux.so; at start it is written to a private runtime folder
 * (mode 0700, ours) under a name made of its SHA-256, and checked before
 * every use, so that what gets preloaded is exactly what was embedded.
 */
import { join } from "node:path";

/** The folder for the extracted shim: $XDG_RUNTIME_DIR/portmux, else
 * /tmp/portmux-<uid>. */
export function runtimeDir(): string {
  const xdg = Deno.env.get("XDG_RUNTIME_DIR");
  return xdg ? join(xdg, "portmux") : `/tmp/portmux-${Deno.uid()}`;
}

async function sha256(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return [...digest].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Makes dir if needed; throws unless it is ours and private (0700): a
 * folder others can write could get another library put in it. */
function privateFolder(dir: string): void {
  try {
    Deno.mkdirSync(dir, { mode: 0o700 });
  } catch (e) {
    if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
  }
  const st = Deno.lstatSync(dir);
  if (!st.isDirectory) throw new Error(`${dir} is not a folder`);
  if (st.uid !== Deno.uid()) {
    throw new Error(`${dir} belongs to uid ${st.uid}, not to us (uid ${Deno.uid()})`);
  }
  if (((st.mode ?? 0) & 0o077) !== 0) {
    throw new Error(
      `${dir} can be used by others (mode ${
        ((st.mode ?? 0) & 0o777).toString(8)
      }); it must be 0700`,
    );
  }
}

/**
 * Writes the embedded shim to the private runtime folder (or reuses a copy
 * whose hash is right; a copy whose hash is wrong is replaced) and returns
 * its path. Throws if the folder cannot be made private.
 */
export async function extractShim(
  bytes: Uint8Array<ArrayBuffer>,
  dir = runtimeDir(),
): Promise<string> {
  privateFolder(dir);
  const hash = await sha256(bytes);
  const path = join(dir, `libportmux-${hash.slice(0, 16)}.so`);
  try {
    if (await sha256(await Deno.readFile(path)) === hash) return path;
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  const tmp = `${path}.${Deno.pid}.tmp`;
  await Deno.writeFile(tmp, bytes, { mode: 0o500 });
  await Deno.rename(tmp, path); // whole or not at all
  if (await sha256(await Deno.readFile(path)) !== hash) {
    throw new Error(`the shim written to ${path} does not read back as written`);
  }
  return path;
}
