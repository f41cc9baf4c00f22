/**
 * Metrics: counters with labels, gauges read when asked, and one
 * histogram, rendered in the Prometheus text format (version 0.0.4) for the
 * admin listener, and flattened for the `stats` log line at stop.
 */

type Labels = Readonly<Record<string, string>>;

const NEEDS_ESCAPE = /[\\"\n]/;

function labelValue(v: string): string {
  return NEEDS_ESCAPE.test(v)
    ? v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n")
    : v;
}

/** {k="v",...}; built on every count, so kept to plain string work. */
function labelText(labels: Labels): string {
  let text = "";
  for (const k in labels) text += `${text ? "," : ""}${k}="${labelValue(labels[k]!)}"`;
  return text ? `{${text}}` : "";
}

export interface CounterSeries {
  inc(by?: number): void;
}

interface Family {
  readonly help: string;
  readonly values: Map<string, number>; // label text -> value
}

/** Seconds from accept to decision; most are well under a millisecond. */
const DECIDE_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1, 5];

export class Metrics {
  readonly #counters = new Map<string, Family>();
  readonly #gauges = new Map<string, { help: string; read: () => number }>();
  readonly #decide = { counts: new Array<number>(DECIDE_BUCKETS.length).fill(0), sum: 0, count: 0 };

  /** Declares a counter, so that it is listed (at 0) before it is counted. */
  counter(name: string, help: string): void {
    if (!this.#counters.has(name)) this.#counters.set(name, { help, values: new Map() });
  }

  /** Adds to a counter; returns its new value for these labels. */
  inc(name: string, labels: Labels = {}, by = 1): number {
    const values = this.#family(name).values, key = labelText(labels);
    const n = (values.get(key) ?? 0) + by;
    values.set(key, n);
    return n;
  }

  /** A counter series with fixed labels, resolved once: hot paths count
   * with it and skip building the label text each time. */
  series(name: string, labels: Labels = {}): CounterSeries {
    const values = this.#family(name).values, key = labelText(labels);
    return {
      inc: (by = 1) => {
        values.set(key, (values.get(key) ?? 0) + by);
      },
    };
  }

  /** A counter's family, made (help: its name) if it was not declared. */
  #family(name: string): Family {
    let family = this.#counters.get(name);
    if (!family) this.#counters.set(name, family = { help: name, values: new Map() });
    return family;
  }

  gauge(name: string, help: string, read: () => number): void {
    this.#gauges.set(name, { help, read });
  }

  /** Records one classification time, in seconds. */
  observeDecide(seconds: number): void {
    const d = this.#decide;
    for (let i = 0; i < DECIDE_BUCKETS.length; i++) {
      if (seconds <= DECIDE_BUCKETS[i]!) d.counts[i]!++;
    }
    d.sum += seconds;
    d.count++;
  }

  /** The Prometheus text exposition. */
  render(): string {
    const out: string[] = [];
    for (const [name, f] of this.#counters) {
      out.push(`# HELP ${name} ${f.help}`, `# TYPE ${name} counter`);
      if (f.values.size === 0) out.push(`${name} 0`);
      for (const [labels, v] of f.values) out.push(`${name}${labels} ${v}`);
    }
    for (const [name, g] of this.#gauges) {
      out.push(`# HELP ${name} ${g.help}`, `# TYPE ${name} gauge`, `${name} ${g.read()}`);
    }
    const h = "portmux_decide_seconds";
    out.push(`# HELP ${h} Time from accept to the routing decision.`, `# TYPE ${h} histogram`);
    DECIDE_BUCKETS.forEach((le, i) =>
      out.push(`${h}_bucket{le="${le}"} ${this.#decide.counts[i]}`)
    );
    out.push(`${h}_bucket{le="+Inf"} ${this.#decide.count}`);
    out.push(`${h}_sum ${this.#decide.sum}`, `${h}_count ${this.#decide.count}`);
    return out.join("\n") + "\n";
  }

  /** Every counted series as "name{labels}": value (for the stats line). */
  snapshot(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [name, f] of this.#counters) {
      for (const [labels, v] of f.values) out[name + labels] = v;
    }
    return out;
  }
}
