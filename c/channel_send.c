/*
 * The sending end of a channel: a client's fd goes to a service with its
 * record, and the sender keeps a copy of the fd until the service has read
 * that record.
 *
 * Why keep a copy: until the service reads it, a sent client sits in the
 * service's socket, out of everyone's reach. Closing our end of the channel
 * does not free it; only the service reading it or exiting does. A service
 * that stops reading (deadlock, SIGSTOP) would hold its clients for as long
 * as it lives. With a copy, the sender can end them: shutdown() acts on the
 * connection itself, whichever copy it is called on (pm_channel_close with
 * cut). A copy is let go as soon as its record is read, so it never delays
 * the end of a connection the service closes (a close only ends a TCP
 * connection once no copy is left).
 *
 * Which records are read: SIOCOUTQ tells the kernel memory of the messages
 * the service has not read yet. A message of a given length always costs
 * the same (measured once per length, on a socketpair), and a stream is
 * read in order, so the unread ones are the newest whose costs add up to
 * it. A thread waits on every channel with copies: the kernel wakes it as
 * the service reads (EPOLLOUT, edge-triggered), and it lets the read ones go.
 * The kernel says nothing while a channel holds over a quarter of its
 * buffer (it is not writable then); such a channel is looked at every
 * CROWDED_MS instead.
 *
 * Only that thread closes copies, outside the lock: the last close of a
 * connection whose service set SO_LINGER waits (up to the linger time),
 * and nothing may wait holding the lock that every send takes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "shim_internal.h"

struct sent { int fd, cost; }; /* fd: our copy of the client's, -1 for a record's rest */

struct channel {
  int chan, sndbuf;
  struct sent *ring;
  int head, count, cap;
  long cost; /* of the messages in the ring: what SIOCOUTQ shows while none is read */
};

#define MAX_CHANNELS 2048 /* the lane's services x channels, and more */
#define CROWDED_MS 5
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct channel channels[MAX_CHANNELS];
static int channel_count;
static int watch_ep = -1; /* the watcher's epoll set, made with the thread */
static int bell = -1;     /* in watch_ep: copies to close, or a channel crowded */
static int polling;       /* the watcher looks every CROWDED_MS (read outside the lock) */
static int *closing;      /* copies let go, for the watcher to close */
static int closing_count, closing_cap;

/* What a message of len bytes costs in SIOCOUTQ. Measured: the kernel's
 * accounting (skb truesize) changes with its version and build. */
static int cost_of(int len) {
  static int known[4097];
  if (len <= 0) return 0;
  int *k = len <= 4096 ? &known[len] : NULL;
  if (k && *k) return *k;
  int sv[2], cost = 0;
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) return 0;
  char *buf = calloc(1, (size_t)len);
  if (buf && send(sv[0], buf, (size_t)len, MSG_DONTWAIT) == len) ioctl(sv[0], SIOCOUTQ, &cost);
  free(buf);
  close(sv[0]);
  close(sv[1]);
  if (k && cost > 0) *k = cost;
  return cost;
}

static struct channel *find(int chan) {
  for (int i = 0; i < channel_count; i++)
    if (channels[i].chan == chan) return &channels[i];
  return NULL;
}

/* Hands a copy to the watcher to close (under the lock). */
static void let_go(int fd) {
  if (closing_count == closing_cap) {
    int cap = closing_cap ? closing_cap * 2 : 256;
    int *more = realloc(closing, (size_t)cap * sizeof *more);
    if (!more) {
      close(fd); /* no memory: close it here, as a last resort */
      return;
    }
    closing = more, closing_cap = cap;
  }
  closing[closing_count++] = fd;
}

static void ring_bell(void) {
  static const uint64_t one = 1;
  if (bell >= 0 && write(bell, &one, sizeof one) < 0) { /* full: it rings already */ }
}

/* Lets go of the copies whose records the service has read. */
static void reap(struct channel *c) {
  int unread = 0;
  if (ioctl(c->chan, SIOCOUTQ, &unread) < 0) return;
  while (c->count > 0 && (unread == 0 || c->cost > unread)) {
    struct sent *s = &c->ring[c->head];
    c->cost -= s->cost;
    if (s->fd >= 0) let_go(s->fd);
    c->head = (c->head + 1) % c->cap;
    c->count--;
  }
  if (c->count == 0) c->cost = 0;
}

/* Over a quarter of its buffer unread: the kernel will not wake us. */
static int crowded(const struct channel *c) { return c->cost * 4 > c->sndbuf; }

static void *close_lingering(void *fd) {
  close((int)(intptr_t)fd);
  return NULL;
}

/* Closes a copy; one whose close may wait (SO_LINGER set by the service:
 * the last close of a connection with data unsent waits up to the linger
 * time) on a thread of its own, so that the others are not held behind. */
static void close_copy(int fd) {
  struct linger l = {0};
  socklen_t len = sizeof l;
  pthread_t t;
  if (getsockopt(fd, SOL_SOCKET, SO_LINGER, &l, &len) == 0 && l.l_onoff && l.l_linger > 0 &&
      pthread_create(&t, NULL, close_lingering, (void *)(intptr_t)fd) == 0) {
    pthread_detach(t);
    return;
  }
  close(fd);
}

static void *watch(void *arg) {
  (void)arg;
  struct epoll_event evs[64];
  for (;;) {
    int wait_ms = __atomic_load_n(&polling, __ATOMIC_RELAXED) ? CROWDED_MS : -1;
    int n = epoll_wait(watch_ep, evs, 64, wait_ms);
    pthread_mutex_lock(&lock);
    for (int i = 0; i < n; i++) {
      if (evs[i].data.fd == bell) {
        uint64_t rung;
        if (read(bell, &rung, sizeof rung) < 0) { /* not rung */ }
        continue;
      }
      struct channel *c = find(evs[i].data.fd); /* a closed channel is no longer found */
      if (c) reap(c);
    }
    int crowd = 0;
    for (int i = 0; i < channel_count; i++) {
      if (crowded(&channels[i])) reap(&channels[i]);
      crowd |= crowded(&channels[i]);
    }
    __atomic_store_n(&polling, crowd, __ATOMIC_RELAXED);
    int *batch = closing, count = closing_count;
    closing = NULL, closing_count = closing_cap = 0;
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < count; i++) close_copy(batch[i]);
    free(batch);
    /* Reads that come meanwhile wait for the next round: under load one
     * wakeup serves many, and a copy is let go at most a millisecond late. */
    usleep(1000);
  }
  return NULL;
}

static int start_watcher(void) {
  watch_ep = epoll_create1(EPOLL_CLOEXEC);
  bell = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.fd = bell};
  pthread_t t;
  if (watch_ep < 0 || bell < 0 || epoll_ctl(watch_ep, EPOLL_CTL_ADD, bell, &ev) < 0 ||
      pthread_create(&t, NULL, watch, NULL) != 0) {
    if (watch_ep >= 0) close(watch_ep);
    if (bell >= 0) close(bell);
    watch_ep = bell = -1;
    return -1;
  }
  pthread_detach(t);
  return 0;
}

/* The channel's entry, made (and watched) on its first message. */
static struct channel *entry(int chan) {
  struct channel *c = find(chan);
  if (c) return c;
  if (channel_count == MAX_CHANNELS) return NULL;
  if (watch_ep < 0 && start_watcher() < 0) return NULL;
  struct epoll_event ev = {.events = EPOLLOUT | EPOLLET, .data.fd = chan};
  if (epoll_ctl(watch_ep, EPOLL_CTL_ADD, chan, &ev) < 0) return NULL;
  c = &channels[channel_count++];
  *c = (struct channel){.chan = chan};
  socklen_t sl = sizeof c->sndbuf;
  if (getsockopt(chan, SOL_SOCKET, SO_SNDBUF, &c->sndbuf, &sl) < 0) c->sndbuf = 0; /* always crowded */
  return c;
}

static int push(struct channel *c, int fd, int cost) {
  if (c->count == c->cap) {
    int cap = c->cap ? c->cap * 2 : 64;
    struct sent *ring = malloc((size_t)cap * sizeof *ring);
    if (!ring) return -ENOMEM;
    for (int i = 0; i < c->count; i++) ring[i] = c->ring[(c->head + i) % c->cap];
    free(c->ring);
    c->ring = ring, c->head = 0, c->cap = cap;
  }
  c->ring[(c->head + c->count++) % c->cap] = (struct sent){.fd = fd, .cost = cost};
  c->cost += cost;
  return 0;
}

/* Sends payload on a channel without waiting, with fd attached to its
 * first byte (fd < 0: bytes only, to finish a record), and keeps a copy of
 * fd until the service reads it. SCM_RIGHTS needs at least one byte
 * (docs/design.md R7). Returns the bytes sent (the fd went with them if
 * > 0), -EAGAIN if the channel is full (nothing sent), or -errno (-EPIPE:
 * the service closed the channel). A copy that cannot be made (no fd left)
 * only means that client cannot be cut if the service stalls. */
PM_EXPORT int pm_channel_send(int chan, int fd, const uint8_t *payload, int len) {
  return channel_send(chan, fd, payload, len, 0);
}

/* The same; with given, fd itself is kept as the copy once sent (the
 * caller no longer owns it then): the express lane, which would close its
 * fd at once, saves a dup and a close. */
int channel_send(int chan, int fd, const uint8_t *payload, int len, int given) {
  if (len < 1) return -EINVAL;
  struct iovec iov = {.iov_base = (void *)payload, .iov_len = (size_t)len};
  union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int))]; } ctl;
  memset(&ctl, 0, sizeof ctl);
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
  if (fd >= 0) {
    msg.msg_control = ctl.buf;
    msg.msg_controllen = sizeof ctl.buf;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
  }
  /* Under the lock: the express lane and the daemon send on one channel,
   * and the copies must be kept in the order the service reads them. */
  pthread_mutex_lock(&lock);
  ssize_t n = sendmsg(chan, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  int sent = n < 0 ? -errno : (int)n;
  if (sent > 0) {
    struct channel *c = entry(chan);
    int copy = fd < 0 || given ? fd : fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (!c || push(c, copy, cost_of(sent)) < 0) {
      if (copy >= 0) close(copy); /* the service has the client still: no end */
    } else if (!__atomic_load_n(&polling, __ATOMIC_RELAXED) && crowded(c)) {
      __atomic_store_n(&polling, 1, __ATOMIC_RELAXED);
      ring_bell(); /* the kernel will not wake the watcher for this one */
    }
  }
  pthread_mutex_unlock(&lock);
  return sent;
}

/* What a channel's service has not read yet (SIOCOUTQ), or -errno. Linux
 * counts the memory of the unread messages, not their bytes: a record of up
 * to 192 bytes costs 768. A count that does not go down is a stalled
 * service (src/actions/handoff/channels.ts). */
PM_EXPORT int pm_unread(int chan) {
  int n = 0;
  return ioctl(chan, SIOCOUTQ, &n) < 0 ? -errno : n;
}

/* How many clients on chan the service has not read yet (copies kept). */
PM_EXPORT int pm_channel_queued(int chan) {
  pthread_mutex_lock(&lock);
  struct channel *c = find(chan);
  int queued = 0;
  if (c) {
    reap(c);
    for (int i = 0; i < c->count; i++) queued += c->ring[(c->head + i) % c->cap].fd >= 0;
  }
  if (closing_count) ring_bell();
  pthread_mutex_unlock(&lock);
  return queued;
}

/* Closes a channel. With cut, the clients the service has not read yet
 * are shut down (their connections end; the service, should it read them
 * later, finds them ended); without, they stay the service's. Returns how
 * many clients were unread, or -errno. */
PM_EXPORT int pm_channel_close(int chan, int cut) {
  pthread_mutex_lock(&lock);
  struct channel *c = find(chan);
  int unread = 0;
  if (c) {
    reap(c);
    for (int i = 0; i < c->count; i++) {
      int fd = c->ring[(c->head + i) % c->cap].fd;
      if (fd < 0) continue;
      unread++;
      if (cut) shutdown(fd, SHUT_RDWR);
      let_go(fd);
    }
    free(c->ring);
    epoll_ctl(watch_ep, EPOLL_CTL_DEL, chan, NULL);
    *c = channels[--channel_count]; /* before the number can be reused */
  }
  int r = close(chan) < 0 ? -errno : unread;
  if (closing_count) ring_bell();
  pthread_mutex_unlock(&lock);
  return r;
}
