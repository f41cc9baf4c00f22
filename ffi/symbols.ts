/**
 * The shim's symbol table for Deno.dlopen: each C function with its
 * parameters (the C signature in the comment above it).
 */
export const SYMBOLS = {
  // int pm_peek(int fd, uint8_t *buf, int len)
  pm_peek: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  // int pm_raise_nofile(void)
  pm_raise_nofile: { parameters: [], result: "i32" },
  // int pm_consume(int fd, int len)
  pm_consume: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_verify_fd(int fd, char *local_host, int local_port, char *peer_host, int peer_port)
  pm_verify_fd: { parameters: ["i32", "buffer", "i32", "buffer", "i32"], result: "i32" },
  // int pm_find_fd(char *local_host, int local_port, char *peer_host, int peer_port)
  pm_find_fd: { parameters: ["buffer", "i32", "buffer", "i32"], result: "i32" },
  // int pm_listener_fd(char *host, int port)
  pm_listener_fd: { parameters: ["buffer", "i32"], result: "i32" },
  // int pm_accept_batch(int listener, uint8_t *out, int max)
  pm_accept_batch: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  // int pm_channel_open(char *path, int uid, int gid, int pid)
  pm_channel_open: { parameters: ["buffer", "i32", "i32", "i32"], result: "i32" },
  // int pm_channel_send(int chan, int fd, uint8_t *payload, int len)
  pm_channel_send: { parameters: ["i32", "i32", "buffer", "i32"], result: "i32" },
  // int pm_unread(int chan)
  pm_unread: { parameters: ["i32"], result: "i32" },
  // int pm_channel_queued(int chan)
  pm_channel_queued: { parameters: ["i32"], result: "i32" },
  // int pm_channel_close(int chan, int cut)
  pm_channel_close: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_channel_recv(int sock, uint8_t *buf, int len, int32_t *fds, int max_fds, int32_t *info)
  pm_channel_recv: {
    parameters: ["i32", "buffer", "i32", "buffer", "i32", "buffer"],
    result: "i32",
  },
  // int pm_wait_readable(int fd, int timeout_ms): blocks
  pm_wait_readable: { parameters: ["i32", "i32"], result: "i32", nonblocking: true },
  // int pm_peer_cred(int sock, int32_t *out)
  pm_peer_cred: { parameters: ["i32", "buffer"], result: "i32" },
  // int pm_release(int fd)
  pm_release: { parameters: ["i32"], result: "i32" },
  // int pm_dup(int fd)
  pm_dup: { parameters: ["i32"], result: "i32" },
  // int pm_close(int fd)
  pm_close: { parameters: ["i32"], result: "i32" },
  // int pm_defer_accept(int listener_fd, int seconds)
  pm_defer_accept: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_shutdown(int fd)
  pm_shutdown: { parameters: ["i32"], result: "i32" },
  // int pm_set_nonblocking(int fd, int on)
  pm_set_nonblocking: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_unix_listen(char *path, int backlog)
  pm_unix_listen: { parameters: ["buffer", "i32"], result: "i32" },
  // int pm_accept(int fd): blocks
  pm_accept: { parameters: ["i32"], result: "i32", nonblocking: true },
  // int pm_read(int fd, uint8_t *buf, int len): blocks
  pm_read: { parameters: ["i32", "buffer", "i32"], result: "i32", nonblocking: true },
  // int pm_write(int fd, uint8_t *buf, int len): blocks
  pm_write: { parameters: ["i32", "buffer", "i32"], result: "i32", nonblocking: true },
  // int pm_waiter_create(void)
  pm_waiter_create: { parameters: [], result: "i32" },
  // int pm_waiter_add(int ep, int fd)
  pm_waiter_add: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_waiter_del(int ep, int fd)
  pm_waiter_del: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_waiter_wait(int ep, int32_t *out, int max, int timeout_ms): blocks
  pm_waiter_wait: { parameters: ["i32", "buffer", "i32", "i32"], result: "i32", nonblocking: true },
  // int pm_interposer_active(void)
  pm_interposer_active: { parameters: [], result: "i32" },
  // int pm_inject_register(int port)
  pm_inject_register: { parameters: ["i32"], result: "i32" },
  // int pm_inject_push(int listener_fd, int client_fd)
  pm_inject_push: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_inject_unregister(int listener_fd, int only_if_gone)
  pm_inject_unregister: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_tcp_listen(char *host, int port, int backlog)
  pm_tcp_listen: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  // int pm_listener_info(int fd, int32_t out[2], char addr[PM_ADDR_TEXT])
  pm_listener_info: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  // int pm_listener_refuse_new(int fd)
  pm_listener_refuse_new: { parameters: ["i32"], result: "i32" },
  // int pm_set_cloexec(int fd, int on)
  pm_set_cloexec: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_adopt_listener(int runtime_fd, int held_fd)
  pm_adopt_listener: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_inject_fail_next(int listener_fd, int errno)
  pm_inject_fail_next: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_receiver_open(int port, int unix_fd, int sender_uid)
  pm_receiver_open: { parameters: ["i32", "i32", "i32"], result: "i32" },
  // int pm_receiver_take(int listener, int remote_port, char *out, int cap)
  pm_receiver_take: { parameters: ["i32", "i32", "buffer", "i32"], result: "i32" },
  // int pm_receiver_problems(int listener, char *out, int cap)
  pm_receiver_problems: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  // int pm_receiver_close(int listener)
  pm_receiver_close: { parameters: ["i32"], result: "i32" },
  // int pm_relay_start(int a, int b)
  pm_relay_start: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_relay_to_loopback(int a, int port, int32_t *local_port)
  pm_relay_to_loopback: { parameters: ["i32", "i32", "buffer"], result: "i32" },
  // int pm_relay_wait(int64_t *out, int max, int timeout_ms): blocks
  pm_relay_wait: { parameters: ["buffer", "i32", "i32"], result: "i32", nonblocking: true },
  // int pm_express_table(char *text)
  pm_express_table: { parameters: ["buffer"], result: "i32" },
  // int pm_express_listen(int listener_fd)
  pm_express_listen: { parameters: ["i32"], result: "i32" },
  // int pm_express_stop(int listener_fd)
  pm_express_stop: { parameters: ["i32"], result: "i32" },
  // int pm_express_pass_all(int listener_fd, int on)
  pm_express_pass_all: { parameters: ["i32", "i32"], result: "i32" },
  // int pm_express_waiting(void)
  pm_express_waiting: { parameters: [], result: "i32" },
  // double pm_express_age_ms(int fd)
  pm_express_age_ms: { parameters: ["i32"], result: "f64" },
  // int pm_express_channels(int id, int32_t *pairs, int n)
  pm_express_channels: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  // int pm_express_next_instance(int id)
  pm_express_next_instance: { parameters: ["i32"], result: "i32" },
  // int pm_express_events(uint8_t *out, int max, int32_t *dropped)
  pm_express_events: { parameters: ["buffer", "i32", "buffer"], result: "i32" },
  // int pm_express_event_size(void)
  pm_express_event_size: { parameters: [], result: "i32" },
  // int pm_express_event_layout(int32_t *out, int max)
  pm_express_event_layout: { parameters: ["buffer", "i32"], result: "i32" },
  // int pm_express_table_limits(int32_t *out, int max)
  pm_express_table_limits: { parameters: ["buffer", "i32"], result: "i32" },
  // int pm_express_decide(char *table, uint8_t *bytes, int n, struct event *out)
  pm_express_decide: { parameters: ["buffer", "buffer", "i32", "buffer"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;
