/*
 * The express lane's event ring (lane.h): what the lane did with each
 * connection (and with its listeners), kept for the daemon, which reads
 * them in batches to log each connection's line and count it. The lane
 * holds the ring, under its lock; the record's layout is checked by
 * ffi/lane.ts at load.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "lane.h"

/* 4096 events: 40 ms of 100,000 connections/s, while the daemon reads them
 * every 10 ms. Touched once when made, so that its memory is there from
 * the start and does not look like growth under load. */
#define RING_CAP 4096

struct event *new_event(struct event_ring *r, enum outcome o) {
  if (!r->slots) {
    if (!(r->slots = malloc(sizeof *r->slots * RING_CAP))) return NULL;
    memset(r->slots, 0, sizeof *r->slots * RING_CAP);
  }
  if (r->len == RING_CAP) {
    r->dropped++;
    return NULL;
  }
  struct event *e = &r->slots[(r->head + r->len++) % RING_CAP];
  memset(e, 0, offsetof(struct event, client) + 1);
  e->outcome = o;
  return e;
}

int take_events(struct event_ring *r, uint8_t *out, int max, int32_t *dropped) {
  int n = r->len < max ? r->len : max;
  for (int i = 0; i < n; i++)
    memcpy(out + (size_t)i * sizeof(struct event), &r->slots[(r->head + i) % RING_CAP], sizeof(struct event));
  r->head = (r->head + n) % RING_CAP;
  r->len -= n;
  *dropped = (int32_t)r->dropped;
  r->dropped = 0;
  return n;
}

PM_EXPORT int pm_express_event_size(void) { return (int)sizeof(struct event); }

/* The event record's layout, for ffi/lane.ts to check its own against at
 * load (one contract, read mechanically): the offset of each field in this
 * order, then the size. Returns how many numbers it wrote. */
PM_EXPORT int pm_express_event_layout(int32_t *out, int max) {
  const int32_t layout[] = {
      offsetof(struct event, outcome),     offsetof(struct event, route),
      offsetof(struct event, target),      offsetof(struct event, peeked),
      offsetof(struct event, client_port), offsetof(struct event, local_port),
      offsetof(struct event, error),       offsetof(struct event, has_sni),
      offsetof(struct event, decide_ms),   offsetof(struct event, generation),
      offsetof(struct event, limit),       offsetof(struct event, failures),
      offsetof(struct event, client),      offsetof(struct event, local),
      offsetof(struct event, sni),         offsetof(struct event, alpn),
      sizeof(struct event),
  };
  int n = (int)(sizeof layout / sizeof layout[0]);
  if (max < n) return -EINVAL;
  memcpy(out, layout, sizeof layout);
  return n;
}
