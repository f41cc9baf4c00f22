/**
 * The daemon's own metrics, declared at start so that /metrics lists each
 * (at 0) before it is first counted; docs/operations.md names them all.
 */
import type { Metrics } from "./metrics.ts";

/** What the gauges read when asked. */
export interface DaemonGauges {
  /** Connections waiting for their first bytes (the daemon's and the lane's). */
  readonly waiting: () => number;
  /** Connections held: in preread, relayed, or in the lane. */
  readonly held: () => number;
}

export function declareDaemonMetrics(m: Metrics, gauges: DaemonGauges): void {
  m.counter("portmux_connections_total", "Connections by route and outcome.");
  m.counter("portmux_limit_hits_total", "Connections closed because a limit was reached.");
  m.counter("portmux_accept_failures_total", "Accept errors other than a client gone.");
  m.counter("portmux_accept_client_gone_total", "Clients that reset before accept finished.");
  m.counter("portmux_handoff_fallbacks_total", "Handoffs no instance took, by service.");
  m.counter("portmux_handoff_waits_total", "Handoffs that waited for an instance (once each).");
  m.counter("portmux_handoff_instance_down_total", "Times an instance was found down.");
  m.counter("portmux_handoff_channel_full_total", "Times a channel was full.");
  m.counter("portmux_handoff_stalled_total", "Channels found stalled (unread), by service.");
  m.counter("portmux_handoff_stalled_closed_total", "Stalled channels closed, by service.");
  m.counter("portmux_https_requests_total", "HTTPS requests answered, by status code.");
  m.counter("portmux_uncaught_errors_total", "Errors nothing caught; logged, and survived.");
  m.counter("portmux_https_site_down_total", "Times an HTTPS site's server stopped, by site.");
  m.gauge(
    "portmux_preread_waiting",
    "Connections waiting for their first bytes.",
    gauges.waiting,
  );
  m.gauge("portmux_connections_held", "Connections held (preread and relays).", gauges.held);
  m.gauge(
    "portmux_open_fds",
    "Open file descriptors of the daemon.",
    () => [...Deno.readDirSync("/proc/self/fd")].length,
  );
}
