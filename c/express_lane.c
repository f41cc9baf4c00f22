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
 *
 * This file is the lane itself: its state, its thread, delivery, and the
 * runtime's accept. The table (lane_table.c), the ClientHello
 * (lane_hello.c), the decision (lane_decide.c) and the event ring
 * (lane_events.c) are in files of their own, which keep no state (lane.h).
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

#include "lane.h"

/* ---------- state ---------- */

/* Everything below is guarded by lane_lock, taken by the lane's thread for
 * each batch of events and by the daemon's calls. */
static pthread_mutex_t lane_lock = PTHREAD_MUTEX_INITIALIZER;
static struct table *table;
static struct event_ring ring; /* what it did, for the daemon (lane_events.c) */
static struct source_counts sources; /* waiting, per source (lane_table.c) */
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

static int address_text(const struct sockaddr_storage *ss, char out[X_ADDR]) {
  int port = addr_text(ss, out);
  if (strncmp(out, "::ffff:", 7) == 0 && strchr(out, '.')) memmove(out, out + 7, strlen(out + 7) + 1);
  return port;
}

/* ---------- the lane ---------- */

/* Stops watching fd: no longer the lane's (the caller has it, or gives it on). */
static void unwatch(int fd, struct conn *c) {
  if (c->in_epoll) epoll_ctl(lane_ep, EPOLL_CTL_DEL, fd, NULL);
  c->in_epoll = 0;
  if (c->state == C_WAITING) {
    pending_total--;
    lane_listeners[c->listener].pending--;
    source_add(&sources, c->source, -1);
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
    struct event *e = new_event(&ring, O_LOST);
    if (e) e->error = -rc;
  }
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

/* Sends fd and its record on one of the service's channels, round robin;
 * once sent, fd is the channel's (kept until the service reads it). A full
 * channel is skipped; a broken one leaves the list (the daemon finds it
 * broken too, reopens it and lists it again). Returns the instance, or -1
 * when no channel took it (nothing was sent, fd is still ours). */
static int send_to_service(struct service *s, int fd, const char *rec, int len) {
  for (int tries = s->count; tries > 0 && s->count > 0; tries--) {
    int k = s->next++ % s->count;
    int sent = channel_send(s->chan[k], fd, (const uint8_t *)rec, len, 1);
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
  struct event *e = new_event(&ring, o);
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
      unwatch(fd, c); /* before the fd goes: once sent, it may be closed at any time */
      int instance = send_to_service(s, fd, rec, len);
      if (instance >= 0) { /* fd is the channel's copy now (c/channel_send.c) */
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
    struct event *e = new_event(&ring, O_RESET);
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
      struct event *e = l->failures++ ? NULL : new_event(&ring, O_ACCEPT_FAILED);
      if (e) e->error = errno;
      disarm_listener(l);
      l->resume_ns = now_ns() + 100 * 1000000LL;
      return 1;
    }
    if (l->failures) {
      struct event *e = new_event(&ring, O_ACCEPT_RECOVERED);
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
    enum limit over = over_limit(table, pending_total, &sources, c->source);
    if (over) {
      struct event *e = new_event(&ring, O_LIMIT);
      if (e) e->limit = over, e->client_port = address_text(&peer, e->client);
      close(fd);
      continue;
    }
    c->state = C_WAITING;
    pending_total++, l->pending++, source_add(&sources, c->source, 1);
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

/* Copies up to max events to out (struct event each); returns how many.
 * *dropped gets the events lost to a full ring since the last call. */
PM_EXPORT int pm_express_events(uint8_t *out, int max, int32_t *dropped) {
  pthread_mutex_lock(&lane_lock);
  int n = take_events(&ring, out, max, dropped);
  pthread_mutex_unlock(&lane_lock);
  return n;
}

/* Installs a new routing table (its text: see parse_line in lane_table.c).
 * The lane starts with the first one. 0, or -EINVAL for a table it cannot
 * read. */
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
