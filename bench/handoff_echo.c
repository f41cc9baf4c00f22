/*
 * handoff_echo: an echo service in C that receives its clients from portmux
 * (docs/handoff.md), so that the private-protocol load of bench/ops_bench.ts
 * measures portmux rather than a Deno echo. One thread, one epoll set:
 * the Unix listener, its channels, and the clients.
 *
 *   handoff_echo SOCKET
 *       Listens on the Unix socket SOCKET, prints "ready", then echoes
 *       every handed-off client until it closes. Stops on SIGTERM/SIGINT.
 *
 * The records themselves are not parsed: the echo needs nothing from them,
 * and every fd that arrives is a client (a record whose fd was lost with
 * MSG_CTRUNC brings none), so taking each fd as it comes is correct.
 *
 * Build: cc -O2 -o handoff_echo handoff_echo.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* Each epoll entry's data: the fd, and in the top bits what it is. */
enum { LISTENER = 1, CHANNEL = 2, CLIENT = 3 };
#define TAG(kind, fd) (((uint64_t)(kind) << 32) | (uint32_t)(fd))

static volatile sig_atomic_t stopping;
static void on_stop(int sig) { (void)sig; stopping = 1; }

static int ep;

static void watch(int kind, int fd) {
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TAG(kind, fd)};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) close(fd);
}

/* Reads what a channel has: the bytes (records, not needed) are dropped,
 * the fds are new clients. */
static void read_channel(int ch) {
  char data[16384];
  union {
    char buf[CMSG_SPACE(16 * sizeof(int))];
    struct cmsghdr align;
  } ctl;
  for (;;) {
    struct iovec iov = {.iov_base = data, .iov_len = sizeof data};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                         .msg_controllen = sizeof ctl.buf};
    ssize_t n = recvmsg(ch, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); n >= 0 && c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      int *fds = (int *)CMSG_DATA(c);
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; i++) watch(CLIENT, fds[i]);
    }
    if (n <= 0) { /* the channel ended (portmux restarted or closed it) */
      close(ch);
      return;
    }
  }
}

/* Echoes what a client sent; closes it at its end or on an error. The
 * answers are small: a full send buffer is waited for in place. */
static void echo(int fd) {
  char buf[65536];
  ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  for (ssize_t off = 0; n > 0 && off < n;) {
    ssize_t w = send(fd, buf + off, (size_t)(n - off), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0) off += w;
    else if (w < 0 && errno == EAGAIN) poll(&(struct pollfd){.fd = fd, .events = POLLOUT}, 1, 1000);
    else n = -1;
  }
  if (n <= 0) close(fd); /* closing removes it from the epoll set */
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: handoff_echo SOCKET\n");
    return 2;
  }
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  if (strlen(argv[1]) >= sizeof addr.sun_path) {
    fprintf(stderr, "handoff_echo: socket path too long\n");
    return 2;
  }
  strcpy(addr.sun_path, argv[1]);
  unlink(argv[1]);
  int l = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (l < 0 || bind(l, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(l, 128) < 0) {
    perror("handoff_echo: listen");
    return 1;
  }
  struct sigaction sa = {.sa_handler = on_stop};
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  ep = epoll_create1(EPOLL_CLOEXEC);
  watch(LISTENER, l);
  printf("ready\n");
  fflush(stdout);
  struct epoll_event evs[256];
  while (!stopping) {
    int n = epoll_wait(ep, evs, 256, -1);
    for (int i = 0; i < n; i++) {
      int fd = (int)(uint32_t)evs[i].data.u64;
      switch (evs[i].data.u64 >> 32) {
      case LISTENER:
        for (int ch; (ch = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0;) {
          watch(CHANNEL, ch);
        }
        break;
      case CHANNEL: read_channel(fd); break;
      default: echo(fd);
      }
    }
  }
  unlink(argv[1]);
  return 0;
}
