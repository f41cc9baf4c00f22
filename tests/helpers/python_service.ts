/** Runs tests/services/recv_fds_service.py and reads the records it got. */

import { readLines } from "./lines.ts";

const SCRIPT = new URL("../services/recv_fds_service.py", import.meta.url).pathname;

export interface PythonService {
  readonly socket: string;
  /** Its process, for signals (SIGSTOP, SIGCONT). */
  readonly pid: number;
  readonly records: Record<string, unknown>[];
  /** Waits until n records have arrived. */
  waitForRecords(n: number, timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
}

export async function startPythonService(
  socket: string,
  ...flags: string[]
): Promise<PythonService> {
  const child = new Deno.Command("python3", {
    args: ["-u", SCRIPT, socket, ...flags],
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const records: Record<string, unknown>[] = [];
  let ready!: () => void;
  const isReady = new Promise<void>((r) => ready = r);
  const reading = readLines(child.stdout, (line) => {
    const msg = JSON.parse(line);
    if (msg.event === "ready") ready();
    else records.push(msg.record);
  });
  await isReady;
  return {
    socket,
    pid: child.pid,
    records,
    async waitForRecords(n, timeoutMs = 10_000) {
      const end = Date.now() + timeoutMs;
      while (records.length < n) {
        if (Date.now() > end) throw new Error(`only ${records.length} of ${n} records arrived`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    async stop() { // safe to call again
      try {
        child.kill("SIGKILL");
      } catch { /* gone */ }
      await child.status;
      await reading;
    },
  };
}
