/*
 * The receiving side of handoffs, for a protocol service whose runtime has
 * this library preloaded: handed-off clients are accepted by the service's
 * own listener, as if they had connected to it.
 *
 * The service listens on a private loopback port (a node:net server) and
 * on the Unix socket where the daemon opens its channels. pm_receiver_open
 * takes the listener out of the runtime's epoll set (and refuses anyone
 * who connects to it), and puts in its place, under the listener's token,
 * an epoll set of ours holding the Unix socket and every channel. When one
 * of them is readable, the runtime calls accept4 on the listener; our
 * accept4 (pm_accept4) comes here: it accepts and checks channels, reads
 * records and fds, pairs them (docs/handoff.md), and returns the next
 * client's fd as the accepted socket. Its record waits under the client's
 * port until the service takes it (pm_receiver_take). No
 * thread and no JavaScript between the channel and the accept.
 *
 * Pairing: each record is one line sent with one fd by one sendmsg, so the
 * fd comes with the record's first byte and one recvmsg never holds the
 * fds of two records: the i-th fd belongs to the i-th record. An fd lost
 * to MSG_CTRUNC (the service out of fds) keeps its place as LOST, so that
 * later records keep their own (as src/service/record_assembly.ts does).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "shim_internal.h"

#define RX_MAX 8           /* receivers per process */
#define RX_CHANNELS 64     /* channels per receiver (one per daemon worker) */
#define RX_RECORD_MAX 65536
#define RX_FDS 64          /* fds that came ahead of their records, per channel */
#define RX_READY 256       /* paired, waiting for the runtime's accept */
#define RX_TAKEN 1024      /* accepted, waiting for the service to take the record */
#define RX_PROBLEMS 64
#define RX_PROBLEM_LEN 200
#define LOST (-2)

struct rx_channel {
  int fd;
  char *text; /* the bytes of the record being read */
  int len, cap;
  int skipping; /* dropping the rest of a record that was too long */
  int fds[RX_FDS];
  int nfds;
};

struct rx_pair {
  int fd;
  char *record;
};

struct rx_taken {
  int remote_port;
  char *record;
};

struct receiver {
  int listener, set, runtime_set, unix_fd, sender_uid;
  struct rx_channel chans[RX_CHANNELS];
  int nchan;
  struct rx_pair ready[RX_READY];
  int ready_head, ready_len;
  struct rx_taken taken[RX_TAKEN];
  int ntaken;
  char problems[RX_PROBLEMS][RX_PROBLEM_LEN];
  int problem_head, problem_len, problems_dropped;
};

static pthread_mutex_t rx_lock = PTHREAD_MUTEX_INITIALIZER;
static struct receiver *receivers[RX_MAX];
static atomic_int receiver_count; /* read without the lock by every accept4 */

static struct receiver *find_receiver(int listener) {
  for (int i = 0; i < atomic_load(&receiver_count); i++)
    if (receivers[i]->listener == listener) return receivers[i];
  return NULL;
}

static void problem(struct receiver *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(struct receiver *r, const char *fmt, ...) {
  if (r->problem_len == RX_PROBLEMS) {
    r->problems_dropped++;
    return;
  }
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->problems[(r->problem_head + r->problem_len) % RX_PROBLEMS], RX_PROBLEM_LEN, fmt, ap);
  va_end(ap);
  r->problem_len++;
}

/* ---------- channels ---------- */

static void accept_channels(struct receiver *r) {
  for (;;) {
    int c = real_accept(r->unix_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) problem(r, "accepting a channel failed: %s", strerror(errno));
      return;
    }
    struct ucred peer;
    socklen_t pl = sizeof peer;
    if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &peer, &pl) < 0) {
      problem(r, "refused a channel: no peer credentials (%s)", strerror(errno));
      close(c);
      continue;
    }
    if (r->sender_uid >= 0 && (int)peer.uid != r->sender_uid) {
      /* only the daemon's user may hand us sockets */
      problem(r, "refused a channel from uid %u (pid %d)", peer.uid, peer.pid);
      close(c);
      continue;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = c};
    if (r->nchan == RX_CHANNELS || epoll_ctl(r->set, EPOLL_CTL_ADD, c, &ev) < 0) {
      problem(r, "refused a channel: %d open already", r->nchan);
      close(c);
      continue;
    }
    r->chans[r->nchan++] = (struct rx_channel){.fd = c};
  }
}

/* The daemon closed the channel (or it broke): fds that never got their
 * record are closed, a record cut short is said. */
static void end_channel(struct receiver *r, int k) {
  struct rx_channel *c = &r->chans[k];
  for (int i = 0; i < c->nfds; i++)
    if (c->fds[i] >= 0) close(c->fds[i]);
  if (c->len > 0 || c->nfds > 0) problem(r, "handoff dropped: a record cut short by the channel's end");
  epoll_ctl(r->set, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  free(c->text);
  r->chans[k] = r->chans[--r->nchan];
}

static void take_fds(struct receiver *r, struct rx_channel *c, const int *fds, int n, int truncated) {
  static const int lost[1] = {LOST};
  if (truncated && n == 0) fds = lost, n = 1;
  for (int i = 0; i < n; i++) {
    if (c->nfds == RX_FDS) { /* a sender that sends fds without records */
      if (fds[i] >= 0) close(fds[i]);
      problem(r, "handoff dropped: more than %d fds without their records", RX_FDS);
      continue;
    }
    c->fds[c->nfds++] = fds[i];
  }
}

static int take_fd(struct rx_channel *c) {
  if (c->nfds == 0) return -1;
  int fd = c->fds[0];
  memmove(c->fds, c->fds + 1, sizeof(int) * (size_t)--c->nfds);
  return fd;
}

/* One complete line: pairs it with its fd and queues the pair. */
static void pair_record(struct receiver *r, struct rx_channel *c, const char *line, int len) {
  int fd = take_fd(c);
  if (fd == -1) return problem(r, "handoff dropped: a record came without an fd");
  if (fd == LOST) return problem(r, "handoff dropped: its fd was lost (MSG_CTRUNC: out of fds?)");
  char *record = strndup(line, (size_t)len);
  if (!record) {
    close(fd);
    return problem(r, "handoff dropped: out of memory");
  }
  r->ready[(r->ready_head + r->ready_len++) % RX_READY] = (struct rx_pair){fd, record};
}

/* Pairs the channel's complete lines while there is room for them; keeps
 * the rest. */
static void split_records(struct receiver *r, struct rx_channel *c) {
  if (!c->text) return; /* nothing read on this channel yet */
  int start = 0;
  char *nl = NULL;
  while (r->ready_len < RX_READY && (nl = memchr(c->text + start, '\n', (size_t)(c->len - start)))) {
    int end = (int)(nl - c->text);
    if (c->skipping) c->skipping = 0; /* the end of the record that was dropped */
    else pair_record(r, c, c->text + start, end - start);
    start = end + 1;
  }
  memmove(c->text, c->text + start, (size_t)(c->len - start));
  c->len -= start;
  if (!nl && c->len == RX_RECORD_MAX) { /* no newline in 64 KiB: drop that record, and its fd */
    int fd = c->skipping ? -1 : take_fd(c);
    if (fd >= 0) close(fd);
    if (!c->skipping) problem(r, "handoff dropped: a record longer than 64 KiB");
    c->skipping = 1;
    c->len = 0;
  }
}

/* Reads what the channel holds while there is room for what it pairs (the
 * rest waits in the socket: our set is level-triggered). Returns 0 when
 * the channel ended (it is gone from the list). */
static int read_channel(struct receiver *r, int k) {
  struct rx_channel *c = &r->chans[k];
  for (;;) {
    split_records(r, c);
    if (r->ready_len == RX_READY) return 1;
    if (c->cap - c->len < 4096 && c->cap < RX_RECORD_MAX) {
      int cap = c->cap ? c->cap * 4 : 4096;
      if (cap > RX_RECORD_MAX) cap = RX_RECORD_MAX;
      char *text = realloc(c->text, (size_t)cap);
      if (!text) return problem(r, "a channel dropped: out of memory"), end_channel(r, k), 0;
      c->text = text, c->cap = cap;
    }
    int32_t fds[16], info[2];
    int n = pm_channel_recv(c->fd, (uint8_t *)c->text + c->len, c->cap - c->len, fds, 16, info);
    if (n == -EINTR) continue;
    if (n == -EAGAIN || n == -EWOULDBLOCK) return 1;
    if (n >= 0) take_fds(r, c, fds, info[0], info[1]);
    if (n <= 0) return end_channel(r, k), 0;
    c->len += (int)n;
  }
}

/* ---------- the runtime's accept ---------- */

static struct rx_channel *channel_by_fd(struct receiver *r, int fd, int *k) {
  for (*k = 0; *k < r->nchan; (*k)++)
    if (r->chans[*k].fd == fd) return &r->chans[*k];
  return NULL;
}

/* Moves along: channels accepted, read, records paired. 0 when nothing
 * was there. */
static int poll_set(struct receiver *r) {
  struct epoll_event evs[32];
  int n = epoll_wait(r->set, evs, 32, 0);
  for (int i = 0; i < n; i++) {
    int k;
    if (evs[i].data.fd == r->unix_fd) accept_channels(r);
    else if (channel_by_fd(r, evs[i].data.fd, &k)) read_channel(r, k);
  }
  return n > 0;
}

static void forget_taken(struct receiver *r, int i) {
  free(r->taken[i].record);
  memmove(&r->taken[i], &r->taken[i + 1], sizeof r->taken[0] * (size_t)(r->ntaken - i - 1));
  r->ntaken--;
}

/* The next paired client, as the kernel's accept4 would return it; its
 * record is kept under the client's port. -1 (EAGAIN) when none is
 * there. */
static int next_client(struct receiver *r, struct sockaddr *addr, socklen_t *addrlen, int flags) {
  for (;;) {
    while (r->ready_len > 0) {
      struct rx_pair p = r->ready[r->ready_head];
      r->ready_head = (r->ready_head + 1) % RX_READY, r->ready_len--;
      struct sockaddr_storage peer;
      socklen_t pl = sizeof peer;
      if (getpeername(p.fd, (struct sockaddr *)&peer, &pl) < 0) {
        close(p.fd); /* the client left already (or it is not a socket) */
        free(p.record);
        continue;
      }
      /* O_NONBLOCK is the sender's choice, shared with it: give the
       * runtime what it asked for. Close-on-exec came with the recvmsg. */
      int fl = fcntl(p.fd, F_GETFL);
      int want = (flags & SOCK_NONBLOCK) ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
      if (fl != want) fcntl(p.fd, F_SETFL, want);
      if (!(flags & SOCK_CLOEXEC)) fcntl(p.fd, F_SETFD, 0);
      if (r->ntaken == RX_TAKEN) {
        problem(r, "a record never taken by the service was dropped");
        forget_taken(r, 0);
      }
      struct rx_taken *t = &r->taken[r->ntaken++];
      t->remote_port = sockaddr_port(&peer);
      t->record = p.record;
      if (addr && addrlen) {
        memcpy(addr, &peer, *addrlen < pl ? *addrlen : pl);
        *addrlen = pl;
      }
      return p.fd;
    }
    /* Lines left over when the queue was full come before new bytes. */
    for (int k = 0; k < r->nchan && r->ready_len < RX_READY; k++) split_records(r, &r->chans[k]);
    if (r->ready_len == 0 && !poll_set(r)) break;
  }
  errno = EAGAIN;
  return -1;
}

int receiver_accept(int listener, struct sockaddr *addr, socklen_t *addrlen, int flags, int *fd) {
  if (atomic_load(&receiver_count) == 0) return 0;
  pthread_mutex_lock(&rx_lock);
  struct receiver *r = find_receiver(listener);
  if (r) *fd = next_client(r, addr, addrlen, flags);
  int saved = errno;
  pthread_mutex_unlock(&rx_lock);
  errno = saved;
  return r != NULL;
}

/* ---------- for the service (ffi/receiver.ts) ---------- */

/* Makes the listener on 127.0.0.1:port (or [::1]:port) the receiver of the
 * channels that connect to unix_fd (a listening Unix socket, which the
 * receiver now owns), from processes of sender_uid (-1: anyone). Returns
 * the listener's fd, or -errno. */
PM_EXPORT int pm_receiver_open(int port, int unix_fd, int sender_uid) {
  int lfd = find_listening_fd(0, NULL, port);
  if (lfd < 0) return lfd;
  struct receiver *r = calloc(1, sizeof *r);
  if (!r) return -ENOMEM;
  *r = (struct receiver){.listener = lfd, .unix_fd = unix_fd, .sender_uid = sender_uid, .set = -1};
  pm_set_nonblocking(unix_fd, 1);
  int rc = lfd;
  r->set = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = unix_fd};
  if (r->set < 0 || epoll_ctl(r->set, EPOLL_CTL_ADD, unix_fd, &ev) < 0) rc = -errno;
  pthread_mutex_lock(&rx_lock);
  if (rc >= 0 && (find_receiver(lfd) || atomic_load(&receiver_count) == RX_MAX)) rc = -EEXIST;
  if (rc >= 0) {
    /* Our set takes the listener's place in the runtime's set, and the
     * listener stops listening, so that nobody who connects to it directly
     * is ever served (they are refused). */
    r->runtime_set = take_listener_token(lfd, r->set);
    if (r->runtime_set < 0) rc = -ENOENT;
    else {
      shutdown(lfd, SHUT_RD);
      receivers[atomic_load(&receiver_count)] = r;
      atomic_fetch_add(&receiver_count, 1);
    }
  }
  pthread_mutex_unlock(&rx_lock);
  if (rc < 0) {
    if (r->set >= 0) close(r->set);
    free(r);
  }
  return rc;
}

/* The record of the connection accepted from the client's remote_port,
 * copied into out (cap bytes), and forgotten. Its length, or -ENOENT, or
 * -ENOSPC. The service takes each record as the runtime gives it the
 * connection, so the oldest record of that port is the one: records wait
 * here only between the accept and that moment, and the port tells them
 * apart should one be left behind (the runtime dropping a connection). */
PM_EXPORT int pm_receiver_take(int listener, int remote_port, char *out, int cap) {
  int rc = -ENOENT;
  pthread_mutex_lock(&rx_lock);
  struct receiver *r = find_receiver(listener);
  int found = -1;
  for (int i = 0; r && i < r->ntaken && found < 0; i++)
    if (r->taken[i].remote_port == remote_port) found = i;
  if (found >= 0) {
    int len = (int)strlen(r->taken[found].record);
    if (len > cap) rc = -ENOSPC;
    else {
      memcpy(out, r->taken[found].record, (size_t)len);
      rc = len;
      forget_taken(r, found);
    }
  }
  pthread_mutex_unlock(&rx_lock);
  return rc;
}

/* What went wrong since the last call, one message per line, into out.
 * Returns the length (0: nothing), or -ENOENT. */
PM_EXPORT int pm_receiver_problems(int listener, char *out, int cap) {
  pthread_mutex_lock(&rx_lock);
  struct receiver *r = find_receiver(listener);
  int len = r ? 0 : -ENOENT;
  while (r && r->problem_len > 0 && len + RX_PROBLEM_LEN + 1 <= cap) {
    len += snprintf(out + len, (size_t)(cap - len), "%s\n", r->problems[r->problem_head]);
    r->problem_head = (r->problem_head + 1) % RX_PROBLEMS, r->problem_len--;
  }
  if (r && r->problem_len == 0 && r->problems_dropped > 0 && len + 64 <= cap) {
    len += snprintf(out + len, (size_t)(cap - len), "%d more problems not told\n", r->problems_dropped);
    r->problems_dropped = 0;
  }
  pthread_mutex_unlock(&rx_lock);
  return len;
}

/* Stops receiving: channels and the Unix socket are closed, clients not
 * accepted yet too. Call before the listener is closed. 0, or -ENOENT. */
PM_EXPORT int pm_receiver_close(int listener) {
  pthread_mutex_lock(&rx_lock);
  int n = atomic_load(&receiver_count), i = 0;
  while (i < n && receivers[i]->listener != listener) i++;
  if (i == n) {
    pthread_mutex_unlock(&rx_lock);
    return -ENOENT;
  }
  struct receiver *r = receivers[i];
  receivers[i] = receivers[n - 1];
  atomic_fetch_sub(&receiver_count, 1);
  pthread_mutex_unlock(&rx_lock);
  epoll_ctl(r->runtime_set, EPOLL_CTL_DEL, r->set, NULL);
  while (r->nchan > 0) end_channel(r, 0);
  for (; r->ready_len > 0; r->ready_len--, r->ready_head = (r->ready_head + 1) % RX_READY) {
    close(r->ready[r->ready_head].fd);
    free(r->ready[r->ready_head].record);
  }
  while (r->ntaken > 0) forget_taken(r, 0);
  close(r->set);
  close(r->unix_fd);
  free(r);
  return 0;
}
