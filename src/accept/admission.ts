/**
 * Admission: how many connections the daemon holds, in all and per client
 * address, against the configured limits. Each admitted connection gets a
 * lease, released once when the daemon lets go of it.
 */
import type { Limits } from "../config/config.ts";

export type LimitName = "max_connections" | "max_per_source" | "max_preread";

export class Lease {
  #released = false;
  constructor(readonly admission: Admission, public source: string) {}

  /** Counts the connection under another source (the client named by a
   * PROXY header instead of the load balancer); the limit it would break,
   * or null when moved. */
  moveTo(source: string): LimitName | null {
    if (this.#released || source === this.source) return null;
    const refusal = this.admission.perSourceFull(source) ? "max_per_source" : null;
    if (refusal) return refusal;
    this.admission.count(this.source, -1);
    this.admission.count(source, +1);
    this.source = source;
    return null;
  }

  release(): void {
    if (this.#released) return;
    this.#released = true;
    this.admission.count(this.source, -1);
    this.admission.total--;
  }
}

export class Admission {
  total = 0;
  readonly #perSource = new Map<string, number>();
  /** Replaced by a reload; counts are kept. */
  constructor(public limits: Limits) {}

  perSourceFull(source: string): boolean {
    return (this.#perSource.get(source) ?? 0) >= this.limits.maxPerSource;
  }

  count(source: string, by: number): void {
    const n = (this.#perSource.get(source) ?? 0) + by;
    if (n > 0) this.#perSource.set(source, n);
    else this.#perSource.delete(source);
  }

  /**
   * Admits a new connection, or names the limit it would break. The per
   * source limit is skipped for a trusted load balancer (its clients are
   * counted once their PROXY header names them). heldElsewhere: connections
   * the express lane holds, which count against max_connections too.
   */
  admit(
    source: string,
    waitingInPreread: number,
    trustedPeer: boolean,
    heldElsewhere = 0,
  ): Lease | LimitName {
    if (this.total + heldElsewhere >= this.limits.maxConnections) return "max_connections";
    if (waitingInPreread >= this.limits.maxPreread) return "max_preread";
    if (!trustedPeer && this.perSourceFull(source)) return "max_per_source";
    this.total++;
    this.count(source, +1);
    return new Lease(this, source);
  }
}
