/*
 * tlsload: new TLS connections per second with a chosen server name (SNI),
 * which wrk cannot set. Built and run by bench/https_bench.ts.
 *
 *   tlsload HOST PORT SNI THREADS SECONDS
 *       THREADS threads, each one connection after another: connect, TLS
 *       handshake (TLS 1.3, SNI, ALPN http/1.1, no verification: the
 *       benchmark's certificates are self-signed), one
 *       "GET / HTTP/1.1" with "Connection: close", read to the end, close.
 *       A connection counts only if the answer is "HTTP/1.1 200".
 *       Prints {"connections":N,"seconds":S,"errors":E}.
 *   tlsload classify HOST PORT SNI THREADS SECONDS
 *       The same connections, every one's result classified, for
 *       bench/ops_bench.ts: served (a whole answer: a 200 with all of its
 *       body), refused (ECONNREFUSED at connect), reset (ECONNRESET, or the
 *       end of the stream before a whole answer, after connect), other (any
 *       other error, an answer other than 200; nothing within 10 s is
 *       other, also counted as timeout). Runs for SECONDS (0: until SIGTERM
 *       or SIGINT; the connections under way are finished and counted).
 *       SIGUSR1 marks the moment of an operation: the connections begun
 *       after it are also counted under "after". Prints the JSON of
 *       privload classify (bench/privload.c): the counts, "after", and the
 *       longest time without a served connection ending (max_gap_ms, from
 *       gap_from_ms after the mark).
 *
 * Build: cc -O2 -pthread -o tlsload tlsload.c -lssl -lcrypto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in target;
static const char *sni;
static double deadline;
static SSL_CTX *ctx;

struct worker {
  pthread_t thread;
  long count, errors;
};

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

/* One connection, one request; 1 if it was answered with a 200. */
static int one_request(void) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  if (s < 0) return 0;
  int one = 1, ok = 0;
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  SSL *ssl = NULL;
  if (connect(s, (struct sockaddr *)&target, sizeof target) < 0) goto done;
  ssl = SSL_new(ctx);
  SSL_set_fd(ssl, s);
  SSL_set_tlsext_host_name(ssl, sni);
  if (SSL_connect(ssl) != 1) goto done;
  char req[256];
  int len = snprintf(req, sizeof req,
                     "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", sni);
  if (SSL_write(ssl, req, len) != len) goto done;
  char buf[4096];
  int got = 0, n;
  while ((n = SSL_read(ssl, buf + got, (int)sizeof buf - 1 - got)) > 0) {
    got += n;
    if (got == (int)sizeof buf - 1) got = 16; /* keep the status line */
  }
  buf[got] = 0;
  ok = strncmp(buf, "HTTP/1.1 200", 12) == 0;
done:
  if (ssl) SSL_free(ssl);
  close(s);
  return ok;
}

static void *run(void *arg) {
  struct worker *w = arg;
  while (now() < deadline) {
    if (one_request()) w->count++;
    else w->errors++;
  }
  return NULL;
}

/* ---- classify (the same harness as bench/privload.c's) ----------------- */

#include "classify.h"

/* A socket call that failed (n < 0, errno err) or met the end (n == 0). */
static enum result failed(ssize_t n, int err) {
  if (n == 0 || err == ECONNRESET || err == EPIPE) return RESET;
  if (err == EAGAIN || err == EWOULDBLOCK || err == EINPROGRESS || err == ETIMEDOUT) {
    return TIMEOUT;
  }
  return OTHER;
}

/* A TLS call that returned ret <= 0, errno err just after it. */
static enum result tls_failed(SSL *ssl, int ret, int err) {
  switch (SSL_get_error(ssl, ret)) {
  case SSL_ERROR_ZERO_RETURN: return RESET;
  case SSL_ERROR_SYSCALL: return failed(err == 0 ? 0 : -1, err);
  case SSL_ERROR_WANT_READ:
  case SSL_ERROR_WANT_WRITE: return TIMEOUT; /* SO_RCVTIMEO/SO_SNDTIMEO ran out */
  case SSL_ERROR_SSL:
    /* OpenSSL 3 says a peer's close without close_notify this way. */
    if (ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING) return RESET;
    return err == ECONNRESET || err == EPIPE ? RESET : OTHER;
  default: return OTHER;
  }
}

/* Whether head (the answer's first bytes, NUL-terminated) and total (all
 * its bytes) make a whole answer: its headers, and Content-Length bytes of
 * body if it says it. */
static int whole_answer(const char *head, long total) {
  const char *end = strstr(head, "\r\n\r\n");
  if (!end) return 0;
  long header_len = end + 4 - head;
  const char *cl = strcasestr(head, "\r\ncontent-length:");
  if (!cl || cl > end) return 1;
  return total - header_len >= atol(cl + 17);
}

static enum result classify_request(void) {
  ERR_clear_error();
  int s = bounded_socket();
  if (s < 0) return OTHER;
  if (connect(s, (struct sockaddr *)&target, sizeof target) < 0) {
    enum result r = errno == ECONNREFUSED ? REFUSED : failed(-1, errno);
    close(s);
    return r;
  }
  enum result r = SERVED;
  SSL *ssl = SSL_new(ctx);
  SSL_set_fd(ssl, s);
  SSL_set_tlsext_host_name(ssl, sni);
  int ret = SSL_connect(ssl);
  if (ret != 1) {
    r = tls_failed(ssl, ret, errno);
    goto done;
  }
  char req[256];
  int len = snprintf(req, sizeof req,
                     "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", sni);
  ret = SSL_write(ssl, req, len);
  if (ret != len) {
    r = ret <= 0 ? tls_failed(ssl, ret, errno) : OTHER;
    goto done;
  }
  char head[4096], chunk[4096];
  long total = 0;
  while ((ret = SSL_read(ssl, chunk, sizeof chunk)) > 0) {
    if (total < (long)sizeof head - 1) {
      long room = (long)sizeof head - 1 - total;
      memcpy(head + total, chunk, (size_t)(ret < room ? ret : room));
    }
    total += ret;
  }
  int err = errno;
  head[total < (long)sizeof head - 1 ? total : (long)sizeof head - 1] = 0;
  if (whole_answer(head, total)) r = strncmp(head, "HTTP/1.1 200", 12) == 0 ? SERVED : OTHER;
  else if (total > 0 && strncmp(head, "HTTP/", 5) != 0) r = OTHER; /* not HTTP at all */
  else r = tls_failed(ssl, ret, err); /* cut short: how it ended says what it is */
done:
  SSL_free(ssl);
  close(s);
  return r;
}


int main(int argc, char **argv) {
  int classifying = argc == 7 && strcmp(argv[1], "classify") == 0;
  if (classifying) argc--, argv++;
  if (argc != 6) {
    fprintf(stderr, "usage: tlsload [classify] HOST PORT SNI THREADS SECONDS\n");
    return 2;
  }
  target.sin_family = AF_INET;
  target.sin_port = htons((unsigned short)atoi(argv[2]));
  if (inet_pton(AF_INET, argv[1], &target.sin_addr) != 1) {
    fprintf(stderr, "tlsload: bad IPv4 address %s\n", argv[1]);
    return 2;
  }
  sni = argv[3];
  int threads = atoi(argv[4]);
  double seconds = atof(argv[5]);
  ctx = SSL_CTX_new(TLS_client_method());
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
  static const unsigned char alpn[] = "\x08http/1.1";
  SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn - 1);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF); /* every handshake in full */
  if (classifying) {
    int code = classify(threads, seconds, classify_request);
    SSL_CTX_free(ctx);
    return code;
  }

  struct worker *ws = calloc((size_t)threads, sizeof *ws);
  double start = now();
  deadline = start + seconds;
  for (int i = 0; i < threads; i++) pthread_create(&ws[i].thread, NULL, run, &ws[i]);
  long total = 0, errors = 0;
  for (int i = 0; i < threads; i++) {
    pthread_join(ws[i].thread, NULL);
    total += ws[i].count;
    errors += ws[i].errors;
  }
  printf("{\"connections\":%ld,\"seconds\":%.3f,\"errors\":%ld}\n", total, now() - start,
         errors);
  SSL_CTX_free(ctx);
  return 0;
}
