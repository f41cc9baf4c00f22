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
 *
 * Build: cc -O2 -pthread -o tlsload tlsload.c -lssl -lcrypto
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: tlsload HOST PORT SNI THREADS SECONDS\n");
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
