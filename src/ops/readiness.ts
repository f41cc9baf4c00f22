/**
 * How a worker tells its supervisor that it serves (its listeners adopted,
 * HTTPS ready, handoff channels open): one line on a Unix socket whose
 * path the supervisor gives in PORTMUX_NOTIFY. An upgrade retires the old
 * generation only once every new worker said so.
 */
import { join } from "node:path";

export const NOTIFY_ENV = "PORTMUX_NOTIFY";

export interface ReadinessChannel {
  readonly path: string;
  /** Calls ready when the process pid says it serves. */
  expect(pid: number, ready: () => void): void;
  forget(pid: number): void;
  close(): void;
}

/** The supervisor's side: a socket in a private folder of its own. */
export async function readinessChannel(): Promise<ReadinessChannel> {
  const dir = await Deno.makeTempDir({ prefix: "portmux-notify-" }); // 0700
  const path = join(dir, "notify.sock");
  const listener = Deno.listen({ transport: "unix", path });
  const waiting = new Map<number, () => void>();
  (async () => {
    for await (const conn of listener) {
      (async () => {
        const text = await new Response(conn.readable).text().catch(() => "");
        const pid = Number(/^ready (\d+)$/m.exec(text)?.[1]);
        waiting.get(pid)?.();
        waiting.delete(pid);
      })();
    }
  })().catch(() => {/* closed */});
  return {
    path,
    expect: (pid, ready) => waiting.set(pid, ready),
    forget: (pid) => waiting.delete(pid),
    close() {
      listener.close();
      Deno.removeSync(dir, { recursive: true });
    },
  };
}

/** The worker's side: says it serves, if a supervisor asked to know. */
export async function notifyReady(): Promise<void> {
  const path = Deno.env.get(NOTIFY_ENV);
  if (!path) return;
  const conn = await Deno.connect({ transport: "unix", path });
  try {
    await conn.write(new TextEncoder().encode(`ready ${Deno.pid}\n`));
  } finally {
    conn.close();
  }
}
