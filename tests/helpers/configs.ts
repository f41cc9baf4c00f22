/** Config texts shared by tests. */

/** A small valid config: one listener, one service, one handoff route. */
export const VALID_CONFIG = `listen:
  - { address: 127.0.0.1, port: 8443 }
services:
  svc: { socket: /tmp/svc.sock }
routes:
  - { name: p, match: { prefix: PRIV }, action: handoff, service: svc }
`;
