/*
 * What the fuzz harness's files share (fuzz_lane.c drives, fuzz_receiver.c
 * reaches the handoff receiver's static parsing).
 */
#ifndef PORTMUX_FUZZ_H
#define PORTMUX_FUZZ_H

#include <stddef.h>
#include <stdint.h>

/* The express lane (fuzz_express.c, over the parsers in lane.h). */
struct table;
struct event;
int pm_express_decide(const char *table_text, const uint8_t *b, int n, struct event *out);
int pm_express_event_size(void);
struct table *fuzz_table_parse(const char *text, int *rc);
void fuzz_table_free(struct table *t);
int fuzz_site_count(const struct table *t);
int fuzz_event_size(void);
int fuzz_decide_parsed(const struct table *t, const uint8_t *b, int n, struct event *out);
const char *fuzz_check_event(const struct event *e, int site_count);

/* One run of a handoff receiver over one channel: bytes are sent in
 * chunks, chunk i carrying chunk_fds[i] fds (bit i of devnull_mask: those
 * fds are /dev/null, which the receiver drops, else sockets it hands on).
 * The runtime's accept runs after every chunk; each record accepted is
 * taken with an out buffer of take_cap bytes (-1: its own length) unless
 * skip_take; problems are read with problems_cap bytes. */
struct rx_plan {
  const uint8_t *bytes;
  size_t len;
  int chunks;
  const int *chunk_len;
  const int *chunk_fds;
  uint64_t devnull_mask;
  int take_cap, skip_take, problems_cap, accept_flags;
};

/* Runs the plan; returns the clients accepted, or -1 if the harness itself
 * failed (a socket it could not make). Every fd it made is closed. */
int fuzz_receiver_run(const struct rx_plan *p);

#endif
