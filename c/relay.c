/*
 * The relay: copies bytes between two sockets, both ways, in one C thread,
 * for the HTTPS bridge and the proxy action, so that no byte crosses into
 * JavaScript.
 *
 * Each direction reads into the thread's one buffer and writes at once. Only
 * what the destination does not take is kept (malloc'd), and its source is
 * not read again until that is written: a relay costs a few dozen bytes
 * while data flows, and a slow reader slows its writer down. The end of a
 * source half-closes its destination (shutdown SHUT_WR) once everything is
 * written, and the other direction goes on. An error on either socket ends
 * both. When both directions have ended, both sockets are closed and the
 * relay's end is reported to pm_relay_wait().
 *
 * pm_relay_start() only queues the pair and rings a bell (an eventfd): the
 * relay thread registers the sockets itself, so a relay is only ever
 * touched by that thread, and a failure to register ends it like any
 * other error, reported.
 *
 * The sockets are watched edge-triggered, so each direction is pumped until
 * its source is empty or its destination full; a direction that keeps
 * flowing is put back on a list after PUMP_ROUNDS reads, so one bulk
 * transfer cannot starve the other relays.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "shim_internal.h"

#define CHUNK (64 * 1024)
#define PUMP_ROUNDS 16
#define ENDED_CAP 4096

struct direction {
  int from, to;
  char *held; /* what `to` did not take yet */
  int held_len, held_off;
  int eof;   /* `from` ended; `to` is half-closed once held is written */
  int ended; /* and it was */
  int64_t bytes;
};

struct relay {
  int32_t id;
  struct direction d[2]; /* d[0]: a to b, d[1]: b to a */
  int error;             /* errno of what ended it early, or 0 */
  int hangup;            /* a socket reported EPOLLHUP or EPOLLERR */
  int again;             /* on the again list */
  struct relay *next;    /* on the again list, or on the new list */
};

/* What pm_relay_wait() reports per relay: id, errno (0: both ways ended),
 * bytes a to b, bytes b to a. */
struct ended {
  int64_t id, error, a_to_b, b_to_a;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ended_cond = PTHREAD_COND_INITIALIZER;
static struct ended ended_ring[ENDED_CAP];
static int ended_head, ended_len;
static struct relay *new_list; /* started, not registered yet */
static int32_t next_id = 1;
static int ep = -1;   /* the relay thread's epoll set; NULL data: the bell */
static int bell = -1; /* rung when new_list gets a relay */
static struct relay *again_list; /* relay thread only */

static void report(struct relay *r) {
  pthread_mutex_lock(&lock);
  /* The ring only fills if JavaScript stops reading; then the oldest
   * report is overwritten (its relay's promise never settles, but its
   * sockets are closed all the same). */
  if (ended_len == ENDED_CAP) {
    ended_head = (ended_head + 1) % ENDED_CAP;
    ended_len--;
  }
  ended_ring[(ended_head + ended_len++) % ENDED_CAP] =
      (struct ended){r->id, r->error, r->d[0].bytes, r->d[1].bytes};
  pthread_cond_signal(&ended_cond);
  pthread_mutex_unlock(&lock);
}

static void finish(struct relay *r) {
  int a = r->d[0].from, b = r->d[1].from;
  epoll_ctl(ep, EPOLL_CTL_DEL, a, NULL);
  epoll_ctl(ep, EPOLL_CTL_DEL, b, NULL);
  close(a);
  close(b);
  free(r->d[0].held);
  free(r->d[1].held);
  report(r);
  free(r);
}

/* Moves what it can. 1: this direction has ended; 0: it waits for its
 * source or its destination; 2: it could go on (PUMP_ROUNDS reached);
 * -errno on an error. */
static int pump(struct direction *d, char *buf) {
  for (int round = 0; !d->ended; round++) {
    if (d->held) {
      ssize_t w = send(d->to, d->held + d->held_off, (size_t)(d->held_len - d->held_off), MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) return errno == EAGAIN ? 0 : -errno;
      d->held_off += (int)w;
      if (d->held_off < d->held_len) continue; /* likely EAGAIN next: then wait */
      free(d->held);
      d->held = NULL;
      continue;
    }
    if (d->eof) {
      shutdown(d->to, SHUT_WR); /* fails only if `to` is gone: its own direction tells */
      d->ended = 1;
      return 1;
    }
    if (round >= PUMP_ROUNDS) return 2;
    ssize_t n;
    do n = recv(d->from, buf, CHUNK, 0);
    while (n < 0 && errno == EINTR);
    if (n == 0) {
      d->eof = 1;
      continue;
    }
    if (n < 0) return errno == EAGAIN ? 0 : -errno;
    d->bytes += n;
    ssize_t w;
    do w = send(d->to, buf, (size_t)n, MSG_NOSIGNAL);
    while (w < 0 && errno == EINTR);
    if (w < 0 && errno != EAGAIN) return -errno;
    if (w < 0) w = 0;
    if (w < n) {
      if (!(d->held = malloc((size_t)(n - w)))) return -ENOMEM;
      memcpy(d->held, buf + w, (size_t)(n - w));
      d->held_len = (int)(n - w);
      d->held_off = 0;
      return 0;
    }
  }
  return 1;
}

static int socket_error(int fd) {
  int e = 0;
  socklen_t len = sizeof e;
  getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len);
  return e;
}

/* Pumps both directions; ends the relay, or puts it on the again list. */
static void run(struct relay *r, char *buf) {
  int more = 0;
  for (int i = 0; i < 2; i++) {
    int s = pump(&r->d[i], buf);
    if (s < 0) {
      r->error = -s;
      finish(r);
      return;
    }
    if (s == 2) more = 1;
  }
  if (r->hangup) {
    /* A socket is shut both ways. If by a reset that no read or write
     * above ran into (say, it came after the peer's FIN), nothing more can
     * pass: end now rather than wait on the other side. Otherwise it is
     * our own half-close meeting the peer's, and what is left flows on. */
    r->hangup = 0;
    int e = socket_error(r->d[0].from);
    if (!e) e = socket_error(r->d[1].from);
    if (e) {
      r->error = e;
      finish(r);
      return;
    }
  }
  if (r->d[0].ended && r->d[1].ended) {
    finish(r);
  } else if (more && !r->again) {
    r->again = 1;
    r->next = again_list;
    again_list = r;
  }
}

/* Registers the relays started since the last bell. */
static void register_new(void) {
  uint64_t rung;
  if (read(bell, &rung, sizeof rung) < 0) { /* EAGAIN: rung and read already */
  }
  pthread_mutex_lock(&lock);
  struct relay *list = new_list;
  new_list = NULL;
  pthread_mutex_unlock(&lock);
  while (list) {
    struct relay *r = list;
    list = r->next;
    /* Both sockets may hold bytes already (the peeked ones were never
     * consumed): an edge-triggered add reports them at once. */
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = r};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, r->d[0].from, &ev) < 0 ||
        epoll_ctl(ep, EPOLL_CTL_ADD, r->d[1].from, &ev) < 0) {
      r->error = errno;
      finish(r);
    }
  }
}

static void *relay_thread(void *arg) {
  (void)arg;
  static char buf[CHUNK];
  struct epoll_event events[64];
  for (;;) {
    int n = epoll_wait(ep, events, 64, again_list ? 0 : -1);
    if (n < 0 && errno != EINTR) return NULL;
    /* A relay can be named twice in one batch (both its sockets), or be
     * on the again list too: run it once, by marking it again first. */
    struct relay *list = again_list;
    again_list = NULL;
    for (int i = 0; i < n; i++) {
      struct relay *r = events[i].data.ptr;
      if (!r) {
        register_new();
      } else {
        if (events[i].events & (EPOLLHUP | EPOLLERR)) r->hangup = 1;
        if (r->again) continue;
        r->again = 1;
        r->next = list;
        list = r;
      }
    }
    while (list) {
      struct relay *r = list;
      list = r->next;
      r->again = 0;
      run(r, buf);
    }
  }
  return NULL;
}

static int start_thread(void) {
  if (ep >= 0) return 0;
  ep = epoll_create1(EPOLL_CLOEXEC);
  bell = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
  pthread_t th;
  int e = 0;
  if (ep < 0 || bell < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, bell, &ev) < 0) e = errno;
  else e = pthread_create(&th, NULL, relay_thread, NULL);
  if (e != 0) {
    if (ep >= 0) close(ep);
    if (bell >= 0) close(bell);
    ep = bell = -1;
    return -e;
  }
  pthread_detach(th);
  return 0;
}

/* Bytes go on at once, as the two ends would send them themselves. */
static void no_delay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static int prepare(int fd) {
  int e = pm_set_nonblocking(fd, 1);
  if (e == 0) no_delay(fd);
  return e;
}

/* Queues a prepared relay for the relay thread; returns its id. */
static int enqueue(struct relay *r) {
  int e;
  pthread_mutex_lock(&lock);
  if ((e = start_thread()) < 0) {
    pthread_mutex_unlock(&lock);
    return e;
  }
  int32_t id = r->id = next_id;
  next_id = next_id == INT32_MAX ? 1 : next_id + 1;
  int ring = new_list == NULL; /* else it rang already, and is not answered yet */
  r->next = new_list;
  new_list = r;
  pthread_mutex_unlock(&lock);
  uint64_t one = 1;
  if (ring && write(bell, &one, sizeof one) < 0) { /* EAGAIN: rung already */
  }
  return id;
}

static struct relay *make(int a, int b) {
  struct relay *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  r->d[0] = (struct direction){.from = a, .to = b};
  r->d[1] = (struct direction){.from = b, .to = a};
  return r;
}

/* Copies a to b and b to a until both directions ended, then closes both.
 * Returns the relay's id (> 0), after which the relay owns a and b and
 * reports its end to pm_relay_wait(); or -errno, and the caller still owns
 * them. */
PM_EXPORT int pm_relay_start(int a, int b) {
  int e;
  if ((e = prepare(a)) < 0 || (e = prepare(b)) < 0) return e;
  struct relay *r = make(a, b);
  if (!r) return -ENOMEM;
  if ((e = enqueue(r)) < 0) free(r);
  return e;
}

/* The same, with b a new connection to 127.0.0.1:port (the HTTPS bridge's
 * internal server), made without waiting: a's bytes are held until it is
 * established, and a refusal ends the relay (ECONNREFUSED). *local_port
 * gets b's own port, by which the server can tell who it serves. Returns
 * the relay's id, after which it owns a; or -errno, and the caller still
 * owns a. */
PM_EXPORT int pm_relay_to_loopback(int a, int port, int32_t *local_port) {
  int e = prepare(a);
  if (e < 0) return e;
  int b = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (b < 0) return -errno;
  no_delay(b);
  struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  struct sockaddr_in me;
  socklen_t len = sizeof me;
  struct relay *r = NULL;
  if ((connect(b, (struct sockaddr *)&to, sizeof to) < 0 && errno != EINPROGRESS) ||
      getsockname(b, (struct sockaddr *)&me, &len) < 0) {
    e = -errno;
  } else if (!(r = make(a, b))) {
    e = -ENOMEM;
  } else if ((e = enqueue(r)) > 0) {
    *local_port = ntohs(me.sin_port);
    return e;
  }
  free(r);
  close(b);
  return e;
}

/* Waits up to timeout_ms for relays to end; copies up to max reports (4
 * int64 each: id, errno or 0, bytes a to b, bytes b to a) to out and
 * returns how many. */
PM_EXPORT int pm_relay_wait(int64_t *out, int max, int timeout_ms) {
  pthread_mutex_lock(&lock);
  if (ended_len == 0 && timeout_ms > 0) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
      until.tv_sec++;
      until.tv_nsec -= 1000000000L;
    }
    while (ended_len == 0) {
      if (pthread_cond_timedwait(&ended_cond, &lock, &until) == ETIMEDOUT) break;
    }
  }
  int n = ended_len < max ? ended_len : max;
  for (int i = 0; i < n; i++) {
    struct ended *e = &ended_ring[(ended_head + i) % ENDED_CAP];
    out[4 * i] = e->id;
    out[4 * i + 1] = e->error;
    out[4 * i + 2] = e->a_to_b;
    out[4 * i + 3] = e->b_to_a;
  }
  ended_head = (ended_head + n) % ENDED_CAP;
  ended_len -= n;
  pthread_mutex_unlock(&lock);
  return n;
}
