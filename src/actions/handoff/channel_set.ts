/**
 * The handoff channels of the configured services, by service name: kept
 * by a reload where a service is the same, and kept ready while the express
 * lane sends on them.
 */
import type { Shim } from "../../../ffi/shim.ts";
import type { Config, Service } from "../../config/config.ts";
import type { Logger } from "../../ops/log.ts";
import type { Metrics } from "../../ops/metrics.ts";
import type { ThrottledLog } from "../../ops/throttled_log.ts";
import { ServiceChannels, shortestWait } from "./channels.ts";

const CHANNEL_CHECK_MS = 250;

function sameService(a: Service, b: Service): boolean {
  const shape = (s: Service) => JSON.stringify([s.sockets, s.uid, s.gid, s.pidFile, s.builtin]);
  return shape(a) === shape(b);
}

export class ChannelSet {
  readonly #channels = new Map<string, ServiceChannels>();
  readonly #shim: Shim;
  readonly #log: Logger;
  readonly #throttled: ThrottledLog;
  readonly #metrics: Metrics;
  #check: ReturnType<typeof setInterval> | undefined;

  constructor(shim: Shim, log: Logger, throttled: ThrottledLog, metrics: Metrics) {
    this.#shim = shim;
    this.#log = log;
    this.#throttled = throttled;
    this.#metrics = metrics;
  }

  /** The channels of a service the config names. */
  get(service: string): ServiceChannels {
    return this.#channels.get(service)!;
  }

  /** The id under which the express lane knows each service's channels. */
  ids(): Map<string, number> {
    return new Map([...this.#channels].map(([name, c]) => [name, c.id]));
  }

  /** Channels for the config's services: kept where a service is the same,
   * new where it changed, closed where it is gone. */
  update(config: Config): void {
    for (const [name, channels] of this.#channels) {
      const next = config.services.get(name);
      if (!next || !sameService(next, channels.service)) {
        channels.close();
        this.#channels.delete(name);
      }
    }
    for (const service of config.services.values()) {
      if (!this.#channels.has(service.name)) {
        this.#channels.set(
          service.name,
          new ServiceChannels(service, this.#shim, this.#log, this.#throttled, this.#metrics),
        );
      }
    }
    // Unread for longer than the routes' wait, a channel is stalled.
    for (const c of this.#channels.values()) c.waitMs = shortestWait(config.routes, c.service.name);
  }

  /** Opens a channel to each service instance (one try: a service not
   * running is tried again with backoff as it is used); returns the
   * services that have none open. */
  openAll(): string[] {
    return [...this.#channels].filter(([, c]) => !c.openAll()).map(([name]) => name);
  }

  /** The lane sends on the channels without asking: keep them ready. */
  keepReady(): void {
    this.#check = setInterval(() => {
      for (const c of this.#channels.values()) c.maintain();
    }, CHANNEL_CHECK_MS);
  }

  stopKeepingReady(): void {
    clearInterval(this.#check);
  }

  close(): void {
    this.stopKeepingReady();
    for (const c of this.#channels.values()) c.close();
  }
}
