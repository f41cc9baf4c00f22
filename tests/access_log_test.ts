import assert from "node:assert/strict";
import { join } from "node:path";
import { combinedLine } from "../src/actions/https/access_log.ts";
import { $, startDaemon } from "./helpers/daemon.ts";

/** A daemon serving HTTPS with an access log; the log's file. */
async function withAccessLog() {
  const dir = await Deno.makeTempDir({ prefix: "portmux-access-" });
  const file = join(dir, "access.log");
  const d = await startDaemon({
    dataDir: dir,
    config: `
listen: [{ address: 127.0.0.1, port: 0 }]
tls: { self_signed: true }
https: { access_log: ${JSON.stringify(file)} }
routes: [{ name: web, match: { protocol: tls }, action: https }]
`,
  });
  return { d, file };
}

Deno.test("combinedLine() writes the Combined Log Format, escaping what would break the line", () => {
  const line = combinedLine({
    client: "203.0.113.9",
    method: "GET",
    target: "/a?b=1",
    version: "HTTP/2.0",
    status: 200,
    bytes: 42,
    referer: null,
    userAgent: 'evil "agent"\n\x01',
  }, new Date(Date.UTC(2026, 10, 21, 6, 46, 3)));
  assert.equal(
    line,
    '203.0.113.9 - - [21/Nov/2026:06:46:03 +0000] "GET /a?b=1 HTTP/2.0" 200 42 "-" "evil \\"agent\\"\\x0a\\x01"\n',
  );
});

Deno.test("https.access_log gets a line per request, with the real client and the HTTP version", async () => {
  const { d, file } = await withAccessLog();
  try {
    const base = `https://127.0.0.1:${d.port}`;
    const one = await $`curl -sk --http1.1 -A tester/1 -e https://ref.example/ \
      -w '%{local_port}' -o /dev/null ${base + "/one?x=1"}`;
    const two = await $`curl -sk --http2 -A tester/2 -o /dev/null ${base}/two`;
    assert.equal(two.code, 0);
    let lines: string[] = [];
    for (let i = 0; i < 50 && lines.length < 2; i++) {
      await new Promise((r) => setTimeout(r, 50));
      lines = (await Deno.readTextFile(file).catch(() => "")).split("\n").filter(Boolean);
    }
    assert.equal(lines.length, 2);
    assert.match(
      lines[0]!,
      /^127\.0\.0\.1 - - \[\d\d\/\w{3}\/\d{4}:\d\d:\d\d:\d\d \+0000\] "GET \/one\?x=1 HTTP\/1\.1" 200 (\d+|-) "https:\/\/ref\.example\/" "tester\/1"$/,
    );
    assert.match(lines[1]!, /"GET \/two HTTP\/2\.0" 200 (\d+|-) "-" "tester\/2"$/);
    assert.ok(Number(one.stdout) > 0);
  } finally {
    await d.stop();
  }
});

// What a terminal acts on instead of showing (the line's own \n aside).
// deno-lint-ignore no-control-regex
const RAW_CONTROL = /[\x00-\x09\x0b-\x1f\x7f-\x9f]/;

Deno.test("combinedLine() escapes C1 controls too (U+009B is a CSI to a terminal)", () => {
  const line = combinedLine({
    client: "203.0.113.9",
    method: "GET",
    target: "/",
    version: "HTTP/1.1",
    status: 200,
    bytes: null,
    referer: "\u0085x",
    userAgent: "a\x1b[31mb\x7f\u009b31m\u0080",
  }, new Date(Date.UTC(2026, 10, 21, 6, 46, 3)));
  assert.doesNotMatch(line.slice(0, -1), RAW_CONTROL);
  assert.ok(line.endsWith(String.raw`200 - "\x85x" "a\x1b[31mb\x7f\x9b31m\x80"` + "\n"), line);
});

Deno.test("a request with an 8-bit CSI in its headers gets an access-log line with no raw control", async () => {
  const { d, file } = await withAccessLog();
  try {
    // Raw bytes from printf, as a hostile client sends them: 0x9b (CSI) and
    // 0x85 (NEL). ESC and DEL are refused by the HTTP parser (400, no line).
    for (const version of ["--http1.1", "--http2"]) {
      const curl = await $`bash -c ${
        `curl -sk ${version} -o /dev/null -w '%{http_code}' -A "$(printf 'a\\x9b31mb')" ` +
        `-e "$(printf 'r\\x85s')" https://127.0.0.1:${d.port}/`
      }`;
      assert.equal(curl.stdout, "200");
    }
    let text = "";
    for (let i = 0; i < 50 && text.split("\n").length < 3; i++) {
      await new Promise((r) => setTimeout(r, 50));
      text = await Deno.readTextFile(file).catch(() => "");
    }
    const lines = text.split("\n").filter(Boolean);
    assert.equal(lines.length, 2);
    for (const line of lines) {
      assert.doesNotMatch(line, RAW_CONTROL);
      assert.ok(line.endsWith(String.raw`"r\x85s" "a\x9b31mb"`), line);
    }
  } finally {
    await d.stop();
  }
});
