/** https.static: files from a folder, with ETags, ranges, gzip, and nothing outside it. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { $, startDaemon } from "./helpers/daemon.ts";

Deno.test("the static handler serves files with ETag/304, ranges, gzip and index.html, and nothing outside its folder", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-static-" });
  const site = join(dir, "site");
  await Deno.mkdir(join(site, "docs"), { recursive: true });
  const text = "hello, static world\n".repeat(200); // 4000 bytes: worth compressing
  await Deno.writeTextFile(join(site, "page.txt"), text);
  await Deno.writeTextFile(join(site, "docs", "index.html"), "<h1>docs</h1>\n");
  await Deno.writeTextFile(join(dir, "secret.txt"), "not for you\n");
  await Deno.symlink(join(dir, "secret.txt"), join(site, "link.txt"));
  const d = await startDaemon({
    dataDir: dir,
    config: `
listen: [{ address: 127.0.0.1, port: 0 }]
tls: { self_signed: true }
https: { static: ${JSON.stringify(site)} }
routes: [{ name: web, match: { protocol: tls }, action: https }]
`,
  });
  const base = `https://127.0.0.1:${d.port}`;
  try {
    const full = await $`curl -sk -D - ${base}/page.txt`;
    assert.match(full.stdout, /^HTTP\/2 200/);
    assert.match(full.stdout, /content-type: text\/plain; charset=utf-8/);
    assert.ok(full.stdout.endsWith(text));
    const etag = /etag: (".*")/.exec(full.stdout)![1]!;

    const again = await $`curl -sk -o /dev/null -w '%{http_code}' -H ${`If-None-Match: ${etag}`} \
      ${base}/page.txt`;
    assert.equal(again.stdout, "304");

    const part = await $`curl -sk -D - -H 'Range: bytes=7-12' ${base}/page.txt`;
    assert.match(part.stdout, /^HTTP\/2 206/);
    assert.match(part.stdout, /content-range: bytes 7-12\/4000/);
    assert.ok(part.stdout.endsWith("static"));
    const tail = await $`curl -sk -H 'Range: bytes=-6' ${base}/page.txt`;
    assert.equal(tail.stdout, "world\n");
    const beyond = await $`curl -sk -o /dev/null -w '%{http_code}' -H 'Range: bytes=5000-' \
      ${base}/page.txt`;
    assert.equal(beyond.stdout, "416");

    const gz = await $`curl -sk --compressed -D - ${base}/page.txt`;
    assert.match(gz.stdout, /content-encoding: gzip/);
    assert.ok(gz.stdout.endsWith(text), "gzip decodes to the file");

    assert.equal((await $`curl -sk ${base}/docs/`).stdout, "<h1>docs</h1>\n");
    for (const path of ["/../secret.txt", "/%2e%2e/secret.txt", "/link.txt", "/nothing"]) {
      const r = await $`curl -sk --path-as-is -o /dev/null -w '%{http_code}' ${base + path}`;
      assert.equal(r.stdout, "404", path);
    }
    const post = await $`curl -sk -o /dev/null -w '%{http_code}' -X POST ${base}/page.txt`;
    assert.equal(post.stdout, "405");
    const head = await $`curl -sk -I ${base}/page.txt`;
    assert.match(head.stdout, /content-length: 4000/);
  } finally {
    await d.stop();
  }
});
