/** Copying bytes between two TCP connections, both ways, half-close kept. */

export function closeQuietly(c: Deno.Conn): void {
  try {
    c.close();
  } catch { /* already closed */ }
}

/** Copies one direction until end of stream, then half-closes the other
 * side (its reader sees EOF; the other direction goes on). On an error,
 * closes both so the opposite copy ends too. */
async function copy(from: Deno.TcpConn, to: Deno.TcpConn): Promise<void> {
  const buf = new Uint8Array(64 * 1024);
  try {
    for (;;) {
      const n = await from.read(buf);
      if (n === null) break;
      for (let at = 0; at < n;) at += await to.write(buf.subarray(at, n));
    }
    await to.closeWrite();
  } catch {
    closeQuietly(from);
    closeQuietly(to);
  }
}

/** Copies a to b and b to a until both directions ended; closes both. */
export async function pipeBoth(a: Deno.TcpConn, b: Deno.TcpConn): Promise<void> {
  a.setNoDelay(true);
  b.setNoDelay(true);
  try {
    await Promise.all([copy(a, b), copy(b, a)]);
  } finally {
    closeQuietly(a);
    closeQuietly(b);
  }
}
