/**
 * The docs match the code: every log event and every metric the daemon
 * can emit is in docs/logs.md and docs/operations.md, every link between
 * the docs leads to a file of the repository, and nothing points outside
 * it.
 */
import assert from "node:assert/strict";
import { dirname, join, relative } from "node:path";

const ROOT = new URL("../", import.meta.url).pathname;

function sources(dir: string): string[] {
  return [...Deno.readDirSync(join(ROOT, dir))].flatMap((e) =>
    e.isDirectory
      ? sources(join(dir, e.name))
      : e.name.endsWith(".ts")
      ? [join(ROOT, dir, e.name)]
      : []
  );
}

const code = sources("src").map((f) => Deno.readTextFileSync(f)).join("\n");
const read = (doc: string) => Deno.readTextFileSync(join(ROOT, doc));

/** The names a pattern's first group finds in the code. */
function found(pattern: RegExp): string[] {
  return [...new Set([...code.matchAll(pattern)].map((m) => m[1]!))].sort();
}

Deno.test("every log event the code can emit is in docs/logs.md", () => {
  const events = found(/\.(?:debug|info|warn|error)\(\s*(?:[^,()]+,\s*)?"([a-z][a-z0-9-]+)"/g);
  assert.ok(events.length >= 40, `only ${events.length} events found: the pattern broke`);
  const doc = read("docs/logs.md");
  const missing = events.filter((e) => !doc.includes(`\`${e}\``));
  assert.deepEqual(missing, [], "events the code logs that docs/logs.md does not name");
});

Deno.test("every metric the code declares is in docs/operations.md", () => {
  const metrics = found(/"(portmux_[a-z_]+)"/g);
  assert.ok(metrics.length >= 15, `only ${metrics.length} metrics found: the pattern broke`);
  const doc = read("docs/operations.md");
  const missing = metrics.filter((m) => !doc.includes(m));
  assert.deepEqual(missing, [], "metrics that docs/operations.md does not name");
});

Deno.test("links between the docs lead to files of the repository, and none leads outside it", () => {
  const docs = ["README.md", "examples/README.md"];
  for (const e of Deno.readDirSync(join(ROOT, "docs"))) {
    if (e.name.endsWith(".md")) docs.push(`docs/${e.name}`);
  }
  for (const e of Deno.readDirSync(join(ROOT, "examples"))) {
    if (e.isDirectory) docs.push(`examples/${e.name}/README.md`);
  }
  const broken: string[] = [];
  for (const doc of docs) {
    const text = read(doc);
    for (const [, target] of text.matchAll(/\]\(([^)#\s]+)(?:#[^)]*)?\)/g)) {
      if (/^[a-z]+:/.test(target!)) continue; // a URL
      const path = join(ROOT, dirname(doc), target!);
      const inside = !relative(ROOT, path).startsWith("..");
      let exists = false;
      try {
        Deno.statSync(path);
        exists = true;
      } catch { /* missing */ }
      if (!inside || !exists) broken.push(`${doc}: ${target}`);
    }
    if (text.includes("shared/DESIGN.md")) broken.push(`${doc}: points to shared/DESIGN.md`);
  }
  assert.deepEqual(broken, []);
});
