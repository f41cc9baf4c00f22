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
  await privateDataDir(dataDir);
  const certFile = join(dataDir, "self-signed-cert.pem");
  const keyFile = join(dataDir, "self-signed-key.pem");
  const read = async () => ({
    key: await readPrivateKey(keyFile),
    cert: await Deno.readTextFile(certFile),
  });
  try {
    return await read();
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  const made = await makeSelfSignedCert();
  const keyTmp = tmpName(keyFile);
  const certTmp = tmpName(certFile);
  try {
    await writeNewFile(keyTmp, made.key, 0o600);
    await writeNewFile(certTmp, made.cert, 0o644);
    if (!await linkFirst(keyTmp, keyFile)) return await readWinner(read);
    await Deno.rename(certTmp, certFile);
    return made;
  } finally {
    await Deno.remove(keyTmp).catch(() => {});
    await Deno.remove(certTmp).catch(() => {});
  }
}

/** Links file to name unless name exists (false: another process won). */
async function linkFirst(file: string, name: string): Promise<boolean> {
  try {
    await Deno.link(file, name);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.AlreadyExists) return false;
    throw e;
  }
}

/** The winner's pair: it renames its cert into place just after its key. */
async function readWinner<T>(read: () => Promise<T>): Promise<T> {
  for (let i = 0; i < 100; i++) {
    try {
      return await read();
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  return await read();
}

/** Makes the data folder (mode 0700) if missing, and throws unless it is
 * fit for a private key: whoever can write it can plant or swap files in
 * it. The rule of service sockets' folders (src/actions/handoff/channels.ts),
 * stricter on groups: a key's folder is for its owner alone. */
async function privateDataDir(dir: string): Promise<void> {
  await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
  const problem = dataDirProblem(await Deno.stat(dir));
  if (problem) {
    throw new Error(
      `the data folder ${dir} ${problem}; it must belong to portmux's user (or root) ` +
        `and be writable by its owner only (chmod go-w ${dir})`,
    );
  }
}

function dataDirProblem(st: Deno.FileInfo): string | null {
  const mode = (st.mode ?? 0) & 0o777;
  if (!st.isDirectory) return "is not a folder";
  if (st.uid !== Deno.uid() && st.uid !== 0) {
    return `belongs to uid ${st.uid}, neither portmux's user nor root`;
  }
  if (mode & 0o002) return `can be written by anyone (mode ${mode.toString(8)})`;
  if (mode & 0o020) return `can be written by group ${st.gid} (mode ${mode.toString(8)})`;
  return null;
}

/** The key in path; throws unless it is a plain file of ours that no one
 * else can read (a link could point at someone else's key). */
async function readPrivateKey(path: string): Promise<string> {
  const st = await Deno.lstat(path); // NotFound: none yet
  const problem = keyFileProblem(st);
  if (problem) throw new Error(`the key ${path} ${problem}; delete it to have a new one made`);
  using file = await Deno.open(path);
  const opened = await file.stat(); // the file that lstat saw, not a swapped-in one
  if (opened.dev !== st.dev || opened.ino !== st.ino) {
    throw new Error(`the key ${path} was replaced while being read`);
  }
  return await new Response(file.readable).text();
}

function keyFileProblem(st: Deno.FileInfo): string | null {
  const mode = (st.mode ?? 0) & 0o777;
  if (st.isSymlink) return "is a symbolic link";
  if (!st.isFile) return "is not a file";
  if (st.uid !== Deno.uid()) return `belongs to uid ${st.uid}, not to portmux's user`;
  if (mode & 0o077) return `can be used by others (mode ${mode.toString(8)}); it must be 0600`;
  return null;
}

/** A temporary name beside file that no one can guess or have planted:
 * not only the pid, which a restarted container reuses. */
function tmpName(file: string): string {
  const random = [...crypto.getRandomValues(new Uint8Array(8))]
    .map((b) => b.toString(16).padStart(2, "0")).join("");
  return `${file}.${Deno.pid}-${random}.tmp`;
}

/** Writes a file that did not exist: createNew (O_CREAT | O_EXCL) fails on
 * anything already there, a symbolic link too, so nothing planted is
 * written through or linked into place. */
async function writeNewFile(path: string, text: string, mode: number): Promise<void> {
  await Deno.writeTextFile(path, text, { createNew: true, mode });
}
