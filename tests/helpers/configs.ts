/** Config texts shared by tests. */

/** A small valid config: one listener, one service, one handoff route. */
export const VALID_CONFIG = `listen:
  - { address: 127.0.0.1, port: 8443 }
services:
  svc: { socket: /tmp/svc.sock }
routes:
  - { name: p, match: { prefix: PRIV }, action: handoff, service: svc }
`;

/** The demo's shape on a port of the test's: HTTPS (self-signed) and PRIV
 * clients handed to the built-in echo service. */
export function demoConfig(port: number): string {
  return `
listen: [{ address: 127.0.0.1, port: ${port} }]
tls: { self_signed: true }
services: { echo: { builtin: echo } }
routes:
  - { name: web, match: { protocol: tls }, action: https }
  - { name: private, match: { prefix: PRIV }, action: handoff, service: echo }
`;
}
