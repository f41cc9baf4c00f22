/*
 * Everything that reaches into the runtime's internals (docs/design.md R2,
 * R4, R9): its epoll sets, found in /proc/self/fd and read through
 * /proc/self/fdinfo; release (a handed-off socket let go of without a FIN);
 * the accept4 interposer and accept injection (the runtime's own accept
 * returns the sockets portmux queued); and a held listening socket taking
 * the place of a runtime listener.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shim_internal.h"

/* ---------- release: let go of a handed-off socket without FIN ---------- */

/* The runtime's epoll sets, found in /proc/self/fd and cached. */
static pthread_mutex_t epoll_lock = PTHREAD_MUTEX_INITIALIZER;
static int epoll_fds[64];
static int epoll_count = -1;

void epoll_sets_changed(void) {
  pthread_mutex_lock(&epoll_lock);
  epoll_count = -1;
  pthread_mutex_unlock(&epoll_lock);
}

static void rescan_epolls(void) {
  epoll_count = 0;
  DIR *d = opendir("/proc/self/fd");
  if (!d) return;
  char path[32], target[64];
  int fd;
  while (epoll_count < 64 && (fd = next_open_fd(d)) >= 0) {
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, target, sizeof target - 1);
    if (n <= 0) continue;
    target[n] = 0;
    if (strcmp(target, "anon_inode:[eventpoll]") == 0) epoll_fds[epoll_count++] = fd;
  }
  closedir(d);
}

/* Removes fd from the process's epoll sets: from the one that held the
 * last fd first (the runtime's, nearly always), and stops at the first
 * that held it (the preread waiter removes its own registration first). */
static int delete_from_epolls(int fd) {
  static int last = 0;
  for (int k = 0; k < epoll_count; k++) {
    int i = (last + k) % epoll_count;
    if (epoll_ctl(epoll_fds[i], EPOLL_CTL_DEL, fd, NULL) == 0) {
      last = i;
      return 1;
    }
  }
  return 0;
}

/* Makes fd safe to close from the runtime without touching the connection:
 * (1) remove it from the process's epoll set that holds it (the runtime's:
 *     the preread waiter removes its own registration first), so no epoll
 *     item is left pointing at runtime memory that is about to be freed;
 * (2) dup2 an unconnected socket onto the fd number, so the runtime's
 *     shutdown(SHUT_WR) + close() hit the placeholder, not the connection,
 *     which a service (or the injected listener) now owns (docs/design.md R2).
 * Returns how many epoll sets held it. */
PM_EXPORT int pm_release(int fd) {
  /* One placeholder serves every release: dup3 copies it and leaves it
   * open, so a release needs no new fd and cannot fail for want of one
   * (it runs after a send that cannot be taken back). */
  static int placeholder = -1;
  pthread_mutex_lock(&epoll_lock);
  if (placeholder < 0) placeholder = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (placeholder < 0) {
    int r = -errno;
    pthread_mutex_unlock(&epoll_lock);
    return r;
  }
  if (epoll_count < 0) rescan_epolls();
  int removed = delete_from_epolls(fd);
  if (removed == 0) { /* a set we have not seen yet (or a stale cache) */
    rescan_epolls();
    removed = delete_from_epolls(fd);
  }
  int r = dup3(placeholder, fd, O_CLOEXEC) < 0 ? -errno : removed;
  pthread_mutex_unlock(&epoll_lock);
  return r;
}

/* ---------- accept injection (the LD_PRELOAD side) ---------- */

#define MAX_LISTENERS 64 /* internal HTTPS servers: one per certificate, twice during a reload */
#define QUEUE_CAP 4096

struct injected_listener {
  int fd;
  ino_t ino; /* the socket's identity: a number can be closed and reused before it is unregistered */
  /* A doorbell: an eventfd in the runtime's epoll set under the
   * listener's own token; writing to it makes the runtime call accept4. */
  int efd;
  /* 1 for an express listener (express_lane.c): the express lane accepts
   * its connections; the runtime gets only those the lane queues. */
  int express;
  int head, len;
  int queue[QUEUE_CAP];
  /* For tests only (pm_inject_fail_next): the errno the next accept
   * returns, to prove the daemon survives a server that stops. */
  int fail_next;
};

static pthread_mutex_t inject_lock = PTHREAD_MUTEX_INITIALIZER;
static struct injected_listener listeners[MAX_LISTENERS];
static int listener_count;

typedef int (*accept4_fn)(int, struct sockaddr *, socklen_t *, int);

static accept4_fn real_accept4(void) {
  static accept4_fn fn;
  if (!fn) fn = (accept4_fn)dlsym(RTLD_NEXT, "accept4");
  return fn;
}

int real_accept(int fd, struct sockaddr *addr, socklen_t *addrlen, int flags) {
  return real_accept4()(fd, addr, addrlen, flags);
}

static struct injected_listener *find_listener(int fd) {
  for (int i = 0; i < listener_count; i++)
    if (listeners[i].fd == fd) return &listeners[i];
  return NULL;
}

static ino_t socket_ino(int fd) {
  struct stat st;
  return fstat(fd, &st) == 0 ? st.st_ino : 0;
}

/* The registration of fd, if fd is still the socket registered: when a
 * site's server stops, the runtime closes its listener before the site
 * unregisters it, and the number may meanwhile be another socket's. */
static struct injected_listener *live_listener(int fd) {
  struct injected_listener *l = find_listener(fd);
  return l && socket_ino(fd) == l->ino ? l : NULL;
}

static int pop_locked(struct injected_listener *l) {
  if (l->len == 0) return -1;
  int fd = l->queue[l->head];
  l->head = (l->head + 1) % QUEUE_CAP;
  l->len--;
  return fd;
}

/* Removes a registration: its queued fds are closed (nobody will take
 * them), its doorbell leaves the epoll set. Returns how many were queued. */
static int remove_locked(struct injected_listener *l) {
  int closed = 0, q;
  while ((q = pop_locked(l)) >= 0) { close(q); closed++; }
  close(l->efd);
  *l = listeners[--listener_count];
  return closed;
}

/* A registration left under fd's number by a socket closed since. */
static void forget_stale_locked(int fd) {
  struct injected_listener *l = find_listener(fd);
  if (l && !live_listener(fd)) remove_locked(l);
}

/* Closes with a reset (SO_LINGER 0): a stranger on an internal port gets
 * nothing, and leaves no TIME_WAIT behind. */
static void close_abruptly(int fd) {
  struct linger now = {.l_onoff = 1, .l_linger = 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &now, sizeof now);
  close(fd);
}

/* Hands out a queued fd as if the kernel had accepted it: applies the flags
 * and fills in the peer address (known, or asked of the socket). Queued fds
 * are non-blocking and close-on-exec already (pm_inject_push), so the
 * runtime, which asks for both, costs no fcntl here. Returns -1 when the
 * client is gone (fd closed): the caller goes on to the next. */
static int deliver(int fd, const struct sockaddr_storage *peer, struct sockaddr *addr,
                   socklen_t *addrlen, int flags) {
  if (addr && addrlen && peer) {
    socklen_t len = peer->ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    memcpy(addr, peer, len < *addrlen ? len : *addrlen);
    *addrlen = len;
  } else if (addr && addrlen && getpeername(fd, addr, addrlen) < 0) {
    close(fd);
    return -1;
  }
  if (!(flags & SOCK_NONBLOCK)) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  if (!(flags & SOCK_CLOEXEC)) fcntl(fd, F_SETFD, 0);
  return fd;
}

/* The next queued fd of the injected listener fd, delivered; -1 with
 * errno EAGAIN when the queue is empty. A client gone while queued is
 * skipped, or with say_gone said as the kernel would, ECONNABORTED. */
static int deliver_queued(int fd, struct sockaddr *addr, socklen_t *addrlen, int flags,
                          int say_gone) {
  for (;;) {
    pthread_mutex_lock(&inject_lock);
    struct injected_listener *l = find_listener(fd); /* its identity checked by pm_accept4 */
    int q = l ? pop_locked(l) : -1;
    pthread_mutex_unlock(&inject_lock);
    if (q < 0) {
      errno = EAGAIN;
      return -1;
    }
    int c = deliver(q, NULL, addr, addrlen, flags);
    if (c >= 0) return c;
    if (say_gone) {
      errno = ECONNABORTED;
      return -1;
    }
  }
}

/* Our accept4 (exported as accept4 below). For an injected listener it
 * returns queued client fds; real connections on that listener are
 * strangers, closed: nothing is served to a process that connects to the
 * internal port directly.
 *
 * What the runtime's accept may see. Deno.serve (2.9.6) stops its server
 * for good on any accept error but EAGAIN (ECONNABORTED included:
 * tests/https_resets_test.ts), so for an internal HTTPS listener this
 * returns a client's fd or EAGAIN, nothing else: a client that left while
 * queued is skipped (its line was written when it was queued), a failing
 * accept of a stranger ends the drain, and the lane's accept
 * errors stay in the lane (accept_from). The daemon's own accept loops
 * survive every error and count a client gone: on a public listener the
 * lane passes connections to (express), a client that left while queued
 * is said as ECONNABORTED, as the kernel says it; a listener that is not
 * ours gets the kernel's answer unchanged; a handoff receiver's errors are
 * its own (handoff_receiver.c). */
static int pm_accept4(int fd, struct sockaddr *addr, socklen_t *addrlen, int flags) {
  accept4_fn real = real_accept4();
  int received;
  if (receiver_accept(fd, addr, addrlen, flags, &received)) return received; /* handoff_receiver.c */
  pthread_mutex_lock(&inject_lock);
  struct injected_listener *l = live_listener(fd);
  int express = l ? l->express : 0, fail = l ? l->fail_next : 0;
  if (fail) l->fail_next = 0;
  pthread_mutex_unlock(&inject_lock);
  if (!l) return real(fd, addr, addrlen, flags);
  if (fail) {
    errno = fail;
    return -1;
  }
  int q = deliver_queued(fd, addr, addrlen, flags, express);
  if (q >= 0 || express) return q; /* its real connections are the lane's to accept */
  struct sockaddr_storage peer;
  int mine = lane_accept_for(fd, &peer);
  if (mine >= 0) return deliver(mine, &peer, addr, addrlen, flags);

  for (;;) {
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int c = real(fd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC);
    if (c < 0) break; /* EAGAIN: drained (or an error: said as EAGAIN, below) */
    close_abruptly(c);
  }
  /* An fd pushed while we drained rang while we were here: take it now. */
  return deliver_queued(fd, addr, addrlen, flags, 0);
}

PM_EXPORT int accept4(int, struct sockaddr *, socklen_t *, int)
    __attribute__((alias("pm_accept4")));

/* 1 when this library was loaded with LD_PRELOAD, so that the runtime's
 * accept4 calls reach pm_accept4; 0 when it was only dlopen'ed. */
PM_EXPORT int pm_interposer_active(void) {
  return dlsym(RTLD_DEFAULT, "accept4") == (void *)pm_accept4;
}

/* The epoll set of the runtime's that watches fd, and fd's entry there
 * (events and token, epoll's data), read from /proc/self/fdinfo. Returns
 * the set, or -1 when no set watches fd. */
static int find_epoll_entry(int fd, struct epoll_event *entry) {
  int sets[64], count;
  pthread_mutex_lock(&epoll_lock);
  rescan_epolls();
  count = epoll_count;
  memcpy(sets, epoll_fds, sizeof(int) * (size_t)count);
  pthread_mutex_unlock(&epoll_lock);
  char path[48], line[256];
  for (int k = 0; k < count; k++) {
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", sets[k]);
    FILE *f = fopen(path, "re");
    if (!f) continue;
    int tfd, found = 0;
    unsigned events;
    unsigned long long data;
    while (!found && fgets(line, sizeof line, f)) {
      if (sscanf(line, "tfd: %d events: %x data: %llx", &tfd, &events, &data) == 3 && tfd == fd) {
        entry->events = events, entry->data.u64 = data;
        found = 1;
      }
    }
    fclose(f);
    if (found) return sets[k];
  }
  return -1;
}

/* The runtime registered the listener in an epoll set with a token of its
 * own (epoll's data). Adds fd to that set under the same token, edge-
 * triggered, so that fd becoming readable reports the listener readable and
 * the runtime calls accept4. Returns the set, or -1 when the listener was
 * not found. */
int add_under_token(int listener_fd, int fd) {
  struct epoll_event found;
  int set = find_epoll_entry(listener_fd, &found);
  if (set < 0) return -1;
  struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.u64 = found.data.u64};
  return epoll_ctl(set, EPOLL_CTL_ADD, fd, &ev) == 0 ? set : -1;
}

/* Makes the runtime's listener runtime_fd (a placeholder made with
 * Deno.listen) be the socket held_fd (which the supervisor or systemd
 * holds): held_fd is duplicated onto runtime_fd's number and watched in
 * the placeholder's stead, with its events and token, so the runtime's
 * accepts take the held socket's connections. Adding a socket that has
 * connections queued reports it ready at once: none is missed. The caller
 * closes held_fd. 0, -ENOENT when no set of the runtime's watches
 * runtime_fd, or -errno. */
PM_EXPORT int pm_adopt_listener(int runtime_fd, int held_fd) {
  int flags = fcntl(held_fd, F_GETFL);
  if (flags < 0 || fcntl(held_fd, F_SETFL, flags | O_NONBLOCK) < 0) return -errno;
  struct epoll_event entry;
  int set = find_epoll_entry(runtime_fd, &entry);
  if (set < 0) return -ENOENT;
  if (epoll_ctl(set, EPOLL_CTL_DEL, runtime_fd, NULL) < 0) return -errno;
  if (dup3(held_fd, runtime_fd, O_CLOEXEC) < 0) return -errno;
  return epoll_ctl(set, EPOLL_CTL_ADD, runtime_fd, &entry) < 0 ? -errno : 0;
}

int take_listener_token(int listener_fd, int fd) {
  int set = add_under_token(listener_fd, fd); /* first: no event is lost in between */
  if (set >= 0) epoll_ctl(set, EPOLL_CTL_DEL, listener_fd, NULL);
  return set;
}

/* A doorbell for the listener: an eventfd added under its token. A write to
 * it makes the runtime call accept4. Returns the eventfd, or -1. */
static int doorbell_for(int listener_fd) {
  int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (efd >= 0 && add_under_token(listener_fd, efd) < 0) {
    close(efd);
    efd = -1;
  }
  return efd;
}

static void add_locked(int fd, int efd, int express) {
  listeners[listener_count++] =
      (struct injected_listener){.fd = fd, .ino = socket_ino(fd), .efd = efd, .express = express};
}

/* Registers the internal listener on 127.0.0.1:port (or [::1]:port) for
 * injection. Returns its fd; -ENOENT when the runtime does not watch it
 * where its doorbell could ring (the caller bridges instead). */
PM_EXPORT int pm_inject_register(int port) {
  int found = find_listening_fd(0, NULL, port);
  if (found < 0) return found;
  pthread_mutex_lock(&inject_lock);
  forget_stale_locked(found);
  if (!find_listener(found)) {
    int efd = listener_count == MAX_LISTENERS ? -1 : doorbell_for(found);
    if (listener_count == MAX_LISTENERS) found = -ENOSPC;
    else if (efd < 0) found = -ENOENT;
    else add_locked(found, efd, 0);
  }
  pthread_mutex_unlock(&inject_lock);
  return found;
}

int inject_register_express(int listener_fd) {
  pthread_mutex_lock(&inject_lock);
  forget_stale_locked(listener_fd);
  int rc = 0;
  if (find_listener(listener_fd)) rc = -EEXIST;
  else if (listener_count == MAX_LISTENERS) rc = -ENOSPC;
  else {
    /* The doorbell takes the listener's place in the runtime's set, so that
     * a new connection no longer wakes the event loop (the express lane
     * takes it). */
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd < 0 || take_listener_token(listener_fd, efd) < 0) {
      if (efd >= 0) close(efd);
      rc = -ENOENT;
    } else {
      add_locked(listener_fd, efd, 1);
    }
  }
  pthread_mutex_unlock(&inject_lock);
  return rc;
}

/* Queues client_fd for the listener and rings its doorbell. The listener
 * takes ownership of client_fd only when 0 is returned. client_fd must be non-blocking and
 * close-on-exec, as every socket the daemon holds is (Deno's, and those
 * pm_accept_batch makes). */
PM_EXPORT int pm_inject_push(int listener_fd, int client_fd) {
  int rc = 0;
  pthread_mutex_lock(&inject_lock);
  struct injected_listener *l = live_listener(listener_fd);
  if (!l) rc = -ENOENT;
  else if (l->len == QUEUE_CAP) rc = -EAGAIN;
  else {
    /* A non-empty queue has its wake-up pending already: the runtime drains
     * the queue on the thread that pushes, so it cannot be half-way. Each
     * write is a new edge (EPOLLET); the count is never read. */
    static const uint64_t one = 1;
    if (l->len == 0 && write(l->efd, &one, sizeof one) != sizeof one) rc = -errno;
    if (rc == 0) {
      l->queue[(l->head + l->len) % QUEUE_CAP] = client_fd;
      l->len++;
    }
  }
  pthread_mutex_unlock(&inject_lock);
  return rc;
}

/* For tests only: the next accept4 on the injected listener fails with
 * errno, as no accept of ours does otherwise. 0, or -ENOENT. */
PM_EXPORT int pm_inject_fail_next(int listener_fd, int error) {
  pthread_mutex_lock(&inject_lock);
  struct injected_listener *l = live_listener(listener_fd);
  if (l) l->fail_next = error;
  pthread_mutex_unlock(&inject_lock);
  return l ? 0 : -ENOENT;
}

/* Forgets an injected listener (before its fd is closed: a later socket
 * may get the same number). Queued fds are closed: nobody will take them.
 * With only_if_gone (a listener the runtime closed already), a number that
 * is a live registration's again, a newer socket's, is left alone.
 * Returns how many were closed. */
PM_EXPORT int pm_inject_unregister(int listener_fd, int only_if_gone) {
  int closed = -ENOENT;
  pthread_mutex_lock(&inject_lock);
  int newer = only_if_gone && live_listener(listener_fd);
  pthread_mutex_unlock(&inject_lock);
  if (newer) return 0;
  lane_site_gone(listener_fd); /* first: it takes the lane's lock, then ours */
  pthread_mutex_lock(&inject_lock);
  struct injected_listener *l = find_listener(listener_fd);
  if (l && !(only_if_gone && live_listener(listener_fd))) closed = remove_locked(l);
  pthread_mutex_unlock(&inject_lock);
  return closed;
}
