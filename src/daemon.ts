/**
 * The daemon: start, reload and stop over its parts: the listeners and
 * their accept loops (src/accept/listeners.ts), the path of each connection
 * (src/route/connection_path.ts), the express lane (src/route/lane_control.ts),
 * the services' channels, the HTTPS sites, the admin listener, and the
 * runtime checks, whose fallbacks it applies.
 */
import { Shim } from "../ffi/shim.ts";
import { Admission } from "./accept/admission.ts";
import { inheritedListeners } from "./accept/held_listeners.ts";
import { Listeners } from "./accept/listeners.ts";
import { Preread } from "./accept/preread.ts";
import type { ActionContext } from "./actions/act.ts";
import { ChannelSet } from "./actions/handoff/channel_set.ts";
import { CurrentSites } from "./actions/https/current_sites.ts";
import type { Config } from "./config/config.ts";
import { type BuiltinService, startBuiltinServices } from "./ops/builtin_services.ts";
import { ConnectionLog } from "./ops/connection_log.ts";
import { declareDaemonMetrics } from "./ops/daemon_metrics.ts";
import type { Logger } from "./ops/log.ts";
import { Metrics } from "./ops/metrics.ts";
import { type Mechanism, RuntimeChecks, type Trigger } from "./ops/runtime_check.ts";
import { ThrottledLog } from "./ops/throttled_log.ts";
import { daemonHealth, WorkerAdmin } from "./ops/worker_admin.ts";
import { ConnectionPath, prereadCapacity } from "./route/connection_path.ts";
import { LaneControl } from "./route/lane_control.ts";

/** This process's place among --parallel workers; null when alone. */
type Worker = { index: number; count: number } | null;

/** With several workers, worker 0 runs the built-in services for all.
 * Under the supervisor, it runs them (they outlive a generation of
 * workers); else the first worker does. */
async function startBuiltins(
  config: Config,
  log: Logger,
  worker: Worker,
): Promise<BuiltinService[]> {
  const elsewhere = Deno.env.get("PORTMUX_BUILTINS") === "supervisor" ||
    (worker !== null && worker.index > 0);
  return elsewhere ? [] : await startBuiltinServices(config, log);
}

export class Daemon {
  #config: Config;
  readonly #log: Logger;
  readonly #https: CurrentSites;
  readonly #builtins: BuiltinService[];
  readonly metrics: Metrics;
  readonly #preread: Preread;
  readonly #admission: Admission;
  /** Proofs of the runtime internals the paths rely on (src/ops/runtime_check.ts). */
  readonly #runtime: RuntimeChecks;
  readonly #channels: ChannelSet;
  readonly #lane: LaneControl;
  readonly #path: ConnectionPath;
  readonly #listeners: Listeners;
  readonly #admin: WorkerAdmin;
  #stopping = false;
  #stopped: Promise<void> | null = null;

  private constructor(
    config: Config,
    log: Logger,
    shim: Shim,
    https: CurrentSites,
    builtins: BuiltinService[],
    metrics: Metrics,
    worker: Worker,
  ) {
    const held = inheritedListeners(shim);
    this.metrics = metrics;
    this.#config = config;
    this.#log = log;
    this.#https = https;
    this.#builtins = builtins;
    const preread = this.#preread = new Preread(shim, prereadCapacity(config));
    const admission = this.#admission = new Admission(config.limits);
    const throttled = new ThrottledLog(log);
    const connections = new ConnectionLog(log, metrics, throttled);
    declareDaemonMetrics(metrics, {
      waiting: () => preread.waiting + this.#lane.waiting,
      held: () => admission.total + this.#lane.waiting,
    });
    const runtime = this.#runtime = new RuntimeChecks(shim, log, metrics);
    const channels = this.#channels = new ChannelSet(shim, log, throttled, metrics);
    channels.update(config);
    const base = { shim, log, metrics, connections, preread };
    const lane = this.#lane = new LaneControl({
      ...base,
      channels,
      https: () => https.sites,
      works: () => runtime.ok("lane"),
    }, config);
    const path = this.#path = new ConnectionPath({
      ...base,
      runtime,
      lane,
      config: () => this.#config,
      actions: this.#actionContext(shim),
    });
    this.#listeners = new Listeners({
      ...base,
      admission,
      lane,
      reusePort: worker !== null,
      stopping: () => this.#stopping,
      serve: (conn, entry, lease) => path.serve(conn, entry, lease),
    }, held);
    const health = () => daemonHealth(this.#stopping, https.sites);
    this.#admin = new WorkerAdmin(log, metrics, health, worker?.index ?? 0);
  }

  /** What the actions use of the daemon (src/actions/act.ts). */
  #actionContext(shim: Shim): ActionContext {
    return {
      shim,
      metrics: this.metrics,
      https: () => this.#https.sites,
      channels: (service) => this.#channels.get(service),
      releaseWorks: () => this.#runtime.ok("release"),
      routeNamed: (name) =>
        this.#config.routes.find((r) => r.name === name) ??
          { name: "close", action: { kind: "close" } },
    };
  }

  /** Starts everything the config names; throws if any part cannot start. */
  static async start(config: Config, log: Logger, worker: Worker = null): Promise<Daemon> {
    const shim = new Shim();
    // Every waiting client is an fd: use what the hard limit allows.
    log.info("fd-limit", { open_files: shim.fds.raiseLimit() });
    const metrics = new Metrics();
    // A site started again has a new listener: the lane's table must say so.
    let daemon: Daemon | null = null;
    const https = new CurrentSites(shim, log, metrics, () => {
      if (daemon) daemon.#lane.setTable(daemon.#config);
    });
    await https.update(config);
    let builtins: BuiltinService[];
    try {
      builtins = await startBuiltins(config, log, worker);
    } catch (e) {
      await https.sites?.stop();
      throw e;
    }
    daemon = new Daemon(config, log, shim, https, builtins, metrics, worker);
    try {
      await daemon.#checkRuntime("start"); // before any client: fallbacks in place first
      https.sites?.sites[0]?.frontend.armAcceptFault(); // tests only (src/ops/faults.ts)
      daemon.#listeners.open(config);
      if (config.admin) daemon.#admin.start(config.admin);
    } catch (e) { // it may have accepted already: those drain
      await daemon.stop();
      throw e;
    } finally {
      // The config's listeners took theirs; none is left to keep open.
      daemon.#listeners.closeUnadopted();
    }
    return daemon;
  }

  /** Opens a handoff channel to each service instance; returns the services
   * that have none open (src/actions/handoff/channel_set.ts). */
  openChannels(): string[] {
    return this.#channels.openAll();
  }

  get httpsMode(): string | null {
    return this.#https.sites?.mode ?? null;
  }

  /** Proves the runtime internals the daemon relies on; a mechanism that
   * fails is turned to its fallback (src/ops/runtime_check.ts). */
  async #checkRuntime(trigger: Trigger): Promise<void> {
    await this.#runtime.run(trigger, {
      site: () => this.#https.sites?.sites[0]?.frontend ?? null,
      lane: () => this.#lane.lane,
      fallback: (m, error) => this.#runtimeFallback(m, error),
    });
  }

  /** fd and release are read per connection; inject and lane act now. */
  async #runtimeFallback(m: Mechanism, error: string): Promise<void> {
    if (m === "inject") await this.#https.bridge(this.#config, error);
    if (m === "lane") this.#lane.off(this.#config, this.#listeners.entries());
  }

  /**
   * Applies a new config to new connections: routes, services, limits,
   * listeners (opened, closed, or kept), the admin listener, the log
   * level, and HTTPS (a new internal server if the certificate, key or
   * handler changed; the old one keeps its sessions for drain_timeout_ms,
   * then stops). Established connections are not touched. Built-in
   * services and the data folder change only with a restart. Throws if a
   * part cannot be applied; what was applied before stays.
   */
  async reload(next: Config): Promise<void> {
    this.#listeners.checkHeld(next.listen);
    const old = await this.#https.update(next);
    try {
      this.#listeners.open(next);
    } catch (e) {
      if (old) await this.#https.restore(old); // undo: the old server goes on
      throw e;
    }
    if (old) setTimeout(() => old.stop(), next.drainTimeoutMs);
    this.#channels.update(next);
    this.#channels.openAll(); // new services: ready for the first
    this.#lane.setTable(next);
    this.#lane.apply(next, this.#listeners.entries());
    this.#admission.limits = next.limits;
    this.#preread.ensureCapacity(prereadCapacity(next));
    if (JSON.stringify(next.admin) !== JSON.stringify(this.#config.admin)) {
      await this.#admin.restart(next.admin);
    }
    this.#log.level = next.log.level;
    this.#config = next;
    await this.#checkRuntime("reload");
    this.#log.info("reloaded", {
      config: next.source,
      https: old ? "new certificate or handler" : "unchanged",
      listeners: this.#listeners.addresses(),
    });
  }

  /**
   * Stops gracefully: stops accepting; lets every connection in preread get
   * its decision (at the latest at its deadline, so a silent client cannot
   * hold the stop longer); lets HTTPS requests and relays finish for up to
   * drain_timeout_ms; then stops the parts.
   */
  stop(): Promise<void> {
    if (this.#stopped) return this.#stopped;
    this.#stopping = true;
    this.#stopped = this.#stop();
    return this.#stopped;
  }

  async #stop(): Promise<void> {
    await this.#listeners.closeAll();
    await this.#path.decided();
    await this.#preread.stop();
    const relays = this.#path.relays;
    const drained = Promise.allSettled([this.#https.sites?.stop(), ...relays]);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timedOut = new Promise<"timeout">((r) =>
      timer = setTimeout(() => r("timeout"), this.#config.drainTimeoutMs)
    );
    if ((await Promise.race([drained, timedOut])) === "timeout") {
      this.#log.warn("drain-timeout", {
        drain_timeout_ms: this.#config.drainTimeoutMs,
        relays_open: relays.size,
      });
    }
    clearTimeout(timer);
    for (const b of this.#builtins) await b.stop();
    this.#channels.close();
    await this.#admin.shutdown();
    this.#lane.close();
    this.#log.info("stats", this.metrics.snapshot());
  }
}
