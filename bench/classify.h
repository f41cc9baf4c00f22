/*
 * The classify mode of bench/privload.c and bench/tlsload.c: threads that
 * open one connection after another and count each as served, refused,
 * reset or other, until a signal or a duration; SIGUSR1 marks the moment
 * of an operation (bench/ops_bench.ts), and the connections begun after it
 * are counted again. Included by both, after their now(); each gives
 * classify() its own one-connection function.
 */
#ifndef PORTMUX_BENCH_CLASSIFY_H
#define PORTMUX_BENCH_CLASSIFY_H

enum result { SERVED, REFUSED, RESET, OTHER, TIMEOUT };
#define CLASSIFY_TIMEOUT_S 10

struct counts {
  long attempted, served, refused, reset, other, timeout;
};

struct classifier {
  pthread_t thread;
  struct counts all, after;
  double *ends; /* when each served connection ended */
  long n_ends, cap_ends;
};

static _Atomic int classify_stop;
static _Atomic double mark = INFINITY;

static void count(struct counts *c, enum result r) {
  c->attempted++;
  switch (r) {
  case SERVED: c->served++; break;
  case REFUSED: c->refused++; break;
  case RESET: c->reset++; break;
  case TIMEOUT: c->timeout++; c->other++; break;
  default: c->other++;
  }
}

/* A TCP socket whose every call, connect too, gives up after
 * CLASSIFY_TIMEOUT_S: a connection never answered is counted, not a stuck
 * thread. -1 if none could be made. */
static int bounded_socket(void) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  if (s < 0) return -1;
  int one = 1;
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct timeval tv = {.tv_sec = CLASSIFY_TIMEOUT_S};
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  return s;
}

static enum result (*one_connection)(void);

static void *run_classify(void *arg) {
  struct classifier *w = arg;
  while (!atomic_load(&classify_stop)) {
    double t0 = now();
    enum result r = one_connection();
    count(&w->all, r);
    if (t0 >= atomic_load(&mark)) count(&w->after, r);
    if (r != SERVED) continue;
    if (w->n_ends == w->cap_ends) {
      w->cap_ends = w->cap_ends ? 2 * w->cap_ends : 4096;
      w->ends = realloc(w->ends, sizeof(double) * (size_t)w->cap_ends);
    }
    w->ends[w->n_ends++] = now();
  }
  return NULL;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void add(struct counts *sum, const struct counts *c) {
  sum->attempted += c->attempted;
  sum->served += c->served;
  sum->refused += c->refused;
  sum->reset += c->reset;
  sum->other += c->other;
  sum->timeout += c->timeout;
}

static void print_counts(const struct counts *c) {
  printf("\"attempted\":%ld,\"served\":%ld,\"refused\":%ld,\"reset\":%ld,\"other\":%ld,"
         "\"timeout\":%ld",
         c->attempted, c->served, c->refused, c->reset, c->other, c->timeout);
}

/* THREADS threads, each one connection after another (one()), until
 * SECONDS pass (0: until SIGTERM or SIGINT); SIGUSR1 marks the moment
 * of the operation. Prints the counts as JSON. */
static int classify(int threads, double seconds, enum result (*one)(void)) {
  one_connection = one;
  /* Only this thread takes the signals (sigtimedwait), so that none
   * interrupts a worker's connect or recv. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  struct classifier *ws = calloc((size_t)threads, sizeof *ws);
  double start = now();
  for (int i = 0; i < threads; i++) pthread_create(&ws[i].thread, NULL, run_classify, &ws[i]);
  for (;;) {
    double left = seconds > 0 ? start + seconds - now() : 1;
    if (left <= 0) break;
    struct timespec ts = {.tv_sec = (time_t)left, .tv_nsec = (long)((left - (long)left) * 1e9)};
    int sig = sigtimedwait(&set, NULL, &ts);
    if (sig == SIGUSR1) atomic_store(&mark, now());
    else if (sig == SIGTERM || sig == SIGINT) break;
  }
  atomic_store(&classify_stop, 1);
  struct counts all = {0}, after = {0};
  long n = 0;
  for (int i = 0; i < threads; i++) {
    pthread_join(ws[i].thread, NULL);
    add(&all, &ws[i].all);
    add(&after, &ws[i].after);
    n += ws[i].n_ends;
  }
  double end = now();
  double *ends = malloc(sizeof(double) * (size_t)(n + 2));
  long k = 0;
  ends[k++] = start;
  for (int i = 0; i < threads; i++) {
    memcpy(ends + k, ws[i].ends, sizeof(double) * (size_t)ws[i].n_ends);
    k += ws[i].n_ends;
  }
  ends[k++] = end;
  qsort(ends, (size_t)k, sizeof *ends, cmp_double);
  double gap = 0, from = start;
  for (long i = 1; i < k; i++) {
    if (ends[i] - ends[i - 1] > gap) gap = ends[i] - ends[i - 1], from = ends[i - 1];
  }
  double origin = isfinite(atomic_load(&mark)) ? atomic_load(&mark) : start;
  printf("{");
  print_counts(&all);
  printf(",\"after\":{");
  print_counts(&after);
  printf("},\"seconds\":%.3f,\"max_gap_ms\":%.1f,\"gap_from_ms\":%.1f}\n", end - start,
         gap * 1e3, (from - origin) * 1e3);
  return 0;
}

#endif
