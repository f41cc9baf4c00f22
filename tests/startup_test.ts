/** The daemon refuses to start, with one clear line, when a part of it cannot. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { $ } from "./helpers/daemon.ts";

const MAIN = new URL("../src/main.ts", import.meta.url).pathname;

async function startWith(config: string) {
  const dir = await Deno.makeTempDir({ prefix: "portmux-startup-" });
  const file = join(dir, "portmux.yaml");
  await Deno.writeTextFile(file, config);
  return await $`${Deno.execPath()} run -A ${MAIN} --config ${file}`;
}

Deno.test("a port that is already taken stops the start with exit code 1 and says so", async () => {
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const r = await startWith(`listen: [{ address: 127.0.0.1, port: ${taken.addr.port} }]\n`);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^portmux: cannot start: .*[Aa]ddress already in use/);
  } finally {
    taken.close();
  }
});

Deno.test("an HTTPS handler module without default { fetch } stops the start", async () => {
  const dir = await Deno.makeTempDir();
  const module = join(dir, "app.ts");
  await Deno.writeTextFile(module, "export const fetch = () => new Response('x');\n");
  const r = await startWith(`
listen: [{ address: 127.0.0.1, port: 0 }]
tls: { self_signed: true }
https: { handler: ${JSON.stringify(module)} }
routes: [{ name: web, match: { protocol: tls }, action: https }]
`);
  assert.equal(r.code, 1);
  assert.equal(
    r.stderr,
    `portmux: cannot start: ${module}: the HTTPS handler module must export default { fetch }\n`,
  );
});
