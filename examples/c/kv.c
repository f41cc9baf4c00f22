/*
 * KV1, a line-based key-value service that receives its clients from
 * portmux (docs/handoff.md). Plain POSIX and Linux's SO_PEERCRED, no
 * library: a thread per channel and per client, so no client waits for
 * another.
 *
 *   cc -O2 -Wall -Wextra -pthread -o kv kv.c
 *   ./kv SOCKET_PATH [--sender-uid UID]
 *
 * A channel is taken only from a process of our own uid or root
 * (--sender-uid: that uid only), checked with SO_PEERCRED.
 */
#define _GNU_SOURCE /* struct ucred, SO_PEERCRED, accept4, MSG_CMSG_CLOEXEC */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_FDS 16               /* room for fds in each read (the contract needs one) */
#define MAX_RECORD (64 * 1024)   /* a longer "record" is not portmux's */
#define MAX_LINE 4096            /* a client's line, its newline included */
#define MAX_QUEUED 64            /* fds waiting for their record (one, with portmux) */
#define LOST (-1)                /* in the queue: a record whose fd the kernel closed */
#define NONE (-2)                /* from an empty queue */

static const char *socket_path;

static void say(const char *format, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *format, ...) {
  char line[512];
  va_list ap;
  va_start(ap, format);
  vsnprintf(line, sizeof line, format, ap);
  va_end(ap);
  fprintf(stderr, "kv: %s\n", line);
}

/* ---- the store: one for the whole process ---- */

struct entry {
  struct entry *next;
  char *key, *value;
};
static struct entry *buckets[1024];
static pthread_mutex_t store_lock = PTHREAD_MUTEX_INITIALIZER;

static unsigned bucket_of(const char *key) {
  unsigned h = 2166136261u;
  while (*key) h = (h ^ (unsigned char)*key++) * 16777619u;
  return h % 1024;
}

static int store_set(const char *key, const char *value) {
  char *v = strdup(value);
  if (!v) return -1;
  pthread_mutex_lock(&store_lock);
  struct entry **head = &buckets[bucket_of(key)];
  for (struct entry *e = *head; e; e = e->next) {
    if (strcmp(e->key, key) == 0) {
      free(e->value);
      e->value = v;
      pthread_mutex_unlock(&store_lock);
      return 0;
    }
  }
  struct entry *e = malloc(sizeof *e);
  char *k = strdup(key);
  if (!e || !k) {
    pthread_mutex_unlock(&store_lock);
    free(e), free(k), free(v);
    return -1;
  }
  e->key = k, e->value = v, e->next = *head;
  *head = e;
  pthread_mutex_unlock(&store_lock);
  return 0;
}

/* Copies the value of key (or NOTFOUND) into out. */
static void store_get(const char *key, char *out, size_t size) {
  pthread_mutex_lock(&store_lock);
  const char *found = "NOTFOUND";
  for (struct entry *e = buckets[bucket_of(key)]; e; e = e->next) {
    if (strcmp(e->key, key) == 0) found = e->value;
  }
  snprintf(out, size, "%s", found);
  pthread_mutex_unlock(&store_lock);
}

/* ---- a client ---- */

struct client {
  int fd;
  char who[128]; /* "address port", from the record */
};

static int send_all(int fd, const char *text) {
  size_t len = strlen(text);
  while (len > 0) {
    ssize_t n = send(fd, text, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    text += n, len -= (size_t)n;
  }
  return 0;
}

/* The reply to one command line (NUL-terminated, without its newline). */
static void answer(char *line, size_t len, const char *who, char *out, size_t size) {
  snprintf(out, size, "ERR bad command\n");
  if (strlen(line) != len) return; /* a NUL byte in the line */
  if (strncmp(line, "SET ", 4) == 0) {
    char *key = line + 4, *space = strchr(key, ' ');
    if (!space || space == key) return;
    *space = '\0';
    snprintf(out, size, store_set(key, space + 1) == 0 ? "OK\n" : "ERR out of memory\n");
  } else if (strncmp(line, "GET ", 4) == 0) {
    const char *key = line + 4;
    if (!*key || strchr(key, ' ')) return;
    store_get(key, out, size - 1);
    strcat(out, "\n");
  } else if (strcmp(line, "WHO") == 0) {
    snprintf(out, size, "%s\n", who);
  }
}

/* One client, from its very first byte: portmux only peeked. */
static void *serve_client(void *arg) {
  struct client *c = arg;
  char buf[MAX_LINE], out[MAX_LINE + 32];
  size_t have = 0;
  int greeted = 0;
  fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) & ~O_NONBLOCK); /* it arrives non-blocking */
  for (;;) {
    char *nl = memchr(buf, '\n', have);
    if (!nl) {
      if (have == sizeof buf) {
        send_all(c->fd, "ERR line too long\n");
        break;
      }
      ssize_t n = recv(c->fd, buf + have, sizeof buf - have, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break; /* the client is done */
      have += (size_t)n;
      continue;
    }
    size_t len = (size_t)(nl - buf);
    *nl = '\0';
    if (len > 0 && buf[len - 1] == '\r') buf[--len] = '\0'; /* a CRLF line (nc -C, telnet) */
    if (!greeted) {
      if (strcmp(buf, "KV1") != 0 || len != 3) {
        send_all(c->fd, "ERR expected KV1\n");
        break;
      }
      greeted = 1;
    } else {
      answer(buf, len, c->who, out, sizeof out);
      if (send_all(c->fd, out) < 0) break;
    }
    size_t used = (size_t)(nl + 1 - buf);
    memmove(buf, nl + 1, have - used);
    have -= used;
  }
  close(c->fd);
  free(c);
  return NULL;
}

static int start_thread(void *(*run)(void *), void *arg) {
  pthread_attr_t attr;
  pthread_t thread;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 256 * 1024);
  int err = pthread_create(&thread, &attr, run, arg);
  pthread_attr_destroy(&attr);
  return err;
}

/* ---- the record: a small JSON reader, enough for v and client ---- */

struct json {
  const char *p, *end;
};

static void skip_space(struct json *j) {
  while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

static int take_char(struct json *j, char c) {
  skip_space(j);
  if (j->p < j->end && *j->p == c) return j->p++, 1;
  return 0;
}

static int hex4(struct json *j, unsigned *out) {
  *out = 0;
  for (int i = 0; i < 4; i++, j->p++) {
    if (j->p >= j->end) return -1;
    char c = *j->p;
    int d = c >= '0' && c <= '9'   ? c - '0'
            : c >= 'a' && c <= 'f' ? c - 'a' + 10
            : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                   : -1;
    if (d < 0) return -1;
    *out = *out * 16 + (unsigned)d;
  }
  return 0;
}

/* Appends one byte to a string being read (or notes that it did not fit). */
static void put(char *out, size_t size, size_t *n, int *cut, unsigned byte) {
  if (out && *n + 1 < size) out[(*n)++] = (char)byte;
  else *cut = 1;
}

/* A string into out (UTF-8, NUL-terminated; out NULL: skipped). Returns
 * -1 if it is not a string, 1 if it did not fit in out (cut short). */
static int read_string(struct json *j, char *out, size_t size) {
  size_t n = 0;
  int cut = 0;
  if (!take_char(j, '"')) return -1;
  while (j->p < j->end && *j->p != '"') {
    unsigned char c = (unsigned char)*j->p++;
    if (c < 0x20) return -1;
    if (c != '\\') {
      put(out, size, &n, &cut, c);
      continue;
    }
    if (j->p >= j->end) return -1;
    c = (unsigned char)*j->p++;
    const char *plain = c ? strchr("\"\\/bfnrt", c) : NULL;
    if (plain) {
      put(out, size, &n, &cut, (unsigned char)"\"\\/\b\f\n\r\t"[plain - "\"\\/bfnrt"]);
      continue;
    }
    unsigned cp, low;
    if (c != 'u' || hex4(j, &cp) < 0) return -1;
    if (cp >= 0xd800 && cp < 0xdc00) { /* a surrogate pair */
      if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u') return -1;
      j->p += 2;
      if (hex4(j, &low) < 0 || low < 0xdc00 || low > 0xdfff) return -1;
      cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
    } else if (cp >= 0xdc00 && cp < 0xe000) {
      return -1;
    }
    static const unsigned lead[] = {0, 0xc0, 0xe0, 0xf0}; /* UTF-8 */
    int extra = cp < 0x80 ? 0 : cp < 0x800 ? 1 : cp < 0x10000 ? 2 : 3;
    put(out, size, &n, &cut, lead[extra] | cp >> (6 * extra));
    while (extra--) put(out, size, &n, &cut, 0x80 | (cp >> (6 * extra) & 0x3f));
  }
  if (j->p >= j->end) return -1;
  j->p++;
  if (out) out[n] = '\0';
  return out && cut;
}

static int read_number(struct json *j, double *out) {
  skip_space(j);
  const char *start = j->p;
  while (j->p < j->end && *j->p && strchr("+-.0123456789eE", *j->p)) j->p++;
  if (j->p == start || j->p - start > 40) return -1;
  char text[41], *rest;
  memcpy(text, start, (size_t)(j->p - start));
  text[j->p - start] = '\0';
  *out = strtod(text, &rest);
  return *rest == '\0' ? 0 : -1;
}

static int skip_value(struct json *j, int depth) {
  double ignored;
  skip_space(j);
  if (depth > 32 || j->p >= j->end) return -1;
  char c = *j->p;
  if (c == '"') return read_string(j, NULL, 0);
  if (c == '{' || c == '[') {
    char close = c == '{' ? '}' : ']';
    j->p++;
    if (take_char(j, close)) return 0;
    do {
      if (c == '{' && (read_string(j, NULL, 0) < 0 || !take_char(j, ':'))) return -1;
      if (skip_value(j, depth + 1) < 0) return -1;
    } while (take_char(j, ','));
    return take_char(j, close) ? 0 : -1;
  }
  for (const char **word = (const char *[]){"true", "false", "null", NULL}; *word; word++) {
    size_t len = strlen(*word);
    if ((size_t)(j->end - j->p) >= len && memcmp(j->p, *word, len) == 0) return j->p += len, 0;
  }
  return read_number(j, &ignored);
}

/* Reads the record's v and client into who ("address port"). */
static int parse_record(const char *line, size_t len, char *who, size_t size) {
  struct json j = {line, line + len};
  char key[32], address[64] = "";
  double v = 0, port = -1;
  if (!take_char(&j, '{')) return -1;
  do {
    int r = read_string(&j, key, sizeof key);
    if (r < 0 || !take_char(&j, ':')) return -1;
    if (r > 0) key[0] = '\0'; /* a key too long to be one we want */
    if (strcmp(key, "v") == 0) {
      if (read_number(&j, &v) < 0) return -1;
    } else if (strcmp(key, "client") == 0) {
      if (!take_char(&j, '{')) return -1;
      do {
        r = read_string(&j, key, sizeof key);
        if (r < 0 || !take_char(&j, ':')) return -1;
        if (r > 0) key[0] = '\0';
        if (strcmp(key, "address") == 0) {
          if (read_string(&j, address, sizeof address) != 0) return -1;
        } else if (strcmp(key, "port") == 0) {
          if (read_number(&j, &port) < 0) return -1;
        } else if (skip_value(&j, 1) < 0) {
          return -1;
        }
      } while (take_char(&j, ','));
      if (!take_char(&j, '}')) return -1;
    } else if (skip_value(&j, 0) < 0) {
      return -1;
    }
  } while (take_char(&j, ','));
  if (!take_char(&j, '}')) return -1;
  skip_space(&j);
  if (j.p != j.end || v != 1 || !address[0]) return -1;
  if (port < 0 || port > 65535 || port != (int)port) return -1;
  snprintf(who, size, "%s %d", address, (int)port);
  return 0;
}

/* ---- a channel ---- */

struct queue {
  int fds[MAX_QUEUED];
  int count;
};

static int pop(struct queue *q) {
  if (q->count == 0) return NONE;
  int fd = q->fds[0];
  memmove(q->fds, q->fds + 1, (size_t)--q->count * sizeof(int));
  return fd;
}

/* One record and its fd. */
static void take(const char *line, size_t len, int fd) {
  if (fd == NONE || fd == LOST) {
    say(fd == NONE ? "a record came without an fd: skipped"
                   : "a record whose fd was lost (MSG_CTRUNC): skipped");
    return;
  }
  struct client *c = malloc(sizeof *c);
  if (!c || parse_record(line, len, c->who, sizeof c->who) < 0) {
    say("not a portmux record (or out of memory): its client is closed");
    close(fd);
    free(c);
    return;
  }
  c->fd = fd;
  say("client %s", c->who);
  int err = start_thread(serve_client, c);
  if (err) {
    say("client %s dropped: %s", c->who, strerror(err));
    close(fd);
    free(c);
  }
}

/* Reads records and fds until portmux closes the channel. */
static void *serve_channel(void *arg) {
  int channel = (int)(intptr_t)arg;
  char *buf = malloc(MAX_RECORD);
  size_t have = 0;
  struct queue q = {.count = 0};
  union {
    char bytes[CMSG_SPACE(MAX_FDS * sizeof(int))];
    struct cmsghdr align;
  } control;
  while (buf) {
    struct iovec iov = {.iov_base = buf + have, .iov_len = MAX_RECORD - have};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.bytes,
                         .msg_controllen = sizeof control.bytes};
    ssize_t n = recvmsg(channel, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      say("channel: %s", strerror(errno));
      break;
    }
    int got = 0, overflow = 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
      if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
      size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; i++, got++) {
        int fd;
        memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
        if (q.count < MAX_QUEUED) q.fds[q.count++] = fd;
        else close(fd), overflow = 1;
      }
    }
    if ((msg.msg_flags & MSG_CTRUNC) && got == 0 && q.count < MAX_QUEUED) {
      q.fds[q.count++] = LOST; /* the kernel closed the fd of the record starting here */
    }
    if (n == 0) break; /* portmux closed the channel */
    have += (size_t)n;
    char *start = buf, *nl;
    while ((nl = memchr(start, '\n', (size_t)(buf + have - start)))) {
      take(start, (size_t)(nl - start), pop(&q)); /* the i-th fd is the i-th record's */
      start = nl + 1;
    }
    have = (size_t)(buf + have - start);
    memmove(buf, start, have);
    if (have == MAX_RECORD || overflow) {
      say("a record longer than 64 KiB, or more fds than records: closing the channel");
      break;
    }
  }
  close(channel);
  for (int fd; (fd = pop(&q)) != NONE;) {
    if (fd >= 0) close(fd); /* a record cut short: its client is closed */
  }
  free(buf);
  return NULL;
}

/* ---- main ---- */

static void on_stop(int sig) {
  (void)sig;
  unlink(socket_path); /* both async-signal-safe */
  _exit(0);
}

static int listen_at(const char *path) {
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  struct stat st;
  if (strlen(path) >= sizeof addr.sun_path) {
    say("%s: too long a path for a Unix socket", path);
    return -1;
  }
  strcpy(addr.sun_path, path);
  if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(probe, (struct sockaddr *)&addr, sizeof addr) == 0) {
      say("%s: another service is receiving there", path);
      close(probe);
      return -1;
    }
    if (errno == ECONNREFUSED) unlink(path); /* a stale socket file: nobody answers on it */
    close(probe);
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(fd, 128) < 0) {
    say("%s: %s", path, strerror(errno));
    return -1;
  }
  return fd;
}

int main(int argc, char **argv) {
  long sender = -1; /* -1: our own uid or root */
  char *end = NULL;
  if (argc == 4 && strcmp(argv[2], "--sender-uid") == 0) sender = strtol(argv[3], &end, 10);
  if ((argc != 2 && argc != 4) || (argc == 4 && (!end || *end || end == argv[3] || sender < 0))) {
    fprintf(stderr, "usage: %s SOCKET_PATH [--sender-uid UID]\n", argv[0]);
    return 2;
  }
  socket_path = argv[1];
  int server = listen_at(socket_path);
  if (server < 0) return 1;
  struct sigaction stop = {.sa_handler = on_stop}, ignore = {.sa_handler = SIG_IGN};
  sigaction(SIGTERM, &stop, NULL);
  sigaction(SIGINT, &stop, NULL);
  sigaction(SIGPIPE, &ignore, NULL);
  say("listening on %s", socket_path);
  for (;;) {
    int channel = accept4(server, NULL, NULL, SOCK_CLOEXEC);
    if (channel < 0) {
      if (errno != EINTR && errno != ECONNABORTED) {
        say("accept: %s", strerror(errno)); /* out of fds, say: the channel waits in the backlog */
        usleep(100 * 1000);
      }
      continue;
    }
    struct ucred peer;
    socklen_t len = sizeof peer;
    if (getsockopt(channel, SOL_SOCKET, SO_PEERCRED, &peer, &len) < 0) {
      peer.uid = (uid_t)-1, peer.pid = 0;
    }
    int allowed = sender >= 0 ? peer.uid == (uid_t)sender : peer.uid == getuid() || peer.uid == 0;
    if (!allowed) {
      say("refused a channel from uid %d (pid %d)", (int)peer.uid, (int)peer.pid);
      close(channel);
      continue;
    }
    int err = start_thread(serve_channel, (void *)(intptr_t)channel);
    if (err) {
      say("channel dropped: %s", strerror(err));
      close(channel);
    }
  }
}
