import assert from "node:assert/strict";
import { formatText } from "../src/log.ts";

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
  const child = new Deno.Command("bash", {
    args: [
      "-c",
      `PORTMUX_LOG_FORMAT=text timeout -s INT 2 "${Deno.execPath()}" run -A "${main}" --config "${config}"`,
    ],
    stdout: "piped",
  });
  const out = new TextDecoder().decode((await child.output()).stdout);
  assert.match(out, /^\d\d:\d\d:\d\d\.\d{3} INFO {2}listening address=127\.0\.0\.1:\d+$/m);
  assert.match(out, /^\d\d:\d\d:\d\d\.\d{3} INFO {2}stopping signal=SIGINT/m);
});
