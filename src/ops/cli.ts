/**
 * The command line: what to do, with which config. Pure (arguments and
 * environment in, a command out), so every form is tested without a
 * daemon.
 *
 *   portmux [run] [--config FILE]    run the daemon
 *   portmux check [--config FILE]    validate, print the effective config
 *   portmux --help | --version
 *
 * The config file may also come from $PORTMUX_CONFIG; without either, the
 * embedded demo (config/default.yaml) is used.
 */
export const USAGE = `usage: portmux [run] [--config FILE]
       portmux check [--config FILE]
       portmux --help | --version

  run             run the daemon (the default)
  check           validate the config and print it as portmux reads it,
                  environment overrides applied; exit code 2 on a mistake
  --config FILE   the YAML config (default: $PORTMUX_CONFIG, else the
                  embedded demo, config/default.yaml); a relative path is
                  read from the folder the command was typed in
  --parallel N    worker processes (default: the number of CPUs); taken by
                  the launcher (deno task start, the single binary)

signals (to the launcher): SIGHUP reload, SIGUSR2 upgrade in place,
  SIGTERM or SIGINT stop gracefully (a second one, a second later: at once)

environment:
  PORTMUX_CONFIG     the config file, when --config is not given
  PORTMUX_LISTEN     replaces the config's listeners: "ADDR:PORT[,...]",
                     IPv6 in brackets ("[::]:443"); each keeps the first
                     configured listener's proxy_protocol setting
  PORTMUX_LOG_LEVEL  replaces log.level (debug, info, warn, error)
  PORTMUX_DATA_DIR   the data folder, when the config names none
  PORTMUX_LOG_FORMAT json or text (default: text on a terminal, else json)
`;

export type Command =
  | { readonly kind: "run" | "check"; readonly config: string | null }
  | { readonly kind: "help" | "version" }
  | { readonly kind: "error"; readonly message: string };

export function parseCommand(
  args: readonly string[],
  env: (name: string) => string | undefined,
): Command {
  let kind: "run" | "check" = "run";
  let config: string | null = null;
  const rest = [...args];
  if (rest[0] === "run" || rest[0] === "check") kind = rest.shift() as "run" | "check";
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i]!;
    if (a === "--help" || a === "-h") return { kind: "help" };
    if (a === "--version") return { kind: "version" };
    if (a === "--config") {
      const file = rest[++i];
      if (file === undefined || file === "") {
        return { kind: "error", message: "--config needs a file" };
      }
      config = file;
    } else if (a.startsWith("--config=")) config = a.slice("--config=".length);
    else return { kind: "error", message: `unknown argument "${a}"` };
  }
  return { kind, config: config ?? env("PORTMUX_CONFIG") ?? null };
}
