/** Runs tests/services/load_clients.py (load from a process of its own). */

import { readLines } from "./lines.ts";

const LOAD = new URL("../services/load_clients.py", import.meta.url).pathname;

/** Starts load_clients.py; its JSON lines arrive in `lines`. */
export function loadClients(...args: (string | number)[]) {
  const child = new Deno.Command("python3", {
    args: [LOAD, ...args.map(String)],
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const lines: Record<string, unknown>[] = [];
  const reading = readLines(child.stdout, (line) => lines.push(JSON.parse(line)));
  return {
    lines,
    async waitFor(event: string, timeoutMs = 60_000) {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const found = lines.find((l) => l.event === event);
        if (found) return found;
        if (Date.now() > end) throw new Error(`load_clients.py: no ${event} in ${timeoutMs} ms`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    async done() {
      await child.status;
      await reading;
    },
  };
}
