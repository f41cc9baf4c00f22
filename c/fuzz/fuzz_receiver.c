/*
 * The handoff receiver's parsing (records and fds read from a channel,
 * split into lines, paired, queued, taken) is static and reached through
 * the runtime's accept: this file includes handoff_receiver.c to set up a
 * receiver over a socketpair, with no listener and no runtime, and then
 * drives it only through its own entry points (receiver_accept, as
 * pm_accept4 calls it, pm_receiver_take, pm_receiver_problems,
 * pm_receiver_close). The production code is compiled unchanged.
 */
#include "../handoff_receiver.c"

#include "fuzz.h"

#define FZ_LISTENER (-1000) /* a listener number no socket has */

/* Sends bytes with n fds (dups of src) on the first byte; returns the bytes
 * sent, or -1. */
static int send_with_fds(int sock, const uint8_t *b, int len, int n, int src) {
  int fds[32];
  union {
    struct cmsghdr h;
    char buf[CMSG_SPACE(sizeof fds)];
  } ctl;
  memset(&ctl, 0, sizeof ctl);
  struct iovec iov = {.iov_base = (void *)b, .iov_len = (size_t)len};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
  if (n > 32) n = 32;
  for (int i = 0; i < n; i++) fds[i] = dup(src);
  if (n > 0) {
    msg.msg_control = ctl.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)n);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)n);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)n);
  }
  ssize_t sent = sendmsg(sock, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  for (int i = 0; i < n; i++) close(fds[i]); /* the receiver has its own now */
  return (int)sent;
}

/* The runtime's accept until the receiver has nobody left: each client's
 * record is taken (or left, for the receiver to drop later) and the client
 * closed. Returns how many. */
static int accept_all(const struct rx_plan *p) {
  int accepted = 0;
  for (;;) {
    struct sockaddr_storage peer;
    socklen_t pl = sizeof peer;
    int fd = -1;
    if (!receiver_accept(FZ_LISTENER, (struct sockaddr *)&peer, &pl, p->accept_flags, &fd) || fd < 0)
      return accepted;
    accepted++;
    if (!p->skip_take) {
      int port = sockaddr_port(&peer);
      int cap = p->take_cap >= 0 ? p->take_cap : RX_RECORD_MAX;
      char *out = malloc(cap > 0 ? (size_t)cap : 1); /* exactly cap: ASan sees any overrun */
      int got = pm_receiver_take(FZ_LISTENER, port, out, cap);
      if (got > cap) abort();
      free(out);
    }
    close(fd);
  }
}

static void read_problems(const struct rx_plan *p) {
  char *out = malloc(p->problems_cap > 0 ? (size_t)p->problems_cap : 1);
  int n = pm_receiver_problems(FZ_LISTENER, out, p->problems_cap);
  if (n > p->problems_cap) abort();
  free(out);
}

int fuzz_receiver_run(const struct rx_plan *p) {
  int sv[2], peer[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) return -1;
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, peer) < 0) {
    close(sv[0]), close(sv[1]);
    return -1;
  }
  int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
  struct receiver *r = calloc(1, sizeof *r);
  /* As pm_receiver_open makes it, minus the listener and the runtime's set;
   * the channel as accept_channels adds it. */
  *r = (struct receiver){.listener = FZ_LISTENER, .unix_fd = -1, .sender_uid = -1,
                         .runtime_set = -1, .set = epoll_create1(EPOLL_CLOEXEC)};
  pm_set_nonblocking(sv[1], 1);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = sv[1]};
  epoll_ctl(r->set, EPOLL_CTL_ADD, sv[1], &ev);
  r->chans[r->nchan++] = (struct rx_channel){.fd = sv[1]};
  pthread_mutex_lock(&rx_lock);
  receivers[atomic_load(&receiver_count)] = r;
  atomic_fetch_add(&receiver_count, 1);
  pthread_mutex_unlock(&rx_lock);

  int accepted = 0;
  size_t at = 0;
  for (int i = 0; i < p->chunks && at < p->len; i++) {
    int len = p->chunk_len[i];
    if (len > (int)(p->len - at)) len = (int)(p->len - at);
    if (len <= 0) continue;
    int src = (p->devnull_mask >> (i % 64)) & 1 ? devnull : peer[0];
    int sent = send_with_fds(sv[0], p->bytes + at, len, p->chunk_fds[i], src);
    for (int tries = 0; sent >= 0 && sent < len && tries < 1000; tries++) {
      accepted += accept_all(p); /* a full socket: let the receiver read */
      int more = send_with_fds(sv[0], p->bytes + at + sent, len - sent, 0, -1);
      if (more > 0) sent += more;
    }
    at += (size_t)len;
    accepted += accept_all(p);
    if (i % 4 == 3) read_problems(p);
  }
  close(sv[0]); /* the daemon closes the channel: a record cut short is said */
  accepted += accept_all(p);
  read_problems(p);
  pm_receiver_close(FZ_LISTENER);
  close(peer[0]), close(peer[1]), close(devnull);
  return accepted;
}
