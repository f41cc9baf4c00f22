/** log: how much portmux logs (src/ops/log.ts). */
import { ConfigError, type Reader } from "./reader.ts";

export const LOG_LEVELS = ["debug", "info", "warn", "error"] as const;
export type LogLevel = typeof LOG_LEVELS[number];

export interface LogSettings {
  readonly level: LogLevel;
}

function isLogLevel(text: string): text is LogLevel {
  return (LOG_LEVELS as readonly string[]).includes(text);
}

export function readLog(r: Reader): LogSettings {
  r.keys(["log"], ["level"]);
  const level = r.string(["log", "level"]) ?? "info";
  if (!isLogLevel(level)) r.fail(["log", "level"], `expected one of ${LOG_LEVELS.join(", ")}`);
  return { level };
}

/** PORTMUX_LOG_LEVEL. */
export function logFromEnvironment(level: string): LogSettings {
  if (!isLogLevel(level)) {
    throw new ConfigError(`PORTMUX_LOG_LEVEL: expected one of ${LOG_LEVELS.join(", ")}`);
  }
  return { level };
}

export function describeLog(l: LogSettings): Record<string, unknown> {
  return { level: l.level };
}
