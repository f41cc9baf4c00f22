/*
 * portmux shim: the few syscalls Deno cannot make for us. This file is the
 * mission's core: peek, fd lookup and verification, accepting the rest of
 * a burst, the listening sockets the supervisor holds, opening channels
 * and receiving on them (SCM_RIGHTS), and the readiness waiter for
 * connections that have not sent bytes yet. What reaches into the
 * runtime's internals (its epoll sets, its accept4) is in interposer.c;
 * sending clients on a channel in channel_send.c; the express lane in
 * express_lane.c and lane_*.c; the relay in relay.c; a service's receiving side in
 * handoff_receiver.c.
 *
 * The library is loaded two ways, and both reach the same instance: with
 * Deno.dlopen (ffi/shim.ts), and with LD_PRELOAD (src/launch.ts), so that
 * its accept4() interposes the runtime's (interposer.c).
 *
 * Every function returns a negative errno on failure; ffi/errors.ts names
 * it. The C side makes syscalls only: policy lives in TypeScript.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <linux/filter.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "shim_internal.h"

/* ---------- peek ---------- */

/* Copies up to len bytes that the client has sent, without consuming them.
 * Returns the count, 0 at end of stream, -EAGAIN when nothing is there yet. */
PM_EXPORT int pm_peek(int fd, uint8_t *buf, int len) {
  ssize_t n = recv(fd, buf, (size_t)len, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 ? -errno : (int)n;
}

/* Reads and discards exactly len bytes that are already buffered (a PROXY
 * protocol header that was peeked whole). Returns len, or -errno; -EAGAIN
 * if fewer than len bytes were there (some were consumed then). */
PM_EXPORT int pm_consume(int fd, int len) {
  uint8_t buf[4096];
  int done = 0;
  while (done < len) {
    int want = len - done < (int)sizeof buf ? len - done : (int)sizeof buf;
    ssize_t n = recv(fd, buf, (size_t)want, MSG_DONTWAIT);
    if (n < 0) return -errno;
    if (n == 0) return -EAGAIN;
    done += (int)n;
  }
  return done;
}

/* Raises the soft limit of open fds to the hard limit (a daemon that holds
 * thousands of waiting clients needs them). Returns the new soft limit. */
PM_EXPORT int pm_raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) < 0) return -errno;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0) return -errno;
  }
  return rl.rlim_cur > 0x7fffffff ? 0x7fffffff : (int)rl.rlim_cur;
}

/* ---------- fd verification and lookup ---------- */

/* Parses "1.2.3.4" or "::1" (optionally "[::1]") into a sockaddr family+bytes. */
static int parse_host(const char *host, int *family, uint8_t out[16]) {
  char tmp[64];
  size_t n = strlen(host);
  if (n >= sizeof tmp) return -EINVAL;
  if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
    memcpy(tmp, host + 1, n - 2);
    tmp[n - 2] = 0;
  } else {
    memcpy(tmp, host, n + 1);
  }
  if (inet_pton(AF_INET, tmp, out) == 1) { *family = AF_INET; return 0; }
  if (inet_pton(AF_INET6, tmp, out) == 1) { *family = AF_INET6; return 0; }
  return -EINVAL;
}

/* 1 if the sockaddr is host:port, 0 if not. */
static int addr_equals(const struct sockaddr_storage *ss, int family,
                       const uint8_t bytes[16], int port) {
  if (ss->ss_family != family) return 0;
  if (family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    return ntohs(a->sin_port) == port && memcmp(&a->sin_addr, bytes, 4) == 0;
  }
  const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
  return ntohs(a->sin6_port) == port && memcmp(&a->sin6_addr, bytes, 16) == 0;
}

/* The port of an IPv4 or IPv6 sockaddr; -1 for another family. */
int sockaddr_port(const struct sockaddr_storage *ss) {
  if (ss->ss_family == AF_INET) return ntohs(((const struct sockaddr_in *)ss)->sin_port);
  if (ss->ss_family == AF_INET6) return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
  return -1;
}

/* The next of the process's fds in d (opendir("/proc/self/fd")), skipping
 * d's own; -1 at the end. */
int next_open_fd(DIR *d) {
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    int fd = atoi(e->d_name);
    if (fd != dirfd(d)) return fd;
  }
  return -1;
}

/* 1 if fd is a TCP socket whose local and peer addresses are exactly the
 * given ones, 0 if it is something else, negative errno on bad input, and
 * -ENOTCONN if it has the local address but no peer any more (the client
 * reset it). This is the security check before an fd number learnt from
 * Deno internals is used: a wrong fd would hand another client's
 * connection to a service. */
PM_EXPORT int pm_verify_fd(int fd, const char *local_host, int local_port,
                           const char *peer_host, int peer_port) {
  int lf, pf;
  uint8_t lb[16], pb[16];
  if (parse_host(local_host, &lf, lb) < 0 || parse_host(peer_host, &pf, pb) < 0)
    return -EINVAL;
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0) return 0;
  if (!addr_equals(&ss, lf, lb, local_port)) return 0;
  sl = sizeof ss;
  if (getpeername(fd, (struct sockaddr *)&ss, &sl) < 0) return errno == ENOTCONN ? -ENOTCONN : 0;
  if (!addr_equals(&ss, pf, pb, peer_port)) return 0;
  int type = 0;
  socklen_t tl = sizeof type;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 || type != SOCK_STREAM)
    return 0;
  return 1;
}

/* Fallback when the runtime does not tell us the fd: scan the process's fds
 * for the one socket with this 4-tuple. Returns the fd or -ENOENT. */
PM_EXPORT int pm_find_fd(const char *local_host, int local_port,
                         const char *peer_host, int peer_port) {
  DIR *d = opendir("/proc/self/fd");
  if (!d) return -errno;
  int found = -ENOENT, fd;
  while ((fd = next_open_fd(d)) >= 0) {
    int r = pm_verify_fd(fd, local_host, local_port, peer_host, peer_port);
    if (r == -EINVAL) { found = r; break; }
    if (r == 1) { found = fd; break; }
  }
  closedir(d);
  return found;
}

/* ---------- accepting in the shim ---------- */

/* Our listening socket on port (and, if family is not 0, on that address),
 * found among the process's fds: the runtime does not expose a listener's
 * fd. Returns the fd or -ENOENT. */
int find_listening_fd(int family, const uint8_t bytes[16], int port) {
  DIR *d = opendir("/proc/self/fd");
  if (!d) return -errno;
  int found = -ENOENT, fd;
  while ((fd = next_open_fd(d)) >= 0) {
    int listening = 0;
    socklen_t ol = sizeof listening;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &ol) < 0 || !listening ||
        getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
      continue;
    if (sockaddr_port(&ss) == port && (family == 0 || addr_equals(&ss, family, bytes, port))) {
      found = fd;
      break;
    }
  }
  closedir(d);
  return found;
}

/* The fd of our TCP listener on host:port, or -ENOENT. */
PM_EXPORT int pm_listener_fd(const char *host, int port) {
  int family;
  uint8_t bytes[16];
  if (parse_host(host, &family, bytes) < 0) return -EINVAL;
  return find_listening_fd(family, bytes, port);
}

/* Writes "address" of a sockaddr into out (PM_ADDR_TEXT bytes, NUL-ended)
 * and returns its port. */
int addr_text(const struct sockaddr_storage *ss, char out[PM_ADDR_TEXT]) {
  out[0] = 0;
  if (ss->ss_family == AF_INET)
    inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, out, PM_ADDR_TEXT);
  else
    inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, out, PM_ADDR_TEXT);
  return sockaddr_port(ss);
}

/* Accepts, without waiting, up to max connections queued on listener (non-
 * blocking, close-on-exec sockets). For each, out holds a PM_ACCEPTED-byte
 * entry: int32 fd, int32 peer port, int32 local port, the peer address
 * and the local address as text (PM_ADDR_TEXT bytes each). Returns how
 * many were accepted; 0 when none was waiting; -errno when accept fails
 * before any (the caller retries later, as with any accept error). */
#define PM_ACCEPTED (12 + 2 * PM_ADDR_TEXT)
PM_EXPORT int pm_accept_batch(int listener, uint8_t *out, int max) {
  int n = 0;
  while (n < max) {
    struct sockaddr_storage peer, local;
    socklen_t pl = sizeof peer, ll = sizeof local;
    int c = accept4(listener, (struct sockaddr *)&peer, &pl, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (c < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      if (errno == ECONNABORTED || errno == EINTR) continue; /* the client left: next */
      return n > 0 ? n : -errno;
    }
    if (getsockname(c, (struct sockaddr *)&local, &ll) < 0) {
      close(c); /* cannot happen on a socket accept4 just made; never hand it out */
      continue;
    }
    uint8_t *e = out + (size_t)n * PM_ACCEPTED;
    int32_t head[3];
    head[0] = c;
    head[1] = addr_text(&peer, (char *)e + 12);
    head[2] = addr_text(&local, (char *)e + 12 + PM_ADDR_TEXT);
    memcpy(e, head, sizeof head);
    n++;
  }
  return n;
}

/* ---------- listeners held by the supervisor ---------- */

/* A listening TCP socket on host:port (port 0: any), non-blocking and
 * close-on-exec: the supervisor binds it once and its workers inherit it
 * (it clears close-on-exec just for their start), so that it outlives any
 * worker (a worker's death loses nothing queued; a new generation accepts
 * on the same socket). SO_REUSEADDR as servers do; no SO_REUSEPORT: the
 * workers share this one socket and its queue. Returns the fd. */
PM_EXPORT int pm_tcp_listen(const char *host, int port, int backlog) {
  int family;
  uint8_t bytes[16];
  if (parse_host(host, &family, bytes) < 0 || port < 0 || port > 65535) return -EINVAL;
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  socklen_t sl;
  if (family == AF_INET) {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    a->sin_family = AF_INET, a->sin_port = htons((uint16_t)port);
    memcpy(&a->sin_addr, bytes, 4);
    sl = sizeof *a;
  } else {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    a->sin6_family = AF_INET6, a->sin6_port = htons((uint16_t)port);
    memcpy(&a->sin6_addr, bytes, 16);
    sl = sizeof *a;
  }
  int s = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s < 0) return -errno;
  int on = 1, off = 0;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  /* "::" serves IPv4 too, as Deno.listen's does. */
  if (family == AF_INET6) setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
  if (bind(s, (struct sockaddr *)&ss, sl) < 0 || listen(s, backlog) < 0) {
    int r = -errno;
    close(s);
    return r;
  }
  return s;
}

/* Keeps new clients out of a listening socket that is about to close,
 * while those the kernel accepted already wait in its queue to be taken:
 * a filter that drops every packet to the listener (new SYNs go
 * unanswered; refused once it closes), for every process that holds it.
 * 0, or -errno. */
PM_EXPORT int pm_listener_refuse_new(int fd) {
  struct sock_filter drop = BPF_STMT(BPF_RET | BPF_K, 0);
  struct sock_fprog prog = {.len = 1, .filter = &drop};
  return setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) < 0 ? -errno : 0;
}

/* Facts of an fd that may be an inherited listener: out[0] = 1 if it is a
 * listening TCP socket, out[1] = its port; its address as text in addr
 * (PM_ADDR_TEXT bytes). 0, or -errno (-ENOTSOCK: not a TCP listener). */
PM_EXPORT int pm_listener_info(int fd, int32_t *out, char *addr) {
  int listening = 0, type = 0;
  socklen_t ol = sizeof listening, tl = sizeof type;
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &ol) < 0 ||
      getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 ||
      getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
    return -errno;
  if (type != SOCK_STREAM || (ss.ss_family != AF_INET && ss.ss_family != AF_INET6)) return -ENOTSOCK;
  out[0] = listening;
  out[1] = addr_text(&ss, addr);
  return 0;
}

/* Makes close-on-exec of fd on or off (a listener passed on to workers). */
PM_EXPORT int pm_set_cloexec(int fd, int on) {
  return fcntl(fd, F_SETFD, on ? FD_CLOEXEC : 0) < 0 ? -errno : 0;
}

/* ---------- sending and receiving fds (SCM_RIGHTS) ---------- */

/* Opens a channel to a service: a non-blocking connection to its Unix
 * stream socket, kept open for many handoffs. Before any client fd travels
 * on it, SO_PEERCRED must show the expected uid, gid and pid (-1: any).
 * Returns the channel fd; -EPERM for a foreign listener (closed), -EAGAIN
 * when its backlog is full, or the failing call's -errno. */
PM_EXPORT int pm_channel_open(const char *path, int uid, int gid, int pid) {
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof sa.sun_path) return -ENAMETOOLONG;
  strcpy(sa.sun_path, path);
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (s < 0) return -errno;
  if (connect(s, (struct sockaddr *)&sa, sizeof sa) < 0) {
    int r = -errno;
    close(s);
    return r;
  }
  struct ucred cred;
  socklen_t cl = sizeof cred;
  if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0) {
    int r = -errno;
    close(s);
    return r;
  }
  if ((uid >= 0 && (int)cred.uid != uid) || (gid >= 0 && (int)cred.gid != gid) ||
      (pid >= 0 && (int)cred.pid != pid)) {
    close(s);
    return -EPERM;
  }
  return s;
}

/* The credentials of a channel's peer: out[0..2] = pid, uid, gid. */
PM_EXPORT int pm_peer_cred(int sock, int32_t *out) {
  struct ucred cred;
  socklen_t cl = sizeof cred;
  if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0) return -errno;
  out[0] = (int32_t)cred.pid;
  out[1] = (int32_t)cred.uid;
  out[2] = (int32_t)cred.gid;
  return 0;
}

/* 1 when something accepts connections at the Unix socket path sa (a live
 * service), 0 when nothing does (a stale file), -errno when we cannot tell. */
static int unix_socket_live(const struct sockaddr_un *sa) {
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (s < 0) return -errno;
  int r = connect(s, (const struct sockaddr *)sa, sizeof *sa) == 0 ? 1 : -errno;
  close(s);
  if (r == -EAGAIN) return 1; /* its backlog is full: alive */
  return r == -ECONNREFUSED ? 0 : r;
}

/* Listens on a Unix stream socket at path, mode 0600 so that only our user
 * can connect. A stale socket file is replaced; a socket something answers
 * on is not taken from its service: -EADDRINUSE. Returns the fd. */
PM_EXPORT int pm_unix_listen(const char *path, int backlog) {
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof sa.sun_path) return -ENAMETOOLONG;
  strcpy(sa.sun_path, path);
  struct stat st;
  if (lstat(path, &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return -EEXIST;
    int live = unix_socket_live(&sa);
    if (live != 0) return live > 0 ? -EADDRINUSE : live;
    unlink(path);
  }
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return -errno;
  mode_t old = umask(0177);
  int r = bind(s, (struct sockaddr *)&sa, sizeof sa);
  umask(old);
  if (r < 0 || listen(s, backlog) < 0) { r = -errno; close(s); return r; }
  return s;
}

/* Blocking accept on a listening socket (call it as a nonblocking symbol). */
PM_EXPORT int pm_accept(int fd) {
  int c = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
  return c < 0 ? -errno : c;
}

/* Receives what is there on a channel without waiting: bytes into buf and
 * up to max_fds fds into fds. info[0] = fds received, info[1] = 1 if
 * control data was truncated (fds were lost: too small a buffer, or the
 * process out of fds; the kernel closed them). Returns the byte count, 0
 * at end of stream, -EAGAIN when nothing is there. */
PM_EXPORT int pm_channel_recv(int sock, uint8_t *buf, int len, int32_t *fds, int max_fds,
                              int32_t *info) {
  info[0] = 0;
  info[1] = 0;
  if (max_fds > 64) max_fds = 64;
  struct iovec iov = {.iov_base = buf, .iov_len = (size_t)len};
  union { struct cmsghdr h; char buf[CMSG_SPACE(64 * sizeof(int))]; } ctl;
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                       .msg_controllen = CMSG_SPACE((size_t)max_fds * sizeof(int))};
  ssize_t n = recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  if (n < 0) return -errno;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    for (int i = 0; i < k && info[0] < max_fds; i++)
      memcpy(&fds[info[0]++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
  }
  if (msg.msg_flags & MSG_CTRUNC) info[1] = 1;
  return (int)n;
}

/* Blocks until fd is readable (or has hung up) or timeout_ms passes.
 * Returns 1 if readable, 0 on timeout. Call it as a nonblocking symbol. */
PM_EXPORT int pm_wait_readable(int fd, int timeout_ms) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int n = poll(&p, 1, timeout_ms);
  if (n < 0) return errno == EINTR ? 0 : -errno;
  return n > 0;
}

/* Sets or clears O_NONBLOCK (it lives on the shared file description, so a
 * received fd comes with the sender's mode: docs/design.md R6). */
PM_EXPORT int pm_set_nonblocking(int fd, int on) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) return -errno;
  fl = on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
  return fcntl(fd, F_SETFL, fl) < 0 ? -errno : 0;
}

PM_EXPORT int pm_dup(int fd) {
  int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  return d < 0 ? -errno : d;
}

PM_EXPORT int pm_close(int fd) { return close(fd) < 0 ? -errno : 0; }

/* Makes a listener hold new connections in the kernel until their first
 * bytes arrive, or for about a second (TCP_DEFER_ACCEPT); 0 turns it off.
 * 0, or -errno. */
PM_EXPORT int pm_defer_accept(int listener_fd, int seconds) {
  return setsockopt(listener_fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &seconds, sizeof seconds) < 0 ? -errno : 0;
}

/* Shuts a socket down both ways: a thread blocked in accept or recv on it
 * returns. 0, or -errno. */
PM_EXPORT int pm_shutdown(int fd) { return shutdown(fd, SHUT_RDWR) < 0 ? -errno : 0; }

/* Writes len bytes (blocking). Used by the demo service's echo loop. */
PM_EXPORT int pm_write(int fd, const uint8_t *buf, int len) {
  ssize_t n = write(fd, buf, (size_t)len);
  return n < 0 ? -errno : (int)n;
}

/* Blocking read; 0 at end of stream. */
PM_EXPORT int pm_read(int fd, uint8_t *buf, int len) {
  ssize_t n = read(fd, buf, (size_t)len);
  return n < 0 ? -errno : (int)n;
}

/* ---------- readiness waiter for the preread ---------- */

/* One epoll set for all connections waiting for their first bytes, waited on
 * by one thread, so no thread is tied up per idle client (docs/design.md R8).
 * Edge-triggered: a connection is reported when new bytes (or EOF) arrive,
 * and once on add if bytes are already there. */
PM_EXPORT int pm_waiter_create(void) {
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) return -errno;
  epoll_sets_changed(); /* a new set: the runtime's are looked for again */
  return ep;
}

PM_EXPORT int pm_waiter_add(int ep, int fd) {
  struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.fd = fd};
  return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

PM_EXPORT int pm_waiter_del(int ep, int fd) {
  return epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL) < 0 ? -errno : 0;
}

/* Waits up to timeout_ms; writes (fd, hangup) pairs to out, max pairs.
 * hangup is 1 when the peer closed its side or the socket failed.
 * Returns the number of pairs. */
PM_EXPORT int pm_waiter_wait(int ep, int32_t *out, int max, int timeout_ms) {
  struct epoll_event evs[256];
  if (max > 256) max = 256;
  int n = epoll_wait(ep, evs, max, timeout_ms);
  if (n < 0) return errno == EINTR ? 0 : -errno;
  for (int i = 0; i < n; i++) {
    out[2 * i] = evs[i].data.fd;
    out[2 * i + 1] = (evs[i].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0;
  }
  return n;
}

