/*
 * privload: a load generator for the private protocol, in C so that it is
 * faster than what it measures. Built and run by bench/peers_bench.ts.
 *
 *   privload conn HOST PORT THREADS SECONDS
 *       THREADS threads, each opening connections one after another:
 *       connect, send "PRIV ping\n", read its 10-byte echo, close.
 *       Prints {"connections":N,"seconds":S,"p50_us":..,"p99_us":..,
 *       "errors":E,"cpu_s":C} (cpu_s: this process's own CPU time).
 *   privload bulk HOST PORT MIB
 *       One connection: writes MIB MiB and reads them back (echo).
 *       Prints {"mb_per_s":..} (both directions counted).
 *   privload classify HOST PORT THREADS SECONDS
 *       As conn, but every connection's result is classified, for
 *       bench/ops_bench.ts: served (the whole echo), refused (ECONNREFUSED
 *       at connect), reset (ECONNRESET, or the end of the stream before the
 *       whole echo, after connect), other (any other error, a wrong echo;
 *       no answer within 10 s is other, also counted as timeout). Runs for
 *       SECONDS (0: until SIGTERM or SIGINT; the connections under way are
 *       finished and counted). SIGUSR1 marks the moment of an operation:
 *       the connections begun after it are also counted under "after".
 *       Prints {"attempted":..,"served":..,"refused":..,"reset":..,
 *       "other":..,"timeout":..,"after":{the same},"seconds":S,
 *       "max_gap_ms":G,"gap_from_ms":F}: G is the longest time without a
 *       served connection ending (the run's start and end count as ends),
 *       F when it began, in ms from the mark (from the start without one).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in target;
static double deadline;
#define MAX_SAMPLES (1 << 21)

struct worker {
  pthread_t thread;
  unsigned *samples; /* microseconds */
  long count, errors;
};

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static int open_conn(void) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  if (s < 0) return -1;
  int one = 1;
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(s, (struct sockaddr *)&target, sizeof target) < 0) {
    close(s);
    return -1;
  }
  return s;
}

static void *run_conns(void *arg) {
  struct worker *w = arg;
  static const char msg[] = "PRIV ping\n";
  char buf[64];
  while (now() < deadline) {
    double t0 = now();
    int s = open_conn();
    if (s < 0) { w->errors++; continue; }
    int got = 0;
    if (send(s, msg, sizeof msg - 1, MSG_NOSIGNAL) == (ssize_t)(sizeof msg - 1)) {
      while (got < (int)sizeof msg - 1) {
        ssize_t n = recv(s, buf + got, sizeof buf - got, 0);
        if (n <= 0) break;
        got += (int)n;
      }
    }
    close(s);
    if (got != (int)sizeof msg - 1 || memcmp(buf, msg, sizeof msg - 1) != 0) { w->errors++; continue; }
    if (w->count < MAX_SAMPLES) w->samples[w->count] = (unsigned)((now() - t0) * 1e6);
    w->count++;
  }
  return NULL;
}

static int cmp(const void *a, const void *b) {
  unsigned x = *(const unsigned *)a, y = *(const unsigned *)b;
  return x < y ? -1 : x > y;
}

static int conns(int threads, double seconds) {
  struct worker *ws = calloc((size_t)threads, sizeof *ws);
  double start = now();
  deadline = start + seconds;
  for (int i = 0; i < threads; i++) {
    ws[i].samples = malloc(sizeof(unsigned) * MAX_SAMPLES);
    pthread_create(&ws[i].thread, NULL, run_conns, &ws[i]);
  }
  long total = 0, errors = 0, kept = 0;
  for (int i = 0; i < threads; i++) {
    pthread_join(ws[i].thread, NULL);
    total += ws[i].count;
    errors += ws[i].errors;
  }
  double elapsed = now() - start;
  unsigned *all = malloc(sizeof(unsigned) * (size_t)(total > 0 ? total : 1));
  for (int i = 0; i < threads; i++) {
    long n = ws[i].count < MAX_SAMPLES ? ws[i].count : MAX_SAMPLES;
    memcpy(all + kept, ws[i].samples, sizeof(unsigned) * (size_t)n);
    kept += n;
  }
  qsort(all, (size_t)kept, sizeof *all, cmp);
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
               ru.ru_stime.tv_usec / 1e6;
  printf("{\"connections\":%ld,\"seconds\":%.3f,\"p50_us\":%u,\"p99_us\":%u,\"errors\":%ld,"
         "\"cpu_s\":%.3f}\n",
         total, elapsed, kept ? all[kept / 2] : 0, kept ? all[(long)(kept * 0.99)] : 0, errors, cpu);
  return 0;
}

static int bulk(long mib) {
  int s = open_conn();
  if (s < 0) { perror("connect"); return 1; }
  long total = mib << 20, sent = 0, got = 0;
  static char out[1 << 16], in[1 << 18];
  memset(out, 'a', sizeof out);
  memcpy(out, "PRIV", 4);
  double t0 = now();
  /* Alternate writes and reads so neither side's buffers fill up. */
  while (got < total) {
    if (sent < total && sent - got < (8 << 20)) {
      size_t want = total - sent < (long)sizeof out ? (size_t)(total - sent) : sizeof out;
      ssize_t n = send(s, out, want, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) { sent += n; memcpy(out, "aaaa", 4); }
    }
    ssize_t r = recv(s, in, sizeof in, MSG_DONTWAIT);
    if (r == 0) break;
    if (r > 0) got += r;
  }
  double secs = now() - t0;
  close(s);
  printf("{\"mb_per_s\":%.1f,\"bytes\":%ld}\n", 2.0 * got / secs / 1e6, got);
  return got == total ? 0 : 1;
}

/* ---- classify ---------------------------------------------------------- */

#include "classify.h"

/* A receive or send that failed: the peer cut it, or it took too long. */
static enum result failed(ssize_t n) {
  if (n == 0 || errno == ECONNRESET || errno == EPIPE) return RESET;
  if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINPROGRESS || errno == ETIMEDOUT) {
    return TIMEOUT;
  }
  return OTHER;
}

static enum result one_echo(void) {
  static const char msg[] = "PRIV ping\n";
  int s = bounded_socket();
  if (s < 0) return OTHER;
  enum result r = SERVED;
  if (connect(s, (struct sockaddr *)&target, sizeof target) < 0) {
    r = errno == ECONNREFUSED ? REFUSED : failed(-1);
    close(s);
    return r;
  }
  ssize_t n = send(s, msg, sizeof msg - 1, MSG_NOSIGNAL);
  if (n != (ssize_t)(sizeof msg - 1)) r = n < 0 ? failed(n) : OTHER;
  char buf[64];
  int got = 0;
  while (r == SERVED && got < (int)sizeof msg - 1) {
    n = recv(s, buf + got, sizeof buf - got, 0);
    if (n <= 0) r = failed(n); /* EOF or a short answer: cut after connect */
    else got += (int)n;
  }
  if (r == SERVED && memcmp(buf, msg, sizeof msg - 1) != 0) r = OTHER;
  close(s);
  return r;
}


int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: privload conn HOST PORT THREADS SECONDS | bulk HOST PORT MIB"
                    " | classify HOST PORT THREADS SECONDS\n");
    return 2;
  }
  target.sin_family = AF_INET;
  target.sin_port = htons((unsigned short)atoi(argv[3]));
  inet_pton(AF_INET, argv[2], &target.sin_addr);
  if (strcmp(argv[1], "conn") == 0 && argc >= 6) return conns(atoi(argv[4]), atof(argv[5]));
  if (strcmp(argv[1], "bulk") == 0) return bulk(atol(argv[4]));
  if (strcmp(argv[1], "classify") == 0 && argc >= 6) {
    return classify(atoi(argv[4]), atof(argv[5]), one_echo);
  }
  return 2;
}
