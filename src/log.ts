/**
 * Logging: one JSON object per line on stdout, so that every decision can
 * be read back by a machine (the tests do) and by grep.
 */
import { LOG_LEVELS, type LogLevel } from "./config.ts";

export type Fields = Record<string, unknown>;

export class Logger {
  #min: number;
  constructor(level: LogLevel = "info") {
    this.#min = LOG_LEVELS.indexOf(level);
  }

  set level(level: LogLevel) {
    this.#min = LOG_LEVELS.indexOf(level);
  }

  #write(level: LogLevel, event: string, fields: Fields): void {
    if (LOG_LEVELS.indexOf(level) < this.#min) return;
    const line = JSON.stringify({ time: new Date().toISOString(), level, event, ...fields });
    console.log(line);
  }

  debug(event: string, fields: Fields = {}): void {
    this.#write("debug", event, fields);
  }
  info(event: string, fields: Fields = {}): void {
    this.#write("info", event, fields);
  }
  warn(event: string, fields: Fields = {}): void {
    this.#write("warn", event, fields);
  }
  error(event: string, fields: Fields = {}): void {
    this.#write("error", event, fields);
  }
}
