/** The systemd units in config/systemd/, checked with systemd-analyze verify. */
import assert from "node:assert/strict";
import { basename, join } from "node:path";
import { $ } from "./helpers/daemon.ts";

const ROOT = new URL("../", import.meta.url).pathname.replace(/\/$/, "");
const UNITS = join(ROOT, "config/systemd");
const analyze = (await $`systemd-analyze --version`).code === 0;

/** The units with their install paths pointed at this checkout and this
 * Deno, so that verify can check the executables exist. */
async function installedCopies(edit: (text: string) => string = (t) => t): Promise<string[]> {
  const dir = await Deno.makeTempDir({ prefix: "portmux-units-" });
  const files: string[] = [];
  for (const entry of Deno.readDirSync(UNITS)) {
    const text = (await Deno.readTextFile(join(UNITS, entry.name)))
      .replaceAll("/usr/local/bin/deno", Deno.execPath())
      .replaceAll("/opt/portmux", ROOT);
    const file = join(dir, basename(entry.name));
    await Deno.writeTextFile(file, edit(text));
    files.push(file);
  }
  return files;
}

Deno.test({
  name: "the systemd units pass systemd-analyze verify, and a broken one does not",
  ignore: !analyze,
  async fn() {
    const files = await installedCopies();
    assert.deepEqual(files.map((f) => basename(f)).sort(), [
      "portmux-echo-example.service",
      "portmux.service",
      "portmux.socket",
    ]);
    const ok = await $`systemd-analyze verify --man=no ${files}`;
    assert.equal(ok.code, 0, ok.stderr);
    const ours = ok.stderr.split("\n").filter((l) => files.some((f) => l.includes(basename(f))));
    assert.deepEqual(ours, [], "no complaint about our units");

    // The check can fail: a misspelled key is reported.
    const broken = await installedCopies((t) =>
      t.replace("Restart=on-failure", "Restrat=on-failure")
    );
    const bad = await $`systemd-analyze verify --man=no ${broken}`;
    assert.match(bad.stderr, /portmux\.service:\d+: Unknown key 'Restrat' in section \[Service\]/);
  },
});

Deno.test("the daemon unit gets 443 from its socket unit: no capability, own user, no root", async () => {
  const unit = await Deno.readTextFile(join(UNITS, "portmux.service"));
  const socket = await Deno.readTextFile(join(UNITS, "portmux.socket"));
  assert.match(socket, /^ListenStream=0\.0\.0\.0:443$/m);
  assert.doesNotMatch(socket, /^Accept=yes/m);
  assert.match(unit, /^Requires=portmux\.socket$/m);
  assert.match(unit, /^User=portmux$/m);
  assert.doesNotMatch(unit, /^AmbientCapabilities=/m);
  assert.match(unit, /^CapabilityBoundingSet=$/m);
  assert.match(unit, /^KillMode=mixed$/m);
  assert.match(unit, /^NoNewPrivileges=yes$/m);
  assert.match(unit, /^Restart=on-failure$/m);
  assert.match(unit, /^ExecReload=\/bin\/kill -HUP \$MAINPID$/m);
  assert.match(unit, /^ExecStart=.*src\/launch\.ts$/m); // the launcher: preload and signals
});
