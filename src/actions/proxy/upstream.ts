/**
 * The proxy action: plain TCP to an upstream, both directions, half-close
 * kept, for services that cannot take fds (and TLS passthrough by SNI).
 * The peeked bytes were never consumed, so the upstream gets the client's
 * stream from its first byte, after an optional PROXY v2 header that
 * tells it who the client is.
 */
import type { Address } from "../../net/address.ts";
import type { Upstream } from "../../config/config.ts";
import { encodeProxyV2 } from "../../detect/proxy_protocol.ts";

const CONNECT_TIMEOUT_MS = 5000;

function closeQuietly(c: Deno.Conn): void {
  try {
    c.close();
  } catch { /* already closed */ }
}

/** Connects to the upstream (throws on refusal or after 5 s) and writes
 * the PROXY header if asked. */
export async function openUpstream(
  upstream: Upstream,
  proxyHeader: { client: Address; local: Address } | null,
): Promise<Deno.TcpConn> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const connecting = Deno.connect({ hostname: upstream.hostname, port: upstream.port });
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`no answer within ${CONNECT_TIMEOUT_MS} ms`)),
      CONNECT_TIMEOUT_MS,
    );
  });
  let conn: Deno.TcpConn;
  try {
    conn = await Promise.race([connecting, timeout]);
  } catch (e) {
    connecting.then(closeQuietly, () => {}); // a late connection is closed
    throw e;
  } finally {
    clearTimeout(timer);
  }
  if (proxyHeader) {
    try {
      const header = encodeProxyV2(proxyHeader.client, proxyHeader.local);
      for (let at = 0; at < header.length;) at += await conn.write(header.subarray(at));
    } catch (e) {
      closeQuietly(conn);
      throw e;
    }
  }
  return conn;
}
