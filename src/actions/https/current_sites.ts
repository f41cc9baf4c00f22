/**
 * The HTTPS sites in service: started from the config, replaced when a
 * reload changes their certificate, key or handler, or started again
 * bridged when injection fails its runtime check.
 */
import type { Shim } from "../../../ffi/shim.ts";
import type { Config } from "../../config/config.ts";
import type { Logger } from "../../ops/log.ts";
import type { Metrics } from "../../ops/metrics.ts";
import { stopInjecting } from "./frontend.ts";
import { type HttpsMaterial, HttpsSites, readHttps } from "./sites.ts";

export class CurrentSites {
  #sites: HttpsSites | null = null;
  readonly #shim: Shim;
  readonly #log: Logger;
  readonly #metrics: Metrics;
  readonly #changed: () => void;

  /** changed: called when a site's listener is new (a site started again,
   * or the sites bridged): the express lane's table must name it. */
  constructor(shim: Shim, log: Logger, metrics: Metrics, changed: () => void) {
    this.#shim = shim;
    this.#log = log;
    this.#metrics = metrics;
    this.#changed = changed;
  }

  /** The sites in service; null: the config has no HTTPS. */
  get sites(): HttpsSites | null {
    return this.#sites;
  }

  /** Starts new sites if config changed what they are made from; returns
   * the ones replaced (null: none), which still run. */
  async update(config: Config): Promise<HttpsSites | null> {
    const material = await readHttps(config);
    if (material?.madeFrom === this.#sites?.madeFrom) return null;
    const old = this.#sites;
    this.#sites = material && await this.#start(material);
    return old;
  }

  /** Undoes update: stops the new sites and puts old back. */
  async restore(old: HttpsSites): Promise<void> {
    await this.#sites?.stop();
    this.#sites = old;
  }

  /** Starts the sites again, bridged; the injecting ones drain. */
  async bridge(config: Config, why: string): Promise<void> {
    stopInjecting(why);
    const material = await readHttps(config);
    const old = this.#sites;
    this.#sites = material && await this.#start(material);
    this.#changed(); // no injecting site: the lane leaves HTTPS to the daemon
    old?.stop();
  }

  #start(material: HttpsMaterial): Promise<HttpsSites> {
    return HttpsSites.start(material, this.#shim, this.#log, this.#metrics, this.#changed);
  }
}
