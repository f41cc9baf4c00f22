/**
 * A self-signed certificate for the demo, made with WebCrypto (ECDSA P-256)
 * and a minimal DER encoder (X.509 as in RFC 5280 §4.1), so the demo needs
 * no openssl. Kept in the data folder and reused on later starts.
 */
import { join } from "node:path";

function der(tag: number, ...parts: Uint8Array[]): Uint8Array {
  const body = concat(...parts);
  const n = body.length;
  const len = n < 0x80 ? [n] : n < 0x100 ? [0x81, n] : [0x82, n >> 8, n & 0xff];
  return concat(Uint8Array.of(tag, ...len), body);
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let at = 0;
  for (const p of parts) out.set(p, (at += p.length) - p.length);
  return out;
}

const seq = (...p: Uint8Array[]) => der(0x30, ...p);
const oid = (...bytes: number[]) => der(0x06, Uint8Array.from(bytes));
const utf8 = (s: string) => der(0x0c, new TextEncoder().encode(s));

/** A DER INTEGER from big-endian magnitude bytes (adds the sign octet). */
function integer(bytes: Uint8Array): Uint8Array {
  let i = 0;
  while (i < bytes.length - 1 && bytes[i] === 0) i++;
  const v = bytes.subarray(i);
  return der(0x02, v[0]! & 0x80 ? concat(Uint8Array.of(0), v) : v);
}

function utcTime(d: Date): Uint8Array {
  const s = d.toISOString(); // 2026-11-21T05:00:00.000Z
  const text = s.slice(2, 4) + s.slice(5, 7) + s.slice(8, 10) + s.slice(11, 13) +
    s.slice(14, 16) + s.slice(17, 19) + "Z";
  return der(0x17, new TextEncoder().encode(text));
}

const ECDSA_WITH_SHA256 = seq(oid(0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02));

function pem(label: string, bytes: Uint8Array): string {
  const b64 = btoa(String.fromCharCode(...bytes)).replace(/.{64}/g, "$&\n").trimEnd();
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

/** Makes a certificate for the given host names (default localhost) and
 * 127.0.0.1 and ::1, valid for a year. */
export async function makeSelfSignedCert(
  names: readonly string[] = ["localhost"],
): Promise<{ cert: string; key: string }> {
  const keys = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, [
    "sign",
    "verify",
  ]);
  const spki = new Uint8Array(await crypto.subtle.exportKey("spki", keys.publicKey));
  const name = seq(der(0x31, seq(oid(0x55, 0x04, 0x03), utf8(names[0] ?? "portmux demo"))));
  const now = Date.now();
  const altNames = seq(
    ...names.map((n) => der(0x82, new TextEncoder().encode(n))),
    der(0x87, Uint8Array.of(127, 0, 0, 1)),
    der(0x87, Uint8Array.of(...new Array(15).fill(0), 1)),
  );
  const extensions = der(
    0xa3,
    seq(seq(oid(0x55, 0x1d, 0x11), der(0x04, altNames))),
  );
  const tbs = seq(
    der(0xa0, integer(Uint8Array.of(2))),
    integer(crypto.getRandomValues(new Uint8Array(16))),
    ECDSA_WITH_SHA256,
    name,
    seq(utcTime(new Date(now - 3600_000)), utcTime(new Date(now + 365 * 86400_000))),
    name,
    spki,
    extensions,
  );
  const raw = new Uint8Array(
    await crypto.subtle.sign(
      { name: "ECDSA", hash: "SHA-256" },
      keys.privateKey,
      tbs as Uint8Array<ArrayBuffer>,
    ),
  );
  // WebCrypto gives r || s; X.509 wants ECDSA-Sig-Value (RFC 5480 §2.2).
  const sig = seq(integer(raw.subarray(0, 32)), integer(raw.subarray(32)));
  const cert = seq(tbs, ECDSA_WITH_SHA256, der(0x03, concat(Uint8Array.of(0), sig)));
  const pkcs8 = new Uint8Array(await crypto.subtle.exportKey("pkcs8", keys.privateKey));
  return { cert: pem("CERTIFICATE", cert), key: pem("PRIVATE KEY", pkcs8) };
}

/** The demo certificate in dataDir, made on first use. Several processes
 * may start at once (--parallel): the first to link its key into place
 * wins, and the others read its pair. */
export async function selfSignedCertIn(dataDir: string): Promise<{ cert: string; key: string }> {
  const certFile = join(dataDir, "self-signed-cert.pem");
  const keyFile = join(dataDir, "self-signed-key.pem");
  const read = async () => ({
    cert: await Deno.readTextFile(certFile),
    key: await Deno.readTextFile(keyFile),
  });
  try {
    return await read();
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  const made = await makeSelfSignedCert();
  await Deno.mkdir(dataDir, { recursive: true, mode: 0o700 });
  const tmp = (f: string) => `${f}.${Deno.pid}.tmp`;
  await Deno.writeTextFile(tmp(keyFile), made.key, { mode: 0o600 });
  await Deno.writeTextFile(tmp(certFile), made.cert);
  try {
    await Deno.link(tmp(keyFile), keyFile); // fails if another process won
    await Deno.rename(tmp(certFile), certFile);
    return made;
  } catch (e) {
    if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
    for (let i = 0; i < 100; i++) { // the winner renames its cert next
      try {
        return await read();
      } catch {
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    return await read();
  } finally {
    await Deno.remove(tmp(keyFile)).catch(() => {});
    await Deno.remove(tmp(certFile)).catch(() => {});
  }
}
