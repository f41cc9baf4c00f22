/*
 * The express lane: accept, wait for the first bytes, classify and deliver
 * in C, for the connections whose route C can tell for sure. No JavaScript
 * runs per such connection. With an HTTPS site, the runtime's own accept
 * on that site runs it (see "accepting on the runtime's thread"); a thread
 * of its own keeps the rest.
 *
 * The daemon compiles its routes into a table (src/route/express_lane.ts) of the
 * conditions C evaluates exactly as src/route/classify.ts does: a TLS ClientHello
 * (SNI, ALPN) in one record, and byte prefixes. Actions: inject into the
 * HTTPS site the SNI picks, or send the fd to a service channel the daemon
 * opened and checked. Anything else, or any doubt (a route C cannot
 * evaluate, a hello over several records, a malformed hello, end of
 * stream, the deadline, a full channel, a limit), and the connection goes
 * to the daemon's own path, untouched: it is queued on the listener's
 * injection queue, and the runtime accepts it as if the kernel had. So the
 * express lane never decides differently from the daemon; it only decides
 * less often.
 *
 * What it did is kept in an event ring that the daemon reads in batches, to
 * log each connection's line and count it.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "shim_internal.h"

/* ---------- the routing table ---------- */

enum verdict { V_NO, V_MATCH, V_MORE, V_SLOW };
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

/* A hex string into out (at most cap bytes); its length, or -1. */
static int unhex(const char *s, uint8_t *out, int cap) {
  if (strcmp(s, "-") == 0) return 0;
  int n = (int)strlen(s);
  if (n % 2 || n / 2 > cap) return -1;
  for (int i = 0; i < n / 2; i++) {
    unsigned v;
    if (sscanf(s + 2 * i, "%2x", &v) != 1) return -1;
    out[i] = (uint8_t)v;
  }
  return n / 2;
}

/* "=example.com" (exact) or "*.example.com" (suffix). */
static int parse_name(const char *s, struct name_pattern *p) {
  if ((s[0] != '=' && s[0] != '*') || strlen(s + 1) >= X_NAME) return -1;
  p->suffix = s[0] == '*';
  strcpy(p->text, s + 1);
  return 0;
}

static char *next_token(char **save) { return strtok_r(NULL, " \t", save); }

/* One line of the table's text (src/route/express_lane.ts writes it):
 *   limits <peek_max> <wait_ms> <max_preread> <max_connections> <max_per_source> <generation>
 *   site <listener_fd> <name>...
 *   rule <route> <slow|https|handoff> <service> <head hex> opaque
 *   rule ... prefix <hex>
 *   rule ... tls <n|-1> <name>... <n|-1> <alpn hex>...
 * Returns 0, or -1 if it cannot be read. */
static int parse_line(struct table *t, char *line) {
  char *save, *w = strtok_r(line, " \t", &save);
  if (!w) return 0;
#define NEXT(v) if (!((v) = next_token(&save))) return -1
  char *a;
  if (strcmp(w, "limits") == 0) {
    char *b, *c, *d, *e, *g;
    NEXT(a); NEXT(b); NEXT(c); NEXT(d); NEXT(e); NEXT(g);
    t->peek_max = atoi(a), t->wait_ms = atoi(b), t->max_preread = atoi(c);
    t->max_connections = atoi(d), t->max_per_source = atoi(e), t->generation = atoi(g);
    return t->peek_max > 0 && t->peek_max <= 65536 ? 0 : -1;
  }
  if (strcmp(w, "site") == 0) {
    if (t->site_count == X_MAX_SITES) return -1;
    struct site *s = &t->sites[t->site_count++];
    NEXT(a);
    s->listener_fd = atoi(a);
    while ((a = next_token(&save))) {
      if (s->name_count == X_MAX_NAMES || parse_name(a, &s->names[s->name_count++])) return -1;
    }
    return 0;
  }
  if (strcmp(w, "rule") != 0 || t->rule_count == X_MAX_RULES) return -1;
  struct rule *r = &t->rules[t->rule_count++];
  char *act, *svc, *head, *kind;
  NEXT(a); NEXT(act); NEXT(svc); NEXT(head); NEXT(kind);
  r->route = atoi(a);
  r->action = strcmp(act, "https") == 0 ? A_HTTPS : strcmp(act, "handoff") == 0 ? A_HANDOFF : A_SLOW;
  r->service = atoi(svc);
  r->head_len = unhex(head, (uint8_t *)r->head, X_HEAD - 1);
  if (r->head_len < 0) return -1;
  r->sni_count = r->alpn_count = -1;
  if (strcmp(kind, "opaque") == 0) {
    r->kind = K_OPAQUE;
  } else if (strcmp(kind, "prefix") == 0) {
    r->kind = K_PREFIX;
    NEXT(a);
    r->prefix_len = unhex(a, r->prefix, X_NAME);
    if (r->prefix_len <= 0) return -1;
  } else if (strcmp(kind, "tls") == 0) {
    r->kind = K_TLS;
    NEXT(a);
    r->sni_count = atoi(a);
    if (r->sni_count > X_MAX_NAMES) return -1;
    for (int i = 0; i < r->sni_count; i++) {
      NEXT(a);
      if (parse_name(a, &r->sni[i])) return -1;
    }
    NEXT(a);
    r->alpn_count = atoi(a);
    if (r->alpn_count > X_MAX_NAMES) return -1;
    for (int i = 0; i < r->alpn_count; i++) {
      NEXT(a);
      int n = unhex(a, (uint8_t *)r->alpn[i], X_NAME - 1);
      if (n <= 0) return -1;
      r->alpn[i][n] = 0;
    }
  } else {
    return -1;
  }
#undef NEXT
  return 0;
}

/* The table in text (its lines: parse_line); NULL with *rc = -EINVAL for a
 * text it cannot read (a bad line, or no limits line), -ENOMEM. */
static struct table *parse_table(const char *text, int *rc) {
  struct table *t = calloc(1, sizeof *t);
  char *copy = strdup(text);
  *rc = t && copy ? 0 : -ENOMEM;
  char *save, *line = *rc ? NULL : strtok_r(copy, "\n", &save);
  for (; line && *rc == 0; line = strtok_r(NULL, "\n", &save))
    if (parse_line(t, line)) *rc = -EINVAL;
  if (*rc == 0 && t->peek_max == 0) *rc = -EINVAL;
  free(copy);
  if (*rc) {
    free(t);
    return NULL;
  }
  return t;
}

/* ---------- the ClientHello, the common case only ---------- */

/* What a hello told: the SNI (lower case, "" when none) and the ALPN list
 * (length-prefixed names, GREASE removed). */
struct hello {
  int has_sni;
  char sni[X_NAME];
  int alpn_len;
  uint8_t alpn[X_NAME];
};

static int u16(const uint8_t *b) { return b[0] << 8 | b[1]; }
static int grease(int v) { return (v & 0x0f0f) == 0x0a0a && (v >> 8) == (v & 0xff); }
static int printable(const uint8_t *b, int n) {
  for (int i = 0; i < n; i++)
    if (b[i] < 0x21 || b[i] > 0x7e) return 0;
  return 1;
}

/* The hello's body in b[i..end), as src/detect/tls.ts parses it; 1 when it
 * is well formed (h filled in), 0 when the daemon should look (it would
 * say "no", or C keeps no room for what it holds). */
static int parse_hello_body(const uint8_t *b, int i, int end, struct hello *h) {
  if (end - i < 2 + 32 + 1 || b[i] != 3) return 0;
  i += 2 + 32;
  if (b[i] > 32) return 0;
  i += 1 + b[i];
  if (end - i < 2) return 0;
  int suites = u16(b + i);
  if (suites < 2 || suites % 2) return 0;
  i += 2 + suites;
  if (end - i < 1 || b[i] < 1) return 0;
  i += 1 + b[i];
  if (i > end) return 0;
  h->has_sni = 0;
  h->alpn_len = 0;
  if (i == end) return 1;
  if (end - i < 2 || i + 2 + u16(b + i) != end) return 0;
  for (i += 2; i < end;) {
    if (end - i < 4) return 0;
    int type = u16(b + i), len = u16(b + i + 2), at = i + 4, stop = at + len;
    if (stop > end) return 0;
    if (type == 0 && len > 0) { /* server_name; an empty one means none */
      if (len < 2 || at + 2 + u16(b + at) != stop) return 0;
      int found = 0;
      for (int j = at + 2; j < stop;) {
        if (stop - j < 3) return 0;
        int nlen = u16(b + j + 1);
        if (nlen == 0 || j + 3 + nlen > stop) return 0;
        if (b[j] == 0 && !found) {
          if (nlen >= X_NAME || !printable(b + j + 3, nlen)) return 0;
          for (int k = 0; k < nlen; k++) {
            uint8_t c = b[j + 3 + k];
            h->sni[k] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
          }
          h->sni[nlen] = 0;
          found = 1;
        }
        j += 3 + nlen;
      }
      h->has_sni = found;
    } else if (type == 0) {
      h->has_sni = 0;
    } else if (type == 16) { /* ALPN */
      if (len < 2 || at + 2 + u16(b + at) != stop) return 0;
      h->alpn_len = 0;
      for (int j = at + 2; j < stop;) {
        int nlen = b[j];
        if (nlen == 0 || j + 1 + nlen > stop) return 0;
        if (!(nlen == 2 && grease(u16(b + j + 1)))) {
          /* Room for the names and the 0 that ends them in an event. */
          if (!printable(b + j + 1, nlen) || h->alpn_len + 1 + nlen >= X_NAME) return 0;
          memcpy(h->alpn + h->alpn_len, b + j, (size_t)nlen + 1);
          h->alpn_len += 1 + nlen;
        }
        j += 1 + nlen;
      }
    } else if (type == 43) { /* supported_versions: only checked */
      if (len < 1 || b[at] % 2 || at + 1 + b[at] != stop) return 0;
    }
    i = stop;
  }
  return 1;
}

/* Is this a TLS ClientHello? V_NO and V_MORE exactly as the daemon would
 * say them; V_MATCH only for a well-formed hello in one record; V_SLOW for
 * everything else (the daemon decides). */
static enum verdict tls_verdict(const uint8_t *b, int n, int limit, struct hello *h) {
  if (n < 1) return V_MORE;
  if (b[0] != 22) return V_NO;
  if (n < 2) return V_MORE;
  if (b[1] != 3) return V_NO;
  if (n < 3) return V_MORE;
  if (b[2] > 4) return V_NO;
  if (n < 5) return V_MORE;
  int record = u16(b + 3);
  if (record == 0 || record > 16384) return V_NO;
  if (n < 6) return V_MORE;
  if (b[5] != 1) return V_NO;
  if (record < 4) return V_SLOW;
  if (n < 9) return V_MORE;
  int body = b[6] << 16 | b[7] << 8 | b[8];
  if (body + 4 > record) return V_SLOW; /* over several records */
  if (n < 5 + record) return 5 + record > limit ? V_SLOW : V_MORE;
  return parse_hello_body(b, 9, 9 + body, h) ? V_MATCH : V_SLOW;
}

static int name_matches(const struct name_pattern *p, const char *name) {
  size_t n = strlen(name);
  if (n > 0 && name[n - 1] == '.') n--;
  size_t m = strlen(p->text);
  if (!p->suffix) return n == m && strncmp(name, p->text, n) == 0;
  return n > m && strncmp(name + n - m, p->text, m) == 0;
}

static int alpn_offered(const struct hello *h, const char *want) {
  size_t w = strlen(want);
  for (int i = 0; i < h->alpn_len; i += 1 + h->alpn[i])
    if (h->alpn[i] == w && memcmp(h->alpn + i + 1, want, w) == 0) return 1;
  return 0;
}

static enum verdict rule_verdict(const struct rule *r, const uint8_t *b, int n, int limit,
                                 struct hello *h, enum verdict *tls) {
  switch (r->kind) {
  case K_PREFIX: {
    int m = n < r->prefix_len ? n : r->prefix_len;
    if (memcmp(b, r->prefix, (size_t)m) != 0) return V_NO;
    return n >= r->prefix_len ? V_MATCH : V_MORE;
  }
  case K_TLS: {
    if (*tls == V_SLOW + 1) *tls = tls_verdict(b, n, limit, h); /* once per look */
    if (*tls != V_MATCH) return *tls;
    if (r->sni_count >= 0) {
      int ok = 0;
      for (int i = 0; i < r->sni_count && h->has_sni && !ok; i++) ok = name_matches(&r->sni[i], h->sni);
      if (!ok) return V_NO;
    }
    if (r->alpn_count >= 0) {
      int ok = 0;
      for (int i = 0; i < r->alpn_count && !ok; i++) ok = alpn_offered(h, r->alpn[i]);
      if (!ok) return V_NO;
    }
    return V_MATCH;
  }
  default:
    return V_SLOW;
  }
}

/* The rule that takes these bytes: its index, or -V_MORE / -V_SLOW. The
 * first rule that matches wins once every earlier one said no (as
 * decide() in src/route/classify.ts); bytes that match none go to the daemon,
 * which knows the default route. */
#define DECIDE_MORE (-V_MORE)
#define DECIDE_SLOW (-V_SLOW)
static int decide(const struct table *t, const uint8_t *b, int n, struct hello *h, int *tls_seen) {
  enum verdict tls = V_SLOW + 1;
  for (int i = 0; i < t->rule_count; i++) {
    enum verdict v = rule_verdict(&t->rules[i], b, n, t->peek_max, h, &tls);
    if (v == V_MATCH) {
      *tls_seen = tls == V_MATCH;
      return i;
    }
    if (v != V_NO) return -(int)v;
  }
  return DECIDE_SLOW;
}

/* ---------- state ---------- */

/* Everything below is guarded by lane_lock, taken by the lane's thread for
 * each batch of events and by the daemon's calls. */
static pthread_mutex_t lane_lock = PTHREAD_MUTEX_INITIALIZER;
static struct table *table;
static int lane_ep = -1;

#define X_MAX_LISTENERS 32
static struct lane_listener {
  int fd, accepting, pending;
  int pass_all; /* every connection goes to the daemon (it reads a PROXY header first) */
  int64_t resume_ns; /* after an accept error: pause until then */
  int armed_in; /* the epoll set that watches it (the lane's or the runtime's), or -1 */
  int in_runtime; /* armed_in is the runtime's set */
  int bound_to_one; /* bound to one address: every connection's local address is local */
  struct sockaddr_storage local;
  int failures; /* accepts failed since the last that worked: said at the first, and the end */
  int stalled; /* the lane saw it readable at its last look (runtime_accepts then) */
  uint64_t runtime_accepts_seen;
} lane_listeners[X_MAX_LISTENERS];
static int lane_listener_count;

#define LISTENER_TAG (1ULL << 40)

/* Accepting on the runtime's thread. The public listeners are watched by
 * the runtime's own epoll set, under the token of the first HTTPS site's
 * listener: a new connection makes the runtime call accept4 on that site,
 * and lane_accept_for accepts and classifies there, with no thread to
 * wake and no doorbell for that site; a handoff is sent from there too.
 * The lane thread keeps the rest: connections that wait for their first
 * bytes, deadlines, and a listener the runtime leaves unaccepted (a
 * reload, an accept error). */
static int runtime_site = -1; /* that site's listener fd, or -1: the lane accepts */
static int accepting_for = -1, accepted_for = -1; /* during lane_accept_for */
static uint64_t runtime_accepts;
#define STALL_CHECK_MS 50
/* A connection the runtime's thread left waiting may be due before the
 * lane's wait ends by itself: the bell (an eventfd in the lane's set)
 * wakes it to wait for less. */
static int lane_bell = -1;
static int64_t lane_sleeps_until = INT64_MAX;
static int wake_lane;
#define BELL_TAG (1ULL << 41)

static void ring_lane(void) {
  static const uint64_t one = 1;
  if (write(lane_bell, &one, sizeof one) < 0) { /* the count is full: it rings already */ }
}

#define X_MAX_SERVICES 64
#define X_MAX_CHANNELS 32
static struct service {
  int id, count, next;
  int chan[X_MAX_CHANNELS], instance[X_MAX_CHANNELS];
} services[X_MAX_SERVICES];
static int service_count;

enum conn_state { C_NONE, C_WAITING, C_PASSED };
struct conn {
  uint32_t seq;
  uint8_t state;
  uint8_t in_epoll;
  int16_t listener;
  int64_t accepted_ns;
  uint8_t source[16];
  struct sockaddr_in6 peer; /* or a sockaddr_in: kept for the log */
};
static struct conn *conns;
static int conn_cap;
static int pending_total;

/* Deadlines, in accept order (one wait for all: nearly sorted). */
struct deadline {
  int fd;
  uint32_t seq;
  int64_t at_ns;
};
static struct deadline *deadlines;
static int dl_head, dl_len, dl_cap;

static int64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static struct conn *conn_of(int fd) {
  if (fd >= conn_cap) {
    int cap = conn_cap ? conn_cap : 1024;
    while (cap <= fd) cap *= 2;
    struct conn *grown = realloc(conns, sizeof *conns * (size_t)cap);
    if (!grown) return NULL;
    memset(grown + conn_cap, 0, sizeof *conns * (size_t)(cap - conn_cap));
    conns = grown, conn_cap = cap;
  }
  return &conns[fd];
}

static int push_deadline(int fd, uint32_t seq, int64_t at) {
  if (dl_len == dl_cap) {
    int cap = dl_cap ? dl_cap * 2 : 1024;
    struct deadline *grown = malloc(sizeof *grown * (size_t)cap);
    if (!grown) return -1;
    for (int i = 0; i < dl_len; i++) grown[i] = deadlines[(dl_head + i) % dl_cap];
    free(deadlines);
    deadlines = grown, dl_cap = cap, dl_head = 0;
  }
  deadlines[(dl_head + dl_len++) % dl_cap] = (struct deadline){fd, seq, at};
  if (at < lane_sleeps_until) wake_lane = 1;
  return 0;
}

/* Waiting connections per source address, for max_per_source. */
#define SOURCE_BUCKETS 4096
static struct source_count {
  uint8_t addr[16];
  int count;
  struct source_count *next;
} *sources[SOURCE_BUCKETS];

static struct source_count **source_slot(const uint8_t addr[16]) {
  uint32_t h = 2166136261u;
  for (int i = 0; i < 16; i++) h = (h ^ addr[i]) * 16777619u;
  struct source_count **p = &sources[h % SOURCE_BUCKETS];
  while (*p && memcmp((*p)->addr, addr, 16) != 0) p = &(*p)->next;
  return p;
}

static int source_waiting(const uint8_t addr[16]) {
  struct source_count *s = *source_slot(addr);
  return s ? s->count : 0;
}

static void source_add(const uint8_t addr[16], int by) {
  struct source_count **p = source_slot(addr);
  if (!*p) {
    if (by < 0 || !(*p = calloc(1, sizeof **p))) return;
    memcpy((*p)->addr, addr, 16);
  }
  (*p)->count += by;
  if ((*p)->count <= 0) {
    struct source_count *gone = *p;
    *p = gone->next;
    free(gone);
  }
}

/* An address as 16 bytes (IPv4 as IPv4-mapped IPv6), and as the text the
 * daemon logs (IPv4-mapped shown as IPv4). */
static void address_key(const struct sockaddr_storage *ss, uint8_t out[16]) {
  memset(out, 0, 16);
  if (ss->ss_family == AF_INET) {
    out[10] = out[11] = 0xff;
    memcpy(out + 12, &((const struct sockaddr_in *)ss)->sin_addr, 4);
  } else if (ss->ss_family == AF_INET6) {
    memcpy(out, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
  }
}

#define X_ADDR PM_ADDR_TEXT
static int address_text(const struct sockaddr_storage *ss, char out[X_ADDR]) {
  int port = addr_text(ss, out);
  if (strncmp(out, "::ffff:", 7) == 0 && strchr(out, '.')) memmove(out, out + 7, strlen(out + 7) + 1);
  return port;
}

/* ---------- the event ring, read by the daemon ---------- */

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
enum limit { L_MAX_CONNECTIONS = 1, L_MAX_PREREAD, L_MAX_PER_SOURCE };

/* Layout read by ffi/shim.ts (expressEvents). */
struct event {
  int32_t outcome, route, target, peeked;
  int32_t client_port, local_port, error, has_sni;
  float decide_ms;
  int32_t generation, limit, failures;
  char client[X_ADDR], local[X_ADDR];
  char sni[X_NAME];
  uint8_t alpn[X_NAME]; /* length-prefixed names, a 0 after the last */
};

/* 4096 events: 40 ms of 100,000 connections/s, while the daemon reads them
 * every 10 ms. Touched once when made, so that its memory is there from
 * the start and does not look like growth under load. */
#define RING_CAP 4096
static struct event *ring;
static int ring_head, ring_len;
static int64_t events_dropped;

static struct event *new_event(enum outcome o) {
  if (!ring) {
    if (!(ring = malloc(sizeof *ring * RING_CAP))) return NULL;
    memset(ring, 0, sizeof *ring * RING_CAP);
  }
  if (ring_len == RING_CAP) {
    events_dropped++;
    return NULL;
  }
  struct event *e = &ring[(ring_head + ring_len++) % RING_CAP];
  memset(e, 0, offsetof(struct event, client) + 1);
  e->outcome = o;
  return e;
}

/* Copies up to max events to out (struct event each); returns how many.
 * *dropped gets the events lost to a full ring since the last call. */
PM_EXPORT int pm_express_events(uint8_t *out, int max, int32_t *dropped) {
  pthread_mutex_lock(&lane_lock);
  int n = ring_len < max ? ring_len : max;
  for (int i = 0; i < n; i++)
    memcpy(out + (size_t)i * sizeof(struct event), &ring[(ring_head + i) % RING_CAP], sizeof(struct event));
  ring_head = (ring_head + n) % RING_CAP;
  ring_len -= n;
  *dropped = (int32_t)events_dropped;
  events_dropped = 0;
  pthread_mutex_unlock(&lane_lock);
  return n;
}

PM_EXPORT int pm_express_event_size(void) { return (int)sizeof(struct event); }

/* The table's capacities, for the table compiler (src/route/express_lane.ts,
 * through ffi/shim.ts) to check its own against at load: rules, names per
 * condition, bytes per name or prefix (without the ending 0), sites, bytes
 * of a record's head. Returns how many numbers it wrote. */
PM_EXPORT int pm_express_table_limits(int32_t *out, int max) {
  const int32_t limits[] = {X_MAX_RULES, X_MAX_NAMES, X_NAME - 1, X_MAX_SITES, X_HEAD - 1};
  int n = (int)(sizeof limits / sizeof limits[0]);
  if (max < n) return -EINVAL;
  memcpy(out, limits, sizeof limits);
  return n;
}

/* The event record's layout, for ffi/shim.ts to check its own against at
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

/* ---------- the lane ---------- */

/* Stops watching fd: no longer the lane's (the caller has it, or gives it on). */
static void unwatch(int fd, struct conn *c) {
  if (c->in_epoll) epoll_ctl(lane_ep, EPOLL_CTL_DEL, fd, NULL);
  c->in_epoll = 0;
  if (c->state == C_WAITING) {
    pending_total--;
    lane_listeners[c->listener].pending--;
    source_add(c->source, -1);
  }
  c->state = C_NONE;
}

/* Passes the connection on to the daemon's own path, untouched. */
static void pass_on(int fd, struct conn *c) {
  int listener = lane_listeners[c->listener].fd;
  unwatch(fd, c);
  c->state = C_PASSED;
  int rc = pm_inject_push(listener, fd);
  if (rc < 0) { /* queue full or listener gone: nobody can take it */
    c->state = C_NONE;
    close(fd);
    struct event *e = new_event(O_LOST);
    if (e) e->error = -rc;
  }
}

/* What the hello told (h NULL: no hello was read), copied into the event's
 * fixed buffers: each copy is bounded by the buffer, whatever h holds. */
static void describe_hello(struct event *e, const struct hello *h) {
  size_t sni = 0, alpn = 0;
  e->has_sni = h ? (h->has_sni ? 1 : 0) : -1;
  if (h && h->has_sni) memcpy(e->sni, h->sni, sni = strnlen(h->sni, sizeof e->sni - 1));
  if (h && h->alpn_len > 0) {
    alpn = (size_t)h->alpn_len < sizeof e->alpn - 1 ? (size_t)h->alpn_len : sizeof e->alpn - 1;
    memcpy(e->alpn, h->alpn, alpn);
  }
  e->sni[sni] = 0;
  e->alpn[alpn] = 0;
}

/* The site for a hello's SNI; the first (the default) when the route was
 * decided without reading a hello (h NULL), as the daemon does. */
static const struct site *pick_site(const struct table *t, const struct hello *h) {
  for (int i = 0; h && h->has_sni && i < t->site_count; i++)
    for (int j = 0; j < t->sites[i].name_count; j++)
      if (name_matches(&t->sites[i].names[j], h->sni)) return &t->sites[i];
  return t->site_count ? &t->sites[0] : NULL;
}

/* For tests and the fuzzer: decides on bytes with a table, without
 * sockets, and describes the hello into *out (an event record: has_sni,
 * sni, alpn) as a delivery would, with target the site an https rule
 * picks (-1 for another action). Returns the route, or -2 (more bytes
 * needed) or -3 (the daemon decides); -EINVAL: a bad table. */
PM_EXPORT int pm_express_decide(const char *table_text, const uint8_t *b, int n,
                                struct event *out) {
  int rc;
  struct table *t = parse_table(table_text, &rc);
  if (!t) return rc;
  struct hello h = {.has_sni = 0, .alpn_len = 0};
  int tls_seen = 0;
  int d = decide(t, b, n, &h, &tls_seen);
  rc = d >= 0 ? t->rules[d].route : d == DECIDE_MORE ? -2 : -3;
  memset(out, 0, sizeof *out);
  describe_hello(out, tls_seen ? &h : NULL);
  const struct site *site = d >= 0 && t->rules[d].action == A_HTTPS ? pick_site(t, tls_seen ? &h : NULL) : NULL;
  out->target = site ? (int)(site - t->sites) : -1;
  free(t);
  return rc;
}

/* The facts every event of a delivered connection carries. */
static void describe(struct event *e, int fd, const struct conn *c, int rule, int peeked,
                     const struct hello *h, int tls) {
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  e->route = rule;
  e->generation = table->generation;
  e->peeked = peeked;
  e->decide_ms = (float)((now_ns() - c->accepted_ns) / 1e6);
  memcpy(&ss, &c->peer, sizeof c->peer);
  e->client_port = address_text(&ss, e->client);
  const struct lane_listener *l = &lane_listeners[c->listener];
  if (l->bound_to_one) e->local_port = address_text(&l->local, e->local);
  else if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) e->local_port = address_text(&ss, e->local);
  describe_hello(e, tls ? h : NULL);
}

static struct service *find_service(int id) {
  for (int i = 0; i < service_count; i++)
    if (services[i].id == id) return &services[i];
  return NULL;
}

static void drop_channel(struct service *s, int k) {
  s->count--;
  s->chan[k] = s->chan[s->count];
  s->instance[k] = s->instance[s->count];
}

/* Sends fd and its record on one of the service's channels, round robin.
 * A full channel is skipped; a broken one leaves the list (the daemon finds
 * it broken too, reopens it and lists it again). Returns the instance, or
 * -1 when no channel took it (nothing was sent). */
static int send_to_service(struct service *s, int fd, const char *rec, int len) {
  for (int tries = s->count; tries > 0 && s->count > 0; tries--) {
    int k = s->next++ % s->count;
    int sent = pm_channel_send(s->chan[k], fd, (const uint8_t *)rec, len);
    if (sent == -EAGAIN) continue;
    if (sent < 0) {
      drop_channel(s, k);
      continue;
    }
    int instance = s->instance[k];
    /* A record this small goes whole on Linux (a Unix stream socket takes
     * it in one buffer or not at all); should it not, the fd went with the
     * first byte, so finish the record or cut the channel, which the
     * service reads as a record cut short (docs/handoff.md). The lane's
     * thread may wait a little for that; the runtime's may not. */
    int wait_ms = accepting_for >= 0 ? 0 : 1000;
    while (sent < len) {
      struct pollfd p = {.fd = s->chan[k], .events = POLLOUT};
      int more = poll(&p, 1, wait_ms) == 1 ? pm_channel_send(s->chan[k], -1, (const uint8_t *)rec + sent, len - sent) : -ETIMEDOUT;
      if (more <= 0) {
        shutdown(s->chan[k], SHUT_RDWR);
        drop_channel(s, k);
        break;
      }
      sent += more;
    }
    return instance;
  }
  return -1;
}

/* Puts a described event in the ring, once its connection was delivered. */
static void emit(const struct event *described, enum outcome o, int target) {
  struct event *e = new_event(o);
  if (e) *e = *described, e->outcome = o, e->target = target;
}

/* Carries out the rule's action on the connection: injects it into the
 * HTTPS site or sends it to the service; else passes it on. */
static void carry_out(int fd, struct conn *c, int rule_index, int peeked, const struct hello *h,
                      int tls) {
  const struct rule *r = &table->rules[rule_index];
  struct event ev = {0}; /* described before the fd goes: it may be closed at once after */
  if (r->action == A_HTTPS) {
    const struct site *site = pick_site(table, tls ? h : NULL);
    if (site) {
      describe(&ev, fd, c, r->route, peeked, h, tls);
      unwatch(fd, c);
      if (site->listener_fd == accepting_for && accepted_for < 0) { /* the runtime asked for it */
        accepted_for = fd;
        emit(&ev, O_HTTPS, (int)(site - table->sites));
        return;
      }
      if (pm_inject_push(site->listener_fd, fd) == 0) {
        emit(&ev, O_HTTPS, (int)(site - table->sites));
        return;
      }
    }
  } else if (r->action == A_HANDOFF) {
    struct service *s = find_service(r->service);
    if (s && s->count > 0) {
      describe(&ev, fd, c, r->route, peeked, h, tls);
      char rec[X_HEAD + 256];
      memcpy(rec, r->head, (size_t)r->head_len);
      int len = r->head_len +
                snprintf(rec + r->head_len, sizeof rec - (size_t)r->head_len,
                         "{\"address\":\"%s\",\"port\":%d},\"local\":{\"address\":\"%s\",\"port\":%d},"
                         "\"peeked\":%d}\n",
                         ev.client, ev.client_port, ev.local, ev.local_port, peeked);
      int instance = send_to_service(s, fd, rec, len);
      if (instance >= 0) {
        unwatch(fd, c);
        close(fd); /* the service has its own; ours is not Deno's: no FIN */
        emit(&ev, O_HANDED_OFF, instance);
        return;
      }
    }
  }
  pass_on(fd, c);
}

/* Looks at a waiting connection's bytes; delivers it, passes it on, or
 * leaves it waiting. */
static void look(int fd, uint32_t events) {
  static uint8_t buf[65536];
  struct conn *c = fd < conn_cap ? &conns[fd] : NULL;
  if (!c || c->state != C_WAITING) return; /* a stale event */
  int hangup = (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0;
  ssize_t n = recv(fd, buf, (size_t)table->peek_max, MSG_PEEK | MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && !hangup) return;
  if (n < 0) { /* reset: the runtime could not even accept it (no peer address) */
    int error = errno;
    struct event *e = new_event(O_RESET);
    struct hello none = {0};
    if (e) describe(e, fd, c, -1, 0, &none, 0), e->error = error;
    unwatch(fd, c);
    close(fd);
    return;
  }
  if (n == 0) return pass_on(fd, c); /* end of stream: the daemon routes it */
  struct hello h = {.has_sni = 0, .alpn_len = 0}; /* read only where decide() says tls */
  int tls = 0;
  int d = decide(table, buf, (int)n, &h, &tls);
  if (d >= 0) return carry_out(fd, c, d, (int)n, &h, tls);
  if (d == DECIDE_MORE && !hangup && n < table->peek_max) return;
  pass_on(fd, c);
}

static void disarm_listener(struct lane_listener *l) {
  if (l->armed_in >= 0) epoll_ctl(l->armed_in, EPOLL_CTL_DEL, l->fd, NULL);
  l->armed_in = -1;
  l->in_runtime = 0;
}

/* Accepts up to 256 connections; returns 1 when the listener has no more
 * for now (drained, or paused by an error), 0 when some may be left. */
static int accept_from(int li) {
  struct lane_listener *l = &lane_listeners[li];
  for (int k = 0; k < 256 && l->accepting && accepted_for < 0; k++) {
    struct sockaddr_storage peer;
    socklen_t pl = sizeof peer;
    int fd = real_accept(l->fd, (struct sockaddr *)&peer, &pl, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 1;
      if (errno == ECONNABORTED || errno == EINTR) continue;
      /* EMFILE and friends: pause this listener (the clients wait in the
       * backlog), say so through the ring (once until an accept works
       * again), and try again later. */
      struct event *e = l->failures++ ? NULL : new_event(O_ACCEPT_FAILED);
      if (e) e->error = errno;
      disarm_listener(l);
      l->resume_ns = now_ns() + 100 * 1000000LL;
      return 1;
    }
    if (l->failures) {
      struct event *e = new_event(O_ACCEPT_RECOVERED);
      if (e) e->failures = l->failures;
      l->failures = 0;
    }
    struct conn *c = conn_of(fd);
    if (!c) {
      close(fd);
      continue;
    }
    c->seq++;
    c->listener = (int16_t)li;
    c->accepted_ns = now_ns();
    c->in_epoll = 0;
    address_key(&peer, c->source);
    memcpy(&c->peer, &peer, sizeof c->peer);
    if (l->pass_all) {
      c->state = C_NONE;
      pass_on(fd, c);
      continue;
    }
    /* Over a limit, the newest connection is closed, as the daemon does
     * (src/accept/admission.ts), and said through the ring. */
    enum limit over = pending_total >= table->max_connections ? L_MAX_CONNECTIONS
                      : pending_total >= table->max_preread  ? L_MAX_PREREAD
                      : source_waiting(c->source) >= table->max_per_source ? L_MAX_PER_SOURCE
                                                                             : 0;
    if (over) {
      struct event *e = new_event(O_LIMIT);
      if (e) e->limit = over, e->client_port = address_text(&peer, e->client);
      close(fd);
      continue;
    }
    c->state = C_WAITING;
    pending_total++, l->pending++, source_add(c->source, 1);
    if (push_deadline(fd, c->seq, c->accepted_ns + table->wait_ms * 1000000LL) < 0) {
      pass_on(fd, c);
      continue;
    }
    look(fd, 0);
    if (c->state == C_WAITING) {
      struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.u64 = (uint64_t)fd};
      if (epoll_ctl(lane_ep, EPOLL_CTL_ADD, fd, &ev) == 0) c->in_epoll = 1;
      else pass_on(fd, c);
    }
  }
  return !l->accepting;
}

/* 1 for 0.0.0.0 or ::, where connections come to any of the host's addresses. */
static int any_address(const struct sockaddr_storage *ss) {
  if (ss->ss_family == AF_INET) return ((const struct sockaddr_in *)ss)->sin_addr.s_addr == htonl(INADDR_ANY);
  return memcmp(&((const struct sockaddr_in6 *)ss)->sin6_addr, &in6addr_any, sizeof in6addr_any) == 0;
}

/* Watches the listener: in the runtime's epoll set when there is a site
 * to accept for, else (or if that fails) in the lane's. */
static void arm_listener(struct lane_listener *l, int li) {
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = LISTENER_TAG | (uint64_t)li};
  l->armed_in = runtime_site >= 0 ? add_under_token(runtime_site, l->fd) : -1;
  l->in_runtime = l->armed_in >= 0;
  if (l->armed_in < 0 && epoll_ctl(lane_ep, EPOLL_CTL_ADD, l->fd, &ev) == 0) l->armed_in = lane_ep;
  l->resume_ns = 0;
  l->stalled = 0;
}

/* Moves the listeners to the runtime's epoll set under the token of the
 * site's listener (-1: to the lane's set). */
static void move_listeners(int site) {
  for (int i = 0; i < lane_listener_count; i++) disarm_listener(&lane_listeners[i]);
  runtime_site = site;
  for (int i = 0; i < lane_listener_count; i++) {
    struct lane_listener *l = &lane_listeners[i];
    if (l->accepting && !l->resume_ns) arm_listener(l, i);
  }
}

/* The runtime accepts for the table's first site, if it has one. */
static void place_listeners(void) {
  int site = table && table->site_count ? table->sites[0].listener_fd : -1;
  if (site != runtime_site) move_listeners(site);
}

/* Every STALL_CHECK_MS while the runtime accepts for a site. A listener in
 * the runtime's set that stayed readable while the runtime accepted
 * nothing (its site is being replaced, or it met an accept error and waits
 * for a new edge): the lane accepts for it. */
static void watch_over(int li) {
  struct lane_listener *l = &lane_listeners[li];
  struct pollfd p = {.fd = l->fd, .events = POLLIN};
  if (l->accepting && !l->resume_ns && !l->in_runtime) {
    /* It could not join the runtime's set when armed (out of fds, say,
     * to read where the runtime keeps the site): it tries again. */
    disarm_listener(l);
    arm_listener(l, li);
  }
  if (!l->in_runtime || poll(&p, 1, 0) != 1) {
    l->stalled = 0;
    return;
  }
  if (l->stalled && l->runtime_accepts_seen == runtime_accepts) accept_from(li);
  l->stalled = 1;
  l->runtime_accepts_seen = runtime_accepts;
}

/* Passes on the connections whose deadline came; returns the ms until the
 * next deadline or paused listener (-1: none). */
static int expire(void) {
  int64_t now = now_ns(), next = -1;
  while (dl_len > 0) {
    struct deadline *d = &deadlines[dl_head];
    if (d->at_ns > now) {
      next = d->at_ns;
      break;
    }
    struct conn *c = d->fd < conn_cap ? &conns[d->fd] : NULL;
    if (c && c->state == C_WAITING && c->seq == d->seq) pass_on(d->fd, c);
    dl_head = (dl_head + 1) % dl_cap, dl_len--;
  }
  for (int i = 0; i < lane_listener_count; i++) {
    struct lane_listener *l = &lane_listeners[i];
    if (!l->resume_ns || !l->accepting) continue;
    if (l->resume_ns <= now) arm_listener(l, i);
    else if (next < 0 || l->resume_ns < next) next = l->resume_ns;
  }
  return next < 0 ? -1 : (int)((next - now) / 1000000 + 1);
}

static void *lane_thread(void *arg) {
  (void)arg;
  struct epoll_event evs[256];
  int timeout = -1;
  int64_t next_stall_check = 0;
  for (;;) {
    int n = epoll_wait(lane_ep, evs, 256, timeout);
    pthread_mutex_lock(&lane_lock);
    for (int i = 0; i < n; i++) {
      uint64_t d = evs[i].data.u64;
      if (d & BELL_TAG) {
        uint64_t rung;
        if (read(lane_bell, &rung, sizeof rung) < 0) { /* nothing to read: rung before */ }
      } else if (d & LISTENER_TAG) {
        int li = (int)(d & 0xffff);
        if (li < lane_listener_count) accept_from(li);
      } else {
        look((int)d, evs[i].events);
      }
    }
    timeout = expire();
    int64_t now = now_ns();
    if (runtime_site >= 0 && now >= next_stall_check) {
      for (int li = 0; li < lane_listener_count; li++) watch_over(li);
      next_stall_check = now + STALL_CHECK_MS * 1000000LL;
    }
    if (runtime_site >= 0 && (timeout < 0 || timeout > STALL_CHECK_MS)) timeout = STALL_CHECK_MS;
    lane_sleeps_until = timeout < 0 ? INT64_MAX : now + timeout * 1000000LL;
    pthread_mutex_unlock(&lane_lock);
  }
  return NULL;
}

/* ---------- what the daemon calls ---------- */

/* Installs a new routing table (its text: see parse_line). The lane starts
 * with the first one. 0, or -EINVAL for a table it cannot read. */
PM_EXPORT int pm_express_table(const char *text) {
  int rc;
  struct table *t = parse_table(text, &rc);
  if (!t) return rc;
  pthread_mutex_lock(&lane_lock);
  if (lane_ep < 0) {
    lane_ep = epoll_create1(EPOLL_CLOEXEC);
    lane_bell = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event bell = {.events = EPOLLIN | EPOLLET, .data.u64 = BELL_TAG};
    pthread_t th;
    if (lane_ep < 0 || lane_bell < 0 || epoll_ctl(lane_ep, EPOLL_CTL_ADD, lane_bell, &bell) < 0 ||
        pthread_create(&th, NULL, lane_thread, NULL) != 0) {
      rc = lane_ep < 0 || lane_bell < 0 ? -errno : -EAGAIN;
      if (lane_ep >= 0) close(lane_ep);
      if (lane_bell >= 0) close(lane_bell);
      lane_ep = -1, lane_bell = -1;
    } else {
      pthread_detach(th);
    }
  }
  if (rc == 0) {
    free(table);
    table = t;
    place_listeners();
    ring_lane(); /* its stall checks may start or stop */
  } else {
    free(t);
  }
  pthread_mutex_unlock(&lane_lock);
  return rc;
}

/* Lets the lane accept the connections of a listener of the runtime's
 * (needs the shim preloaded and a table). 0, or -errno. */
PM_EXPORT int pm_express_listen(int listener_fd) {
  pthread_mutex_lock(&lane_lock);
  /* A stopped listener's entry is reused: the fd number may come back. */
  int li = 0;
  while (li < lane_listener_count && !(lane_listeners[li].fd == listener_fd && !lane_listeners[li].accepting))
    li++;
  int rc = !table ? -ENOTCONN : li == X_MAX_LISTENERS ? -ENOSPC : 0;
  if (rc == 0 && li < lane_listener_count && lane_listeners[li].pending > 0) rc = -EBUSY;
  if (rc == 0) rc = inject_register_express(listener_fd);
  if (rc == 0) {
    if (li == lane_listener_count) lane_listener_count++;
    struct lane_listener *l = &lane_listeners[li];
    *l = (struct lane_listener){.fd = listener_fd, .accepting = 1, .armed_in = -1};
    socklen_t len = sizeof l->local;
    l->bound_to_one = getsockname(listener_fd, (struct sockaddr *)&l->local, &len) == 0 && !any_address(&l->local);
    arm_listener(l, li);
    place_listeners();
    ring_lane();
  }
  pthread_mutex_unlock(&lane_lock);
  return rc;
}

static struct lane_listener *find_lane_listener(int fd) {
  for (int i = 0; i < lane_listener_count; i++)
    if (lane_listeners[i].fd == fd) return &lane_listeners[i];
  return NULL;
}

/* Stops accepting on the listener; the connections it holds still get
 * their decision (by their deadline at the latest). Returns how many it
 * holds, or -ENOENT. Call it until 0 before closing the listener. */
PM_EXPORT int pm_express_stop(int listener_fd) {
  pthread_mutex_lock(&lane_lock);
  struct lane_listener *l = find_lane_listener(listener_fd);
  int rc = -ENOENT;
  if (l) {
    disarm_listener(l);
    l->accepting = 0;
    rc = l->pending;
  }
  pthread_mutex_unlock(&lane_lock);
  return rc;
}

/* on = 1: the lane passes every connection of the listener to the daemon
 * at once (a reload gave it the PROXY protocol, which the daemon reads).
 * 0, or -ENOENT. */
PM_EXPORT int pm_express_pass_all(int listener_fd, int on) {
  pthread_mutex_lock(&lane_lock);
  struct lane_listener *l = find_lane_listener(listener_fd);
  if (l) l->pass_all = on;
  pthread_mutex_unlock(&lane_lock);
  return l ? 0 : -ENOENT;
}

/* Connections waiting for their first bytes in the lane, all listeners. */
PM_EXPORT int pm_express_waiting(void) {
  pthread_mutex_lock(&lane_lock);
  int n = pending_total;
  pthread_mutex_unlock(&lane_lock);
  return n;
}

/* For a connection the lane passed to the daemon: how long ago (ms) the
 * lane accepted it, so that the daemon's deadline counts from then; -1 for
 * any other fd. Asked once: the answer is forgotten. */
PM_EXPORT double pm_express_age_ms(int fd) {
  pthread_mutex_lock(&lane_lock);
  double age = -1;
  if (fd >= 0 && fd < conn_cap && conns[fd].state == C_PASSED) {
    age = (double)(now_ns() - conns[fd].accepted_ns) / 1e6;
    conns[fd].state = C_NONE;
  }
  pthread_mutex_unlock(&lane_lock);
  return age;
}

/* The instance the lane sends to next for the service with this id, or -1
 * when it has no channel for it: the daemon's own sends go on from there,
 * so that both keep one round robin. */
PM_EXPORT int pm_express_next_instance(int id) {
  pthread_mutex_lock(&lane_lock);
  struct service *s = find_service(id);
  int instance = s && s->count > 0 ? s->instance[s->next % s->count] : -1;
  pthread_mutex_unlock(&lane_lock);
  return instance;
}

/* The channels (fd, instance pairs) the lane may use for the service with
 * this id; n = 0 takes them all away. The daemon lists only channels it
 * opened and checked, and takes one away before it closes it. */
PM_EXPORT int pm_express_channels(int id, const int32_t *pairs, int n) {
  if (n < 0 || n > X_MAX_CHANNELS) return -EINVAL;
  pthread_mutex_lock(&lane_lock);
  struct service *s = find_service(id);
  int rc = 0;
  if (!s && n > 0) {
    if (service_count == X_MAX_SERVICES) rc = -ENOSPC;
    else s = &services[service_count++], memset(s, 0, sizeof *s), s->id = id;
  }
  if (s) {
    s->count = n;
    s->next = 0; /* the daemon lists the instance due next first */
    for (int i = 0; i < n; i++) s->chan[i] = pairs[2 * i], s->instance[i] = pairs[2 * i + 1];
    if (n == 0) *s = services[--service_count];
  }
  pthread_mutex_unlock(&lane_lock);
  return rc;
}

/* ---------- accepting on the runtime's thread ---------- */

void lane_site_gone(int site_fd) {
  pthread_mutex_lock(&lane_lock);
  if (site_fd >= 0 && site_fd == runtime_site) move_listeners(-1);
  pthread_mutex_unlock(&lane_lock);
}

int lane_accept_for(int site_fd, struct sockaddr_storage *peer) {
  pthread_mutex_lock(&lane_lock);
  int fd = -1;
  if (site_fd >= 0 && site_fd == runtime_site) {
    runtime_accepts++;
    accepting_for = site_fd;
    wake_lane = 0;
    /* To the end of the backlog, unless a connection for the site comes:
     * the runtime's set is edge-triggered, and returning with connections
     * left would leave them to the next new one. */
    for (int li = 0; li < lane_listener_count && accepted_for < 0; li++)
      if (lane_listeners[li].in_runtime)
        while (!accept_from(li) && accepted_for < 0) continue;
    fd = accepted_for;
    if (fd >= 0) memcpy(peer, &conns[fd].peer, sizeof conns[fd].peer);
    accepting_for = -1, accepted_for = -1;
    if (wake_lane) ring_lane();
  }
  pthread_mutex_unlock(&lane_lock);
  return fd;
}
