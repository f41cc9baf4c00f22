/** Small raw-socket clients for tests. */

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Reads until at least n bytes arrived (or the stream ends). */
export async function readAtLeast(conn: Deno.Conn, n: number, timeoutMs = 5000): Promise<string> {
  const buf = new Uint8Array(65536);
  let got = "";
  const timer = setTimeout(() => conn.close(), timeoutMs);
  try {
    while (got.length < n) {
      const r = await conn.read(buf);
      if (r === null) break;
      got += dec.decode(buf.subarray(0, r));
    }
  } catch {
    /* closed by the timer: return what came */
  } finally {
    clearTimeout(timer);
  }
  return got;
}

/** Writes all of bytes (a single write may take only part). */
export async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.length;) at += await conn.write(bytes.subarray(at));
}

/** Sends text, returns exactly the expected reply length (or less at EOF). */
export async function roundTrip(
  conn: Deno.Conn,
  text: string,
  replyLength: number,
  timeoutMs?: number,
) {
  await writeAll(conn, enc.encode(text));
  return await readAtLeast(conn, replyLength, timeoutMs);
}

/** True if the peer ended the connection (EOF or reset) within timeoutMs. */
export async function seesEnd(conn: Deno.Conn, timeoutMs = 5000): Promise<boolean> {
  const buf = new Uint8Array(1024);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    conn.close(); // a read pending then may end as if the peer had closed
  }, timeoutMs);
  try {
    for (;;) {
      const r = await conn.read(buf);
      if (r === null) return !timedOut;
    }
  } catch {
    return !timedOut; // reset: ended
  } finally {
    clearTimeout(timer);
  }
}

/** A connection on loopback: our client end, and the end a listener of
 * ours accepted. */
export async function connectedPair(): Promise<[Deno.TcpConn, Deno.TcpConn]> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    return await Promise.all([
      Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }),
      listener.accept(),
    ]);
  } finally {
    listener.close();
  }
}

export { dec, enc };
