import assert from "node:assert/strict";
import { join } from "node:path";
import { $, startDaemon } from "./helpers/daemon.ts";

const HTTPS_ONLY = (address = "127.0.0.1") => `
listen:
  - { address: "${address}", port: 0 }
tls: { self_signed: true }
routes:
  - { name: web, match: { protocol: tls }, action: https }
`;

/** curl through the daemon; returns body, HTTP version and client port. */
async function curl(url: string, ...flags: string[]) {
  const r = await $`curl -sk --max-time 10 -w ${"\n%{http_version} %{local_port}"} ${flags} ${url}`;
  const lines = r.stdout.trimEnd().split("\n");
  const [version, localPort] = lines.pop()!.split(" ");
  return { code: r.code, body: lines.join("\n"), version, localPort: Number(localPort) };
}

for (const inject of [true, false]) {
  const mode = inject ? "inject" : "bridge";

  Deno.test(`HTTPS (${mode}) answers curl over HTTP/1.1 and HTTP/2 with the real client address`, async () => {
    const d = await startDaemon({ config: HTTPS_ONLY(), inject });
    try {
      const h1 = await curl(`https://127.0.0.1:${d.port}/hello`, "--http1.1");
      assert.equal(h1.code, 0);
      assert.equal(h1.version, "1.1");
      assert.match(h1.body, new RegExp(`client: 127\\.0\\.0\\.1:${h1.localPort}\\n`));
      assert.match(h1.body, /path: \/hello/);
      assert.match(h1.body, new RegExp(`delivery: ${mode}`));

      const h2 = await curl(`https://127.0.0.1:${d.port}/two`, "--http2");
      assert.equal(h2.code, 0);
      assert.equal(h2.version, "2");
      assert.match(h2.body, new RegExp(`client: 127\\.0\\.0\\.1:${h2.localPort}\\n`));

      const line = await d.connection(h2.localPort);
      assert.equal(line.route, "web");
      assert.equal(line.outcome, "https");
      assert.equal(line.delivery, mode);
      if (!inject) {
        assert.ok(d.logs.some((l) => l.event === "https-bridge-fallback" && l.level === "warn"));
      }
    } finally {
      await d.stop();
    }
  });

  Deno.test(`HTTPS (${mode}) answers openssl s_client`, async () => {
    const d = await startDaemon({ config: HTTPS_ONLY(), inject });
    try {
      const r = await $`openssl s_client -connect 127.0.0.1:${d.port} -quiet -alpn http/1.1`
        .stdinText("GET /via-openssl HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
      assert.match(r.stdout, /HTTP\/1\.1 200 OK/);
      assert.match(r.stdout, /path: \/via-openssl/);
      assert.match(r.stdout, /client: 127\.0\.0\.1:\d+/);
    } finally {
      await d.stop();
    }
  });

  Deno.test(`HTTPS (${mode}): a direct connection to the internal port gets nothing served`, async () => {
    const d = await startDaemon({ config: HTTPS_ONLY(), inject });
    try {
      assert.notEqual(d.internalPort, 0);
      const direct = await curl(`https://127.0.0.1:${d.internalPort}/`, "--http1.1");
      assert.ok(!direct.body.includes("portmux: HTTPS is served here"), direct.body);
      if (inject) assert.notEqual(direct.code, 0); // dropped before TLS
      else assert.match(direct.body, /connect through portmux/); // 403, handler not run
      // ...and the daemon still serves its own clients afterwards.
      const ok = await curl(`https://127.0.0.1:${d.port}/`);
      assert.match(ok.body, /portmux: HTTPS is served here/);
    } finally {
      await d.stop();
    }
  });
}

Deno.test("HTTPS works on an IPv6 listener and reports the IPv6 client", async () => {
  const d = await startDaemon({ config: HTTPS_ONLY("::1") });
  try {
    const r = await curl(`https://[::1]:${d.port}/`, "--http2");
    assert.equal(r.code, 0);
    assert.match(r.body, new RegExp(`client: \\[::1\\]:${r.localPort}\\n`));
  } finally {
    await d.stop();
  }
});

Deno.test("a dual-stack listener shows IPv4 clients as IPv4", async () => {
  const d = await startDaemon({ config: HTTPS_ONLY("::") });
  try {
    const r = await curl(`https://127.0.0.1:${d.port}/`);
    assert.match(r.body, new RegExp(`client: 127\\.0\\.0\\.1:${r.localPort}\\n`));
    assert.equal((await d.connection(r.localPort)).client, `127.0.0.1:${r.localPort}`);
  } finally {
    await d.stop();
  }
});

Deno.test("https.handler serves a user module's default { fetch } with the real client address", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-handler-" });
  const module = join(dir, "app.ts");
  await Deno.writeTextFile(
    module,
    `export default {
      fetch(req: Request, info: Deno.ServeHandlerInfo<Deno.NetAddr>) {
        return new Response("app saw " + info.remoteAddr.hostname + ":" + info.remoteAddr.port +
          " " + new URL(req.url).pathname + "\\n", { status: 201 });
      },
    };\n`,
  );
  for (const inject of [true, false]) {
    const d = await startDaemon({
      config: HTTPS_ONLY() + `https: { handler: ${JSON.stringify(module)} }\n`,
      inject,
    });
    try {
      const r = await curl(`https://127.0.0.1:${d.port}/api`, "--http2");
      assert.equal(r.body, `app saw 127.0.0.1:${r.localPort} /api\n`);
    } finally {
      await d.stop();
    }
  }
});

Deno.test("an error thrown where nothing catches it (a handler's timer) is logged, and the daemon goes on", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-uncaught-" });
  const module = join(dir, "app.ts");
  await Deno.writeTextFile(
    module,
    `export default { fetch() {
      setTimeout(() => { throw new Error("boom from a timer"); }, 0);
      Promise.reject(new Error("boom from a promise"));
      return new Response("fine\\n");
    } };\n`,
  );
  const d = await startDaemon({
    config: HTTPS_ONLY() + `https: { handler: ${JSON.stringify(module)} }\n`,
  });
  try {
    assert.equal((await curl(`https://127.0.0.1:${d.port}/`)).body, "fine\n");
    await d.waitFor((l) =>
      l.event === "uncaught-error" && /boom from a timer/.test(String(l.error))
    );
    await d.waitFor((l) =>
      l.event === "uncaught-error" && /boom from a promise/.test(String(l.error))
    );
    assert.equal((await curl(`https://127.0.0.1:${d.port}/again`)).body, "fine\n");
  } finally {
    assert.equal((await d.stop()).code, 0);
  }
});
