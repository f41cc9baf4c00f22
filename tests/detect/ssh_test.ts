import assert from "node:assert/strict";
import { detectSsh } from "../../src/detect/ssh.ts";

const ssh = (s: string) => detectSsh(new TextEncoder().encode(s));

Deno.test("detectSsh() matches SSH-2.0 and SSH-1.99 identification strings", () => {
  assert.deepEqual(ssh("SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"), {
    verdict: "match",
    info: { protocol: "2.0", software: "OpenSSH_9.2p1" },
  });
  assert.deepEqual(ssh("SSH-1.99-Cisco-1.25\n"), {
    verdict: "match",
    info: { protocol: "1.99", software: "Cisco-1.25" },
  });
  // Decided on the prefix: the rest of the banner is not waited for.
  assert.equal(ssh("SSH-2.0-").verdict, "match");
});

Deno.test("detectSsh() waits on a prefix and refuses the rest", () => {
  for (const p of ["", "S", "SSH", "SSH-", "SSH-1", "SSH-1.9", "SSH-2.0"]) {
    assert.equal(ssh(p).verdict, "more", p);
  }
  for (const bad of ["SSH-1.5-old\r\n", "ssh-2.0-x", "GET / HTTP/1.1", "SSH-2.0-a\x00b"]) {
    assert.equal(ssh(bad).verdict, "no", JSON.stringify(bad));
  }
});
