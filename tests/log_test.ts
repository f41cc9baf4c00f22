import assert from "node:assert/strict";
import { formatJson, formatText } from "../src/ops/log.ts";
import { $ } from "./helpers/daemon.ts";
import { readLines } from "./helpers/lines.ts";

Deno.test("formatText() writes time, level, event and key=value pairs, quoting where needed", () => {
  const line = formatText({
    time: "2026-11-21T06:22:23.456Z",
    level: "info",
    event: "connection",
    client: "127.0.0.1:5000",
    route: "web",
    alpn: ["h2", "http/1.1"],
    error: "not listening (ENOENT)",
    ms: 0.41,
  });
  assert.equal(
    line,
    '06:22:23.456 INFO  connection client=127.0.0.1:5000 route=web alpn=["h2","http/1.1"] error="not listening (ENOENT)" ms=0.41',
  );
});

Deno.test("PORTMUX_LOG_FORMAT=text makes the daemon's lines human-readable", async () => {
  const main = new URL("../src/main.ts", import.meta.url).pathname;
  const dir = await Deno.makeTempDir();
  const config = `${dir}/c.yaml`;
  await Deno.writeTextFile(config, "listen: [{ address: 127.0.0.1, port: 0 }]\n");
  const out = (await $`timeout -s INT 2 ${Deno.execPath()} run -A ${main} --config ${config}`
    .env({ PORTMUX_LOG_FORMAT: "text" })).stdout;
  assert.match(out, /^\d\d:\d\d:\d\d\.\d{3} INFO {2}listening address=127\.0\.0\.1:\d+$/m);
  assert.match(out, /^\d\d:\d\d:\d\d\.\d{3} INFO {2}stopping signal=SIGINT/m);
});

// A terminal acts on these instead of showing them: none may reach it raw
// (a log line's own \n aside).
// deno-lint-ignore no-control-regex
const RAW_CONTROL = /[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202e]/;

Deno.test("formatText() quotes and escapes control characters (C0, DEL, C1) in keys and values", () => {
  const line = formatText({
    time: "2026-11-21T06:22:23.456Z",
    level: "info",
    event: "connection",
    host: "a\x1b[31mb\x7f\u009b31m\u0085c",
    sni: "x\u202ey",
    "k\u009b2J": "v",
    "k\x1b": 1,
    alpn: ["h2\x7f", "\u009b31m"],
    nested: { "\u0090key": "\x07" },
  });
  assert.doesNotMatch(line, RAW_CONTROL);
  assert.equal(
    line,
    "06:22:23.456 INFO  connection " +
      String.raw`host="a\u001b[31mb\u007f\u009b31m\u0085c" sni="x\u202ey" "k\u009b2J"=v ` +
      String.raw`"k\u001b"=1 alpn=["h2\u007f","\u009b31m"] nested={"\u0090key":"\u0007"}`,
  );
});

Deno.test("formatJson() escapes DEL and C1 too (JSON.stringify does not) and parses back the same", () => {
  const entry = {
    time: "2026-11-21T06:22:23.456Z",
    level: "info",
    event: "connection",
    host: "a\x1b[31mb\x7f\u009b31m\u0085c\u2028",
    "k\u009b": ["\u009b"],
  };
  const line = formatJson(entry);
  assert.doesNotMatch(line, RAW_CONTROL);
  assert.ok(line.includes(String.raw`"host":"a\u001b[31mb\u007f\u009b31m\u0085c\u2028"`), line);
  assert.deepEqual(JSON.parse(line), entry);
});

Deno.test("a hostile Host header reaches the daemon's log escaped, in text and in JSON", async () => {
  const main = new URL("../src/main.ts", import.meta.url).pathname;
  const dir = await Deno.makeTempDir();
  const config = `${dir}/c.yaml`;
  await Deno.writeTextFile(
    config,
    "listen: [{ address: 127.0.0.1, port: 0 }]\n" +
      // A route on the Host, so that the daemon reads it and logs it.
      "routes: [{ name: web, match: { protocol: http, host: x.example }, action: close }]\n",
  );
  // The bytes as a client sends them: ESC, DEL, an 8-bit CSI (0x9b), NEL.
  const request = Uint8Array.from(
    "GET / HTTP/1.1\r\nHost: a\x1b[31mb\x7f\x9b31m\x85c\r\n\r\n",
    (c) => c.charCodeAt(0),
  );
  for (const format of ["text", "json"]) {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", main, "--config", config],
      env: { PORTMUX_LOG_FORMAT: format, PORTMUX_DATA_DIR: dir },
      stdout: "piped",
      stderr: "null",
    }).spawn();
    const lines: string[] = [];
    const listening = Promise.withResolvers<number>();
    const logged = Promise.withResolvers<void>();
    const done = readLines(child.stdout, (line) => {
      lines.push(line);
      const port = /listening.*127\.0\.0\.1:(\d+)/.exec(line)?.[1];
      if (port) listening.resolve(Number(port));
      if (line.includes("connection") && line.includes("host")) logged.resolve();
    });
    // Fails instead of waiting for ever if the daemon stops first.
    const ended = done.then(() => Promise.reject(new Error(`exited:\n${lines.join("\n")}`)));
    try {
      const port = await Promise.race([listening.promise, ended]);
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      await conn.write(request);
      await conn.read(new Uint8Array(1)).catch(() => null); // closed by the daemon
      conn.close();
      await Promise.race([logged.promise, ended]);
    } finally {
      child.kill("SIGINT");
      await child.status;
      await done;
    }
    const line = lines.find((l) => l.includes("connection"))!;
    assert.doesNotMatch(lines.join("\n"), RAW_CONTROL, `${format}: ${Deno.inspect(line)}`);
    const escaped = String.raw`"a\u001b[31mb\u007f\u009b31m\u0085c"`;
    assert.ok(line.includes(format === "text" ? `host=${escaped}` : `"host":${escaped}`), line);
  }
});
