import assert from "node:assert/strict";
import { join } from "node:path";
import { parse } from "yaml";
import { parseCommand } from "../src/ops/cli.ts";
import { VALID_CONFIG } from "./helpers/configs.ts";
import { $ } from "./helpers/daemon.ts";

const MAIN = new URL("../src/main.ts", import.meta.url).pathname;
const noEnv = () => undefined;
const VALID = VALID_CONFIG;

/** Runs `deno run src/main.ts ARGS` with these environment variables. */
async function portmux(args: string[], env: Record<string, string> = {}) {
  return await $`${Deno.execPath()} run -A ${MAIN} ${args}`.env(env);
}

async function configFile(text: string): Promise<string> {
  const file = join(await Deno.makeTempDir(), "portmux.yaml");
  await Deno.writeTextFile(file, text);
  return file;
}

Deno.test("parseCommand() reads run, check, --config, --help and --version", () => {
  assert.deepEqual(parseCommand([], noEnv), { kind: "run", config: null });
  assert.deepEqual(parseCommand(["run", "--config", "a.yaml"], noEnv), {
    kind: "run",
    config: "a.yaml",
  });
  assert.deepEqual(parseCommand(["check", "--config=b.yaml"], noEnv), {
    kind: "check",
    config: "b.yaml",
  });
  assert.deepEqual(
    parseCommand(["check"], (n) => n === "PORTMUX_CONFIG" ? "env.yaml" : undefined),
    {
      kind: "check",
      config: "env.yaml",
    },
  );
  assert.deepEqual(parseCommand(["--config", "x", "--help"], noEnv), { kind: "help" });
  assert.deepEqual(parseCommand(["--version"], noEnv), { kind: "version" });
  assert.deepEqual(parseCommand(["--confg", "x"], noEnv), {
    kind: "error",
    message: 'unknown argument "--confg"',
  });
  assert.deepEqual(parseCommand(["--config"], noEnv), {
    kind: "error",
    message: "--config needs a file",
  });
  assert.deepEqual(parseCommand(["stop"], noEnv), {
    kind: "error",
    message: 'unknown argument "stop"',
  });
});

Deno.test("portmux check prints the effective config, with environment overrides applied", async () => {
  const file = await configFile(VALID + "log: { level: warn }\n");
  const plain = await portmux(["check", "--config", file]);
  assert.equal(plain.code, 0, plain.stderr);
  const seen = parse(plain.stdout);
  assert.deepEqual(seen.listen, [{ address: "127.0.0.1", port: 8443 }]);
  assert.deepEqual(seen.routes, [{
    name: "p",
    match: { prefix: "PRIV" },
    action: "handoff",
    service: "svc",
    wait_ms: 1000,
    fallback: "close",
  }]);
  assert.equal(seen.log.level, "warn");
  assert.match(plain.stdout, new RegExp(`^# ${file}: valid\\n`));

  const overridden = await portmux(["check"], {
    PORTMUX_CONFIG: file,
    PORTMUX_LISTEN: "0.0.0.0:443,[::]:443",
    PORTMUX_LOG_LEVEL: "debug",
  });
  assert.equal(overridden.code, 0, overridden.stderr);
  const after = parse(overridden.stdout);
  assert.deepEqual(after.listen, [{ address: "0.0.0.0", port: 443 }, { address: "::", port: 443 }]);
  assert.equal(after.log.level, "debug");
});

Deno.test("portmux check and run refuse a bad config or override with exit code 2 and one line", async () => {
  const bad = await configFile(VALID.replace("8443", "http"));
  for (const command of ["check", "run"]) {
    const r = await portmux([command, "--config", bad]);
    assert.equal(r.code, 2);
    assert.equal(r.stdout, "");
    assert.equal(
      r.stderr,
      `portmux: config error: ${bad}:2: listen[0].port: expected a whole number from 0 to 65535, got "http"\n`,
    );
  }
  const good = await configFile(VALID);
  const listen = await portmux(["check", "--config", good], { PORTMUX_LISTEN: "localhost:443" });
  assert.equal(listen.code, 2);
  assert.match(
    listen.stderr,
    /^portmux: config error: PORTMUX_LISTEN: "localhost:443" is not ADDRESS:PORT/,
  );
  const level = await portmux(["check", "--config", good], { PORTMUX_LOG_LEVEL: "loud" });
  assert.equal(level.code, 2);
  assert.match(level.stderr, /PORTMUX_LOG_LEVEL: expected one of debug, info, warn, error/);
});

Deno.test("the command line refuses unknown arguments and answers --help and --version", async () => {
  const bad = await portmux(["--confg", "x"]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /unknown argument "--confg"/);
  const help = await portmux(["--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /usage: portmux \[run\] \[--config FILE\]/);
  assert.match(help.stdout, /PORTMUX_LISTEN/);
  const version = await portmux(["--version"]);
  assert.match(version.stdout, /^\d+\.\d+\.\d+\n$/);
});

Deno.test("the CLI says what a person needs: --parallel and the signals in --help, a YAML error with its excerpt, a relative config read from where the command was typed, the full path of a file not found", async () => {
  const help = await portmux(["--help"]);
  assert.match(help.stdout, /--parallel N/);
  assert.match(help.stdout, /SIGUSR2 upgrade in place/);

  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(
    join(dir, "bad.yaml"),
    "listen: [\n  { address: 127.0.0.1, port: 1 }\nroutes: []\n",
  );
  const yaml = await portmux(["check", "--config", join(dir, "bad.yaml")]);
  assert.equal(yaml.code, 2);
  assert.match(
    yaml.stderr,
    /bad\.yaml:3: invalid YAML: .* at line 3, column 1\n {2}\| {3}\{ address/,
  );
  assert.doesNotMatch(yaml.stderr, /column 1:\n/, "no summary cut at a colon");

  // deno task runs in the project's folder and says where the command was
  // typed in INIT_CWD: a relative --config is read from there.
  await Deno.writeTextFile(join(dir, "here.yaml"), VALID);
  const relative = await portmux(["check", "--config", "here.yaml"], { INIT_CWD: dir });
  assert.equal(relative.code, 0, relative.stderr);
  assert.match(relative.stdout, new RegExp(`^# ${join(dir, "here.yaml")}: valid`));
  const missing = await portmux(["check", "--config", "gone.yaml"], { INIT_CWD: dir });
  assert.equal(missing.code, 2);
  assert.match(
    missing.stderr,
    new RegExp(`${join(dir, "gone.yaml")}: cannot read the config file: no such file`),
  );
});
