/*
 * What the express lane's files share inside the library (not exported:
 * the library is built with -fvisibility=hidden):
 *   lane_table.c    the routing table: its text, its capacities, the
 *                   limits it sets on waiting connections;
 *   lane_hello.c    the TLS ClientHello: is it one, and what it says;
 *   lane_decide.c   what the table decides on a connection's first bytes;
 *   lane_events.c   the event ring the daemon reads;
 *   express_lane.c  the lane: its thread, delivery, the runtime's accept,
 *                   and all of its state, under its lock. The others keep
 *                   none: it passes them what they work on.
 */
#ifndef PORTMUX_LANE_H
#define PORTMUX_LANE_H

#include <stdint.h>

#include "shim_internal.h"

/* ---------- the routing table (lane_table.c) ---------- */

enum kind { K_OPAQUE, K_TLS, K_PREFIX };
enum action { A_SLOW, A_HTTPS, A_HANDOFF };

#define X_MAX_RULES 64
#define X_MAX_NAMES 16
#define X_NAME 256
#define X_MAX_SITES 16
#define X_HEAD 1024

struct name_pattern {
  int suffix; /* 1: text is ".example.com", any name below it */
  char text[X_NAME];
};

struct rule {
  int route; /* index in the daemon's route list */
  enum kind kind;
  enum action action;
  int service; /* handoff: the service's id (pm_express_channels) */
  int head_len; /* handoff: the record up to the client address */
  char head[X_HEAD];
  int prefix_len;
  uint8_t prefix[X_NAME];
  int sni_count, alpn_count; /* -1: no such condition */
  struct name_pattern sni[X_MAX_NAMES];
  char alpn[X_MAX_NAMES][X_NAME];
};

struct site {
  int listener_fd;
  int name_count;
  struct name_pattern names[X_MAX_NAMES];
};

struct table {
  int peek_max, wait_ms, max_preread, max_connections, max_per_source;
  int generation; /* events say which table decided */
  int rule_count, site_count;
  struct rule rules[X_MAX_RULES];
  struct site sites[X_MAX_SITES];
};

/* The table in text (its lines: parse_line in lane_table.c); NULL with
 * *rc = -EINVAL for a text it cannot read (a bad line, or no limits line),
 * -ENOMEM. Freed with free(). */
struct table *parse_table(const char *text, int *rc);

/* Which limit closed a connection (an O_LIMIT event says it). */
enum limit { L_MAX_CONNECTIONS = 1, L_MAX_PREREAD, L_MAX_PER_SOURCE };

/* Waiting connections per source address (16 bytes, IPv4 mapped), for
 * max_per_source. */
#define SOURCE_BUCKETS 4096
struct source_counts {
  struct source_count *buckets[SOURCE_BUCKETS];
};

/* Counts by more (or fewer, by < 0) waiting connections from addr. */
void source_add(struct source_counts *s, const uint8_t addr[16], int by);

/* The limit of t a new connection from source goes over, with waiting
 * connections already waiting in the lane; 0 for none. */
enum limit over_limit(const struct table *t, int waiting, struct source_counts *s,
                      const uint8_t source[16]);

/* ---------- the ClientHello (lane_hello.c) ---------- */

enum verdict { V_NO, V_MATCH, V_MORE, V_SLOW };

/* What a hello told: the SNI (lower case, "" when none) and the ALPN list
 * (length-prefixed names, GREASE removed). */
struct hello {
  int has_sni;
  char sni[X_NAME];
  int alpn_len;
  uint8_t alpn[X_NAME];
};

/* Is this a TLS ClientHello? V_NO and V_MORE exactly as the daemon would
 * say them; V_MATCH only for a well-formed hello in one record (h filled
 * in); V_SLOW for everything else (the daemon decides). */
enum verdict tls_verdict(const uint8_t *b, int n, int limit, struct hello *h);

struct event;

/* What the hello told (h NULL: no hello was read), copied into the event's
 * fixed buffers: each copy is bounded by the buffer, whatever h holds. */
void describe_hello(struct event *e, const struct hello *h);

/* ---------- the decision (lane_decide.c) ---------- */

/* The rule that takes these bytes: its index, or DECIDE_MORE (more bytes
 * needed) or DECIDE_SLOW (the daemon decides). *tls_seen: 1 when h holds
 * the hello read. */
#define DECIDE_MORE (-V_MORE)
#define DECIDE_SLOW (-V_SLOW)
int decide(const struct table *t, const uint8_t *b, int n, struct hello *h, int *tls_seen);

/* The site for a hello's SNI; the first (the default) when the route was
 * decided without reading a hello (h NULL), as the daemon does. NULL: the
 * table has no site. */
const struct site *pick_site(const struct table *t, const struct hello *h);

/* ---------- the event ring (lane_events.c) ---------- */

#define X_ADDR PM_ADDR_TEXT

/* O_ACCEPT_FAILED and O_ACCEPT_RECOVERED are about a listener, not a
 * connection: error holds the errno, failures the number of failed accepts
 * before the one that worked. O_LIMIT: limit says which. */
enum outcome {
  O_HTTPS = 1,
  O_HANDED_OFF,
  O_LOST,
  O_ACCEPT_FAILED,
  O_LIMIT,
  O_RESET,
  O_ACCEPT_RECOVERED
};

/* Layout read by ffi/lane_records.ts (readExpressEvent). */
struct event {
  int32_t outcome, route, target, peeked;
  int32_t client_port, local_port, error, has_sni;
  float decide_ms;
  int32_t generation, limit, failures;
  char client[X_ADDR], local[X_ADDR];
  char sni[X_NAME];
  uint8_t alpn[X_NAME]; /* length-prefixed names, a 0 after the last */
};

/* What the lane did, in order, until the daemon takes it. */
struct event_ring {
  struct event *slots; /* made at the first event */
  int head, len;
  int64_t dropped; /* lost to a full ring since the daemon last took */
};

/* A new event in the ring, its outcome o and the rest 0 up to its texts;
 * NULL when the ring is full (counted as dropped) or cannot be made. */
struct event *new_event(struct event_ring *r, enum outcome o);

/* Copies up to max events to out (struct event each) and takes them from
 * the ring; returns how many. *dropped gets the events lost to a full ring
 * since the last call. */
int take_events(struct event_ring *r, uint8_t *out, int max, int32_t *dropped);

#endif
