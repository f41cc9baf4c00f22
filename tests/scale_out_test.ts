/**
 * Scale-out past one machine (docs/deploy.md): an L4 load balancer that
 * speaks PROXY protocol v2 (HAProxy here) in front of two portmux
 * instances. Both serve, and each sees every client's own address.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { $, startDaemon } from "./helpers/daemon.ts";
import { roundTrip } from "./helpers/client.ts";
import { startHaproxy } from "./helpers/peers.ts";
import { startPythonService } from "./helpers/python_service.ts";

const INSTANCE = (socket: string) => `
listen: [{ address: 127.0.0.1, port: 0, proxy_protocol: { trusted: [127.0.0.1] } }]
tls: { self_signed: true }
services: { app: { socket: ${JSON.stringify(socket)} } }
routes:
  - { name: web, match: { protocol: tls }, action: https }
  - { name: private, match: { prefix: PRIV }, action: handoff, service: app }
`;

Deno.test("HAProxy with PROXY v2 in front of two portmux instances: both serve, clients keep their address", async () => {
  const dir = await Deno.makeTempDir({ prefix: "portmux-scale-" });
  const service = await startPythonService(join(dir, "app.sock"));
  const a = await startDaemon({ dataDir: dir, config: INSTANCE(service.socket) });
  const b = await startDaemon({ dataDir: dir, config: INSTANCE(service.socket) });
  const lb = await startHaproxy(a.port, b.port);
  try {
    for (let i = 0; i < 6; i++) {
      const r = await $`curl -sk -w '%{local_port}' https://127.0.0.1:${lb.port}/`;
      const port = r.stdout.match(/(\d+)$/)![1];
      assert.match(r.stdout, new RegExp(`client: 127\\.0\\.0\\.1:${port}\\n`), "the real client");
    }
    const clients: number[] = [];
    for (let i = 0; i < 4; i++) {
      const c = await Deno.connect({ hostname: "127.0.0.1", port: lb.port });
      assert.equal(await roundTrip(c, `PRIV ${i}`, 11), `ECHO:PRIV ${i}`);
      clients.push(c.localAddr.port);
      c.close();
    }
    await service.waitForRecords(4);
    assert.deepEqual(
      service.records.map((r) => (r.client as { port: number }).port).sort(),
      clients.sort(),
      "each handoff record names the client, not HAProxy",
    );
    const served = (d: typeof a) =>
      d.logs.filter((l) =>
        l.event === "connection" && (l.outcome === "https" || l.outcome === "handed-off")
      )
        .length;
    await a.waitFor(() => served(a) + served(b) >= 10);
    assert.ok(served(a) >= 3 && served(b) >= 3, `a served ${served(a)}, b served ${served(b)}`);
  } finally {
    await lb.stop();
    await a.stop();
    await b.stop();
    await service.stop();
  }
});
