/**
 * The config as a run reads it: the file given (--config or
 * $PORTMUX_CONFIG) or the embedded default, with the environment's
 * overrides applied. Shared by the daemon and its supervisor (which holds
 * the listening sockets the config names).
 */
import { applyEnvironment, type Config, loadConfigFile, parseConfig } from "./config.ts";

const DEFAULT_CONFIG = new URL("../../config/default.yaml", import.meta.url);

/** Throws ConfigError on a mistake. */
export async function loadConfig(
  file: string | null,
  env: (name: string) => string | undefined = (n) => Deno.env.get(n),
): Promise<Config> {
  const parsed = file
    ? loadConfigFile(file)
    : parseConfig(await Deno.readTextFile(DEFAULT_CONFIG), "embedded default config", ".");
  return applyEnvironment(parsed, env);
}
