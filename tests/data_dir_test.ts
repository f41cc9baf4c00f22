/** The data folder keeps the self-signed key: who else can write it, or
 * plant files in it, must not end up with the key. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { selfSignedCertIn } from "../src/actions/https/self_signed_cert.ts";

const KEY = "self-signed-key.pem";
const CERT = "self-signed-cert.pem";
const NOBODY = 65534;

/** The tmp names the key and cert were once written at (predictable). */
const oldTmp = (dir: string, file: string) => join(dir, `${file}.${Deno.pid}.tmp`);

async function withDirs(
  body: (dir: string, elsewhere: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "portmux-data-" });
  const elsewhere = await Deno.makeTempDir({ prefix: "portmux-elsewhere-" });
  try {
    await body(dir, elsewhere);
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(elsewhere, { recursive: true });
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** The key file is a plain file of ours, mode 0600, holding key. */
async function assertPrivateKey(dir: string, key: string): Promise<Deno.FileInfo> {
  const st = await Deno.lstat(join(dir, KEY));
  assert.ok(st.isFile && !st.isSymlink, "a plain file");
  assert.equal(st.uid, Deno.uid());
  assert.equal((st.mode ?? 0) & 0o777, 0o600);
  assert.equal(st.nlink, 1, "no other name for it (its tmp is gone)");
  assert.equal(await Deno.readTextFile(join(dir, KEY)), key);
  return st;
}

Deno.test("selfSignedCertIn() refuses a data folder that group or others can write", async () => {
  await withDirs(async (dir, elsewhere) => {
    for (const [mode, why] of [[0o777, "anyone"], [0o1777, "anyone"], [0o770, "group"]] as const) {
      await Deno.chmod(dir, mode);
      await assert.rejects(
        selfSignedCertIn(dir),
        (e: Error) => e.message.includes(`data folder ${dir} can be written by ${why}`),
      );
      assert.equal(await exists(join(dir, KEY)), false, "no key made");
    }
    if (Deno.uid() === 0) { // only root can give a folder away
      await Deno.chmod(dir, 0o700);
      await Deno.chown(dir, NOBODY, NOBODY);
      await assert.rejects(selfSignedCertIn(dir), /belongs to uid 65534/);
    }
    const made = join(elsewhere, "new", "data"); // a missing one is made private
    const pair = await selfSignedCertIn(made);
    assert.equal((await Deno.stat(made)).mode! & 0o777, 0o700);
    await assertPrivateKey(made, pair.key);
  });
});

Deno.test("selfSignedCertIn() writes no key through a symlink planted at a tmp name", async () => {
  await withDirs(async (dir, elsewhere) => {
    const captured = join(elsewhere, "captured.pem");
    await Deno.symlink(captured, oldTmp(dir, KEY)); // dangling: the write would create it
    await Deno.symlink(join(elsewhere, "cert.pem"), oldTmp(dir, CERT));
    const pair = await selfSignedCertIn(dir);
    assert.equal(await exists(captured), false, "nothing written through the link");
    assert.equal(await exists(join(elsewhere, "cert.pem")), false);
    await assertPrivateKey(dir, pair.key);
    assert.equal(await Deno.readTextFile(join(dir, CERT)), pair.cert);
  });
});

Deno.test("selfSignedCertIn() puts no key in a file planted at a tmp name", async () => {
  await withDirs(async (dir) => {
    await Deno.writeTextFile(oldTmp(dir, KEY), "", { mode: 0o644 });
    await Deno.chmod(oldTmp(dir, KEY), 0o644);
    const planted = await Deno.lstat(oldTmp(dir, KEY));
    const pair = await selfSignedCertIn(dir);
    const key = await Deno.lstat(join(dir, KEY));
    assert.notEqual(key.ino, planted.ino, "the key is not the planted file");
    await assertPrivateKey(dir, pair.key);
    assert.equal(await Deno.readTextFile(oldTmp(dir, KEY)), "", "the planted file got nothing");
  });
});

Deno.test("selfSignedCertIn() refuses a key that is a symlink, not ours, or not 0600", async () => {
  await withDirs(async (dir, elsewhere) => {
    const pair = await selfSignedCertIn(dir);
    assert.deepEqual(await selfSignedCertIn(dir), pair, "reused on the next start");
    const keyFile = join(dir, KEY);
    await Deno.chmod(keyFile, 0o644);
    await assert.rejects(selfSignedCertIn(dir), /self-signed-key\.pem can be used by others/);
    await Deno.chmod(keyFile, 0o600);
    if (Deno.uid() === 0) {
      await Deno.chown(keyFile, NOBODY, NOBODY);
      await assert.rejects(selfSignedCertIn(dir), /belongs to uid 65534/);
      await Deno.chown(keyFile, 0, 0);
    }
    const other = join(elsewhere, "other-key.pem");
    await Deno.rename(keyFile, other);
    await Deno.symlink(other, keyFile);
    await assert.rejects(selfSignedCertIn(dir), /self-signed-key\.pem is a symbolic link/);
  });
});
