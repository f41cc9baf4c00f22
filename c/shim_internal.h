/*
 * What the shim's C files share inside the library (not exported: the
 * library is built with -fvisibility=hidden).
 */
#ifndef PORTMUX_SHIM_INTERNAL_H
#define PORTMUX_SHIM_INTERNAL_H

#include <stdint.h>
#include <sys/socket.h>

#define PM_EXPORT __attribute__((visibility("default")))

/* The port of an IPv4 or IPv6 sockaddr; -1 for another family. */
int sockaddr_port(const struct sockaddr_storage *ss);

/* Writes a sockaddr's address as text into out (PM_ADDR_TEXT bytes,
 * NUL-ended) and returns its port. */
#define PM_ADDR_TEXT 48
int addr_text(const struct sockaddr_storage *ss, char out[PM_ADDR_TEXT]);

/* The next of the process's fds in d (opendir("/proc/self/fd")), skipping
 * d's own; -1 at the end (portmux_shim.c). */
#include <dirent.h>
int next_open_fd(DIR *d);

/* A new epoll set was made: the runtime's are looked for again before the
 * next release (interposer.c). */
void epoll_sets_changed(void);

/* glibc's accept4, bypassing our interposer. */
int real_accept(int fd, struct sockaddr *addr, socklen_t *addrlen, int flags);

/* Queues a client fd on an injected listener and wakes the runtime
 * (interposer.c). 0, or -errno. */
int pm_inject_push(int listener_fd, int client_fd);

/* Sets or clears O_NONBLOCK (portmux_shim.c). 0, or -errno. */
int pm_set_nonblocking(int fd, int on);

/* Sends payload with fd on a channel, without waiting (channel_send.c).
 * Bytes sent, or -errno. */
int pm_channel_send(int chan, int fd, const uint8_t *payload, int len);
/* The same; with given, fd is the sender's no longer once sent (kept as
 * the copy until the service reads it). */
int channel_send(int chan, int fd, const uint8_t *payload, int len, int given);

/* Receives bytes and up to max_fds fds from a channel, without waiting
 * (portmux_shim.c); info[0] = fds received, info[1] = 1 if control data
 * was truncated (MSG_CTRUNC). Bytes received, or -errno. */
int pm_channel_recv(int sock, uint8_t *buf, int len, int32_t *fds, int max_fds, int32_t *info);

/* Makes listener_fd an express listener: the runtime's accept4 on it
 * returns only fds that the express lane queues (pm_inject_push), woken
 * by a doorbell, and the runtime no longer watches the listener itself.
 * 0, or -errno. */
int inject_register_express(int listener_fd);

/* Our listening socket on port (and on that address, unless family is 0),
 * found among the process's fds. The fd, or -ENOENT. */
int find_listening_fd(int family, const uint8_t bytes[16], int port);

/* Puts fd in listener_fd's place in the runtime's epoll set: fd goes in
 * under the token the runtime gave the listener (edge-triggered), so that
 * fd readable makes the runtime call accept4 on the listener; then the
 * listener leaves the set, and its own connections no longer wake the
 * runtime. Returns the set, or -1. */
int take_listener_token(int listener_fd, int fd);

/* Adds fd to the runtime's epoll set under the token the runtime gave
 * listener_fd (edge-triggered), so that fd readable makes the runtime call
 * accept4 on listener_fd. Returns the set, or -1. */
int add_under_token(int listener_fd, int fd);

/* For the runtime's accept4 on an HTTPS site's listener with nothing
 * queued (express_lane.c): accepts on the public listeners, on this
 * thread, until a connection for that site comes; the others are
 * delivered as the lane would. Returns its fd (its peer in *peer), or -1. */
int lane_accept_for(int site_fd, struct sockaddr_storage *peer);

/* Before a site's listener goes (pm_inject_unregister): the public
 * listeners leave the runtime's epoll set, where they are under that
 * listener's token, which the runtime frees with it (express_lane.c). */
void lane_site_gone(int site_fd);

/* For a receiving listener (handoff_receiver.c): sets *fd to what accept4
 * returns (-1 with errno set) and returns 1; 0 for any other listener. */
int receiver_accept(int listener, struct sockaddr *addr, socklen_t *addrlen, int flags, int *fd);

#endif
