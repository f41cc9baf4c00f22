/** Writes one bench's section of bench/RESULTS.md, leaving the others. */
import { $ } from "../tests/helpers/daemon.ts";

const FILE = new URL("./RESULTS.md", import.meta.url);

/** Replaces the text between <!-- begin NAME --> and <!-- end NAME -->
 * (appending the section if it is not there yet). */
export async function writeSection(name: string, text: string): Promise<void> {
  const begin = `<!-- begin ${name} -->`;
  const end = `<!-- end ${name} -->`;
  const old = await Deno.readTextFile(FILE).catch(() => "# Benchmark results\n");
  const section = `${begin}\n\n${text.trim()}\n\n${end}`;
  const i = old.indexOf(begin);
  const j = old.indexOf(end);
  const next = i >= 0 && j > i
    ? old.slice(0, i) + section + old.slice(j + end.length)
    : `${old.trimEnd()}\n\n${section}\n`;
  await Deno.writeTextFile(FILE, next);
  await formatInPlace(FILE.pathname);
  console.error(`written to ${FILE.pathname} (${name})`);
}

/** Formats a written file as `deno fmt` would (the test task checks the
 * format of everything in the repository, bench results included). */
export async function formatInPlace(path: string): Promise<void> {
  const r = await $`${Deno.execPath()} fmt --quiet ${path}`;
  if (r.code !== 0) throw new Error(`deno fmt ${path}: ${r.stderr}`);
}

/** A line saying when and on what a figure was measured. */
export function machineLine(): string {
  const cpu = Deno.readTextFileSync("/proc/cpuinfo").match(/model name\s*:\s*(.*)/)?.[1] ?? "?";
  return `Run: ${new Date().toISOString()}, ${navigator.hardwareConcurrency} cores (${cpu}), ` +
    `kernel ${Deno.osRelease()}, Deno ${Deno.version.deno}`;
}
