/**
 * Real peers for routing tests: an sshd with throwaway keys, HAProxy in
 * front of portmux, and small upstream servers. Each runs on loopback and
 * is stopped by the test.
 */
import { join } from "node:path";
import { detectProxyHeader } from "../../src/detect/proxy_protocol.ts";
import { $, freePort } from "./daemon.ts";

export interface Peer {
  readonly port: number;
  stop(): Promise<void>;
}

/** Waits until something accepts on the port. */
export async function waitForPort(port: number, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      return;
    } catch (e) {
      if (Date.now() > end) throw new Error(`nothing listens on ${port}: ${e}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

// Deno.Command, not dax: the peers run through a test and are stopped with SIGTERM.
function spawn(cmd: string, args: string[]): Deno.ChildProcess {
  return new Deno.Command(cmd, { args, stdin: "null", stdout: "null", stderr: "piped" }).spawn();
}

async function stopChild(child: Deno.ChildProcess): Promise<void> {
  try {
    child.kill("SIGTERM");
  } catch { /* gone */ }
  await child.status;
  await child.stderr.cancel().catch(() => {});
}

/** An OpenSSH server on loopback that lets in one throwaway key. */
export async function startSshd(): Promise<Peer & { readonly key: string }> {
  const dir = await Deno.makeTempDir({ prefix: "portmux-sshd-" });
  await Deno.mkdir("/run/sshd", { recursive: true }); // privilege separation folder
  for (const name of ["host_key", "client_key"]) {
    const r = await $`ssh-keygen -q -t ed25519 -N '' -f ${join(dir, name)}`;
    if (r.code !== 0) throw new Error(`ssh-keygen: ${r.stderr}`);
  }
  await Deno.copyFile(join(dir, "client_key.pub"), join(dir, "authorized_keys"));
  const port = freePort();
  await Deno.writeTextFile(
    join(dir, "sshd_config"),
    [
      `Port ${port}`,
      "ListenAddress 127.0.0.1",
      `HostKey ${join(dir, "host_key")}`,
      `AuthorizedKeysFile ${join(dir, "authorized_keys")}`,
      "PasswordAuthentication no",
      "KbdInteractiveAuthentication no",
      "UsePAM no",
      "StrictModes no",
      "PidFile none",
      "",
    ].join("\n"),
  );
  const child = spawn("/usr/sbin/sshd", ["-D", "-e", "-f", join(dir, "sshd_config")]);
  await waitForPort(port);
  return { port, key: join(dir, "client_key"), stop: () => stopChild(child) };
}

/** HAProxy in TCP mode, forwarding its port to the targets (round robin,
 * health-checked) with PROXY v2. */
export async function startHaproxy(...targets: number[]): Promise<Peer> {
  const dir = await Deno.makeTempDir({ prefix: "portmux-haproxy-" });
  const port = freePort();
  const cfg = join(dir, "haproxy.cfg");
  await Deno.writeTextFile(
    cfg,
    [
      "defaults",
      "  mode tcp",
      "  timeout connect 5s",
      "  timeout client 30s",
      "  timeout server 30s",
      "frontend front",
      `  bind 127.0.0.1:${port}`,
      "  default_backend portmux",
      "backend portmux",
      "  balance roundrobin",
      ...targets.map((t, i) =>
        `  server portmux${i} 127.0.0.1:${t} send-proxy-v2 check check-send-proxy inter 500`
      ),
      "",
    ].join("\n"),
  );
  const child = spawn("haproxy", ["-db", "-f", cfg]);
  await waitForPort(port);
  return { port, stop: () => stopChild(child) };
}

/** A plain HTTP server (HTTP/1.1 and h2c) that names itself and the Host. */
export function startHttpUpstream(name: string): Peer {
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    (req) =>
      new Response(`${name} got ${new URL(req.url).pathname} for ${req.headers.get("host")}\n`),
  );
  return { port: server.addr.port, stop: () => server.shutdown() };
}

/** A TLS server with its own certificate: the far end of TLS passthrough. */
export function startTlsUpstream(name: string, cert: string, key: string): Peer {
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, cert, key, onListen: () => {} },
    () => new Response(`${name} terminated this TLS\n`),
  );
  return { port: server.addr.port, stop: () => server.shutdown() };
}

/** A TCP server that reads a PROXY header, answers with the client it
 * names, then echoes the rest of the stream. */
export function startProxyHeaderEcho(): Peer & { readonly seen: string[] } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const seen: string[] = [];
  const conns = new Set<Deno.Conn>();
  (async () => {
    for await (const conn of listener) {
      conns.add(conn);
      (async () => {
        const buf = new Uint8Array(4096);
        let got = new Uint8Array(0);
        try {
          for (;;) {
            const n = await conn.read(buf);
            if (n === null) return;
            got = new Uint8Array([...got, ...buf.subarray(0, n)]);
            const h = detectProxyHeader(got);
            if (h.verdict === "more") continue;
            const who = h.verdict === "match" && h.info.source
              ? `${h.info.source.address}:${h.info.source.port}`
              : "none";
            seen.push(who);
            const rest = h.verdict === "match" ? got.subarray(h.info.length) : got;
            await conn.write(new TextEncoder().encode(`client=${who} `));
            if (rest.length) await conn.write(rest);
            break;
          }
          for (;;) {
            const n = await conn.read(buf);
            if (n === null) break;
            await conn.write(buf.subarray(0, n));
          }
        } catch {
          /* client gone */
        } finally {
          conns.delete(conn);
          try {
            conn.close();
          } catch { /* closed */ }
        }
      })();
    }
  })();
  return {
    port: listener.addr.port,
    seen,
    stop() {
      listener.close();
      for (const c of conns) c.close();
      return Promise.resolve();
    },
  };
}
