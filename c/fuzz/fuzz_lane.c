/*
 * Fuzz harness for the shim's C that reads bytes it does not control,
 * built with ASan and UBSan by tests/c_fuzz_test.ts:
 *   - the express lane: its routing-table parser, its ClientHello parser,
 *     decide() and describe_hello(), through pm_express_decide (tables) and
 *     through the same steps on tables parsed once (fuzz_express.c: the
 *     bulk of the hellos), the two compared every so often;
 *   - the handoff receiver's records and fds (fuzz_receiver.c);
 *   - pm_verify_fd's host parser, pm_channel_open's path.
 * Inputs: the hello fixtures whole and every truncation of them; hellos
 * with SNI and ALPN names near their 256-byte buffers; seeded mutations
 * (bit flips, interesting bytes, insertions, deletions, splices, length
 * fields at their boundaries); tables mutated token by token and at their
 * limits. Every input gets heap buffers of exactly its size, so that one
 * byte past them is caught. A sanitizer report ends the run (the input is
 * written to --crash-dir), so does a broken invariant (exit 1); at the end
 * it prints how many inputs it ran.
 *
 *   fuzz_lane [--seed N] [--mutations N] [--crash-dir DIR] FIXTURE.bin...
 *
 * The inputs are the same for a seed.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <sanitizer/common_interface_defs.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "fuzz.h"

#ifndef __has_feature /* clang's */
#define __has_feature(x) 0
#endif
#if !defined(__SANITIZE_ADDRESS__) && !__has_feature(address_sanitizer)
#error "build with -fsanitize=address,undefined: the harness is only worth running under the sanitizers"
#endif

/* ---------- what the harness calls in the shim ---------- */

int pm_verify_fd(int fd, const char *local_host, int local_port, const char *peer_host, int peer_port);
int pm_channel_open(const char *path, int uid, int gid, int pid);

/* ---------- randomness, deterministic ---------- */

static uint64_t rng_state;

static uint64_t rnd(void) { /* splitmix64 */
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static int below(int n) { return n <= 0 ? 0 : (int)(rnd() % (uint64_t)n); }
static int chance(int percent) { return below(100) < percent; }

/* ---------- growable byte strings ---------- */

struct buf {
  uint8_t *b;
  size_t len, cap;
};

static void need(struct buf *s, size_t more) {
  if (s->len + more <= s->cap) return;
  size_t cap = s->cap ? s->cap : 256;
  while (cap < s->len + more) cap *= 2;
  if (!(s->b = realloc(s->b, cap))) abort();
  s->cap = cap;
}

static void put(struct buf *s, const void *p, size_t n) {
  need(s, n);
  if (n) memcpy(s->b + s->len, p, n);
  s->len += n;
}

static void put8(struct buf *s, int v) {
  uint8_t c = (uint8_t)v;
  put(s, &c, 1);
}

static void put16(struct buf *s, int v) {
  put8(s, v >> 8);
  put8(s, v);
}

static void puts_(struct buf *s, const char *t) { put(s, t, strlen(t)); }

static void putf(struct buf *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(struct buf *s, const char *fmt, ...) {
  char tmp[4096];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  put(s, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static void put_hex(struct buf *s, const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++) putf(s, "%02x", p[i]);
}

static struct buf copy_of(const uint8_t *p, size_t n) {
  struct buf s = {0};
  put(&s, p, n);
  return s;
}

/* Replaces s[at, at + n) with p[0, m). */
static void splice_in(struct buf *s, size_t at, size_t n, const void *p, size_t m) {
  if (at > s->len) at = s->len;
  if (n > s->len - at) n = s->len - at;
  need(s, m);
  memmove(s->b + at + m, s->b + at + n, s->len - at - n);
  if (m) memcpy(s->b + at, p, m);
  s->len = s->len - n + m;
}

/* ---------- what the run is doing, for a crash ---------- */

static const char *stage = "start";
static long stage_input;
static const char *cur_table;
static const uint8_t *cur_bytes;
static int cur_len;
static const char *crash_dir = ".";

static void write_file(const char *name, const void *p, size_t n) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", crash_dir, name);
  FILE *f = fopen(path, "wb");
  if (!f) return;
  fwrite(p, 1, n, f);
  fclose(f);
  fprintf(stderr, "fuzz: wrote %s\n", path);
}

/* Said before the process dies of a sanitizer report (or a broken
 * invariant): which input, kept for a rerun. */
static void on_death(void) {
  static int said;
  if (said++) return;
  fprintf(stderr, "fuzz: died in stage %s, input %ld\n", stage, stage_input);
  if (cur_table) write_file("crash-table.txt", cur_table, strlen(cur_table));
  if (cur_bytes) write_file("crash-bytes.bin", cur_bytes, (size_t)cur_len);
}

/* UBSan (its own runtime) dies by abort() (abort_on_error below). */
static void on_abort(int sig) {
  (void)sig;
  on_death();
  signal(SIGABRT, SIG_DFL);
  raise(SIGABRT);
}

/* Defaults for a run by hand; ASAN_OPTIONS and UBSAN_OPTIONS add to them. */
const char *__asan_default_options(void) {
  return "abort_on_error=1:detect_stack_use_after_return=1:detect_leaks=1";
}
const char *__ubsan_default_options(void) { return "print_stacktrace=1:abort_on_error=1:halt_on_error=1"; }

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "fuzz: invariant broken: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  on_death();
  _exit(1); /* not exit: LeakSanitizer would report the input in hand */
}

/* ---------- the lane ---------- */

/* A table parsed once, and its text. */
struct parsed {
  const char *text;
  struct table *t;
};

static long lane_runs, lane_matched, lane_bad_tables, lane_checked;
static int event_size;

static void check(const struct event *e, int site_count) {
  const char *wrong = fuzz_check_event(e, site_count);
  if (wrong) fail("event: %s", wrong);
}

/* Exact-size heap copies of an input, for the time of one decision. */
struct input {
  uint8_t *b;
  struct event *e;
  int n;
};

static struct input input_of(const uint8_t *b, size_t n) {
  struct input in = {malloc(n ? n : 1), malloc((size_t)event_size), (int)n};
  if (n) memcpy(in.b, b, n);
  memset(in.e, 0xa5, (size_t)event_size); /* every byte checked must have been written */
  cur_bytes = in.b, cur_len = in.n;
  /* No bytes: a pointer past the one allocated, so that reading any is caught. */
  if (!n) in.b++;
  return in;
}

static void input_free(struct input *in) {
  if (!in->n) in->b--;
  free(in->b), free(in->e);
  cur_bytes = NULL;
}

/* Through the export, which parses the table each time: the table text is
 * fuzzed here. Returns its answer; *e_out (event_size bytes) gets the event. */
static int decide_exported(const char *table, const uint8_t *b, size_t n, uint8_t *e_out) {
  size_t tl = strlen(table) + 1;
  char *t = malloc(tl);
  memcpy(t, table, tl);
  cur_table = t;
  struct input in = input_of(b, n);
  int rc = pm_express_decide(t, in.b, in.n, in.e);
  lane_runs++;
  if (rc == -EINVAL || rc == -ENOMEM) {
    lane_bad_tables++;
  } else {
    check(in.e, -1);
    if (rc >= 0) lane_matched++;
    if (e_out) memcpy(e_out, in.e, (size_t)event_size);
  }
  input_free(&in);
  cur_table = NULL;
  free(t);
  return rc;
}

/* On a parsed table; every so often (check_export) through the export
 * first, and both must say the same. */
static int decide_parsed(const struct parsed *p, const uint8_t *b, size_t n, int check_export) {
  uint8_t *exported = check_export ? malloc((size_t)event_size) : NULL;
  int rc_exported = exported ? decide_exported(p->text, b, n, exported) : 0;
  cur_table = p->text;
  struct input in = input_of(b, n);
  int rc = fuzz_decide_parsed(p->t, in.b, in.n, in.e);
  lane_runs++;
  check(in.e, fuzz_site_count(p->t));
  if (rc >= 0) lane_matched++;
  if (exported) {
    if (rc_exported != rc || memcmp(exported, in.e, (size_t)event_size) != 0)
      fail("pm_express_decide said %d, fuzz_decide_parsed %d or another event: update the copy in "
           "c/fuzz/fuzz_express.c",
           rc_exported, rc);
    free(exported);
    lane_checked++;
  }
  input_free(&in);
  cur_table = NULL;
  return rc;
}

/* Tables as src/route/express_lane.ts writes them (tests/express_lane_test.ts). */
static const char *const SEED_TABLES[] = {
    ("limits 16384 5000 20000 50000 1000 1\n"
     "site 7 =a.test *.example.org\n"
     "site 8 =py.example.com\n"
     "rule 0 https -1 - tls 1 =api.example.com -1\n"
     "rule 1 https -1 - tls 1 *.example.org 1 6832\n"
     "rule 2 handoff 3 7b2276223a312c22726f757465223a2270726976222c2273657276696365223a22737663222c22636c"
     "69656e74223a prefix 50524956\n"
     "rule 3 https -1 - tls -1 -1\n"
     "rule 4 slow -1 - prefix 47455420\n"
     "rule 5 slow -1 - opaque\n"
     "rule 6 handoff 3 7b2276223a31 prefix 5353482d\n"),
    /* any hello: every one that parses is described */
    "limits 16384 5000 20000 50000 1000 1\nsite 7 =a.test\nrule 0 https -1 - tls -1 -1\n",
    ("limits 65536 5000 20000 50000 1000 2\nsite 7 \nsite 9 *.example.com =mail.example.net\n"
     "rule 0 https -1 - tls 2 =www.example.org *.example.net 2 6832 687474702f312e31\n"
     "rule 1 handoff 4 7b7d prefix 16\n"),
    ("limits 16384 5000 20000 50000 1000 1\nsite 7 \nrule 0 slow -1 - prefix 160301\n"
     "rule 1 https -1 - tls -1 1 696d6170\nrule 2 https -1 - tls 0 -1\n"),
    "limits 1 1 1 1 1 1\nrule 0 handoff 1 - prefix 00\n",
    "limits 16384 5000 20000 50000 1000 3\n",
};
#define N_SEED_TABLES (int)(sizeof SEED_TABLES / sizeof SEED_TABLES[0])

/* Tables of the largest sizes the parser takes (and one more): a rule with
 * 16 names of 255 bytes, 255-byte ALPN names, a 256-byte prefix, a
 * 1023-byte head, 64 rules, 16 sites. */
static struct buf big_tables[8];
static int n_big_tables;

static void make_big_tables(void) {
  for (int v = 0; v < 8; v++) {
    int over = v & 1; /* one past each limit: the table is refused */
    struct buf *s = &big_tables[n_big_tables++];
    puts_(s, "limits 16384 5000 20000 50000 1000 9\n");
    switch (v / 2) {
    case 0: /* names and ALPN ids of the longest lengths */
      puts_(s, "site 7");
      for (int i = 0; i < 16 + over; i++) {
        puts_(s, i % 2 ? " *." : " =");
        for (int k = 0; k < 255 - 1 - (i % 2) + over; k++) put8(s, 'a' + k % 26);
      }
      puts_(s, "\nrule 0 https -1 - tls 16");
      for (int i = 0; i < 16; i++) {
        puts_(s, " =");
        for (int k = 0; k < 255 - (i % 3) + over; k++) put8(s, 'a' + (i + k) % 26);
      }
      putf(s, " %d", 16 + over);
      for (int i = 0; i < 16 + over; i++) {
        uint8_t id[256];
        int n = 255 - i % 4 + over;
        for (int k = 0; k < n; k++) id[k] = (uint8_t)('a' + k % 26);
        put8(s, ' ');
        put_hex(s, id, (size_t)n);
      }
      puts_(s, "\n");
      break;
    case 1: { /* the longest prefix and head */
      uint8_t b[1024];
      memset(b, 'P', sizeof b);
      puts_(s, "rule 0 handoff 1 ");
      put_hex(s, b, (size_t)(1023 + over));
      puts_(s, " prefix ");
      put_hex(s, b, (size_t)(256 + over));
      puts_(s, "\nrule 1 https -1 - tls -1 -1\n");
      break;
    }
    case 2: /* as many rules as there is room for */
      for (int i = 0; i < 64 + over; i++) putf(s, "rule %d https -1 - tls -1 1 %02x\n", i, 0x61 + i % 26);
      break;
    default: /* as many sites */
      for (int i = 0; i < 16 + over; i++) putf(s, "site %d =s%d.test\n", 100 + i, i);
      puts_(s, "rule 0 https -1 - tls -1 -1\n");
    }
    put8(s, 0);
  }
}

/* ---------- ClientHellos ---------- */

struct hello_spec {
  int record_version; /* of the record header */
  int sni_len;        /* -1: no server_name; 0: an empty one */
  int alpn[8];        /* name lengths (2 with grease_at: a GREASE value) */
  int alpn_count;     /* -1: no ALPN extension */
  int grease_at;      /* index of a GREASE name, or -1 */
  int versions;       /* add supported_versions */
  int padding;        /* bytes of a padding extension, or 0 */
  int upper;          /* SNI in upper case */
};

/* A hello in one record, as a client sends it. */
static struct buf build_hello(const struct hello_spec *h) {
  struct buf ext = {0}, body = {0}, out = {0};
  if (h->sni_len >= 0) {
    put16(&ext, 0);
    if (h->sni_len == 0) {
      put16(&ext, 0);
    } else {
      put16(&ext, h->sni_len + 5);
      put16(&ext, h->sni_len + 3);
      put8(&ext, 0);
      put16(&ext, h->sni_len);
      for (int i = 0; i < h->sni_len; i++) {
        int c = i % 8 == 7 ? '.' : 'a' + i % 26;
        put8(&ext, h->upper && c != '.' ? c - 32 : c);
      }
    }
  }
  if (h->alpn_count >= 0) {
    int list = 0;
    for (int i = 0; i < h->alpn_count; i++) list += 1 + h->alpn[i];
    put16(&ext, 16);
    put16(&ext, list + 2);
    put16(&ext, list);
    for (int i = 0; i < h->alpn_count; i++) {
      put8(&ext, h->alpn[i]);
      for (int k = 0; k < h->alpn[i]; k++) put8(&ext, i == h->grease_at ? 0x3a : '0' + (i + k) % 75);
    }
  }
  if (h->versions) {
    put16(&ext, 43), put16(&ext, 5), put8(&ext, 4);
    put16(&ext, 0x0304), put16(&ext, 0x0303);
  }
  if (h->padding) {
    put16(&ext, 21), put16(&ext, h->padding);
    for (int i = 0; i < h->padding; i++) put8(&ext, 0);
  }
  put16(&body, 0x0303);
  for (int i = 0; i < 32; i++) put8(&body, i * 7);
  put8(&body, 32);
  for (int i = 0; i < 32; i++) put8(&body, 255 - i);
  put16(&body, 4), put16(&body, 0x1301), put16(&body, 0x1302);
  put8(&body, 1), put8(&body, 0);
  put16(&body, (int)ext.len);
  put(&body, ext.b, ext.len);
  put8(&out, 22), put16(&out, h->record_version), put16(&out, (int)body.len + 4);
  put8(&out, 1), put8(&out, (int)(body.len >> 16)), put16(&out, (int)(body.len & 0xffff));
  put(&out, body.b, body.len);
  free(ext.b), free(body.b);
  return out;
}

/* A random hello, its names often near the buffers' sizes. */
static struct buf random_hello(void) {
  struct hello_spec h = {.record_version = chance(50) ? 0x0301 : 0x0303, .grease_at = -1};
  h.sni_len = chance(10) ? -1 : chance(5) ? 0 : chance(50) ? 250 + below(11) : 1 + below(64);
  h.alpn_count = chance(10) ? -1 : below(5);
  int left = 258;
  for (int i = 0; i < h.alpn_count; i++) {
    int n = chance(30) ? 250 + below(6) : chance(50) ? left - 1 - below(3) : 1 + below(20);
    if (n < 1) n = 1;
    if (n > 255) n = 255;
    h.alpn[i] = n;
    left -= 1 + n;
  }
  if (h.alpn_count > 0 && chance(30)) h.grease_at = below(h.alpn_count), h.alpn[h.grease_at] = 2;
  h.versions = chance(70);
  h.padding = chance(20) ? below(600) : 0;
  h.upper = chance(20);
  return build_hello(&h);
}

/* ---------- mutations ---------- */

static const int INTERESTING[] = {0, 1, 2, 3, 4, 0x0a, 0x1a, 0x20, 0x3f, 0x40, 0x7e, 0x7f, 0x80, 0xfe, 0xff};
#define N_INTERESTING (int)(sizeof INTERESTING / sizeof INTERESTING[0])

/* Where a hello's length fields are (offset and size in bytes), found by
 * walking it as far as it holds together. */
struct field {
  int at, size, value, room; /* room: the bytes its length could cover */
};

static int be(const uint8_t *b, int size) {
  int v = 0;
  for (int i = 0; i < size; i++) v = v << 8 | b[i];
  return v;
}

static int length_fields(const uint8_t *b, int n, struct field *f, int max) {
  int k = 0;
#define FIELD(at_, size_)                                                                          \
  do {                                                                                             \
    if ((at_) + (size_) > n || k == max) return k;                                                 \
    f[k] = (struct field){(at_), (size_), be(b + (at_), (size_)), n - (at_) - (size_)};            \
    k++;                                                                                           \
  } while (0)
  FIELD(3, 2); /* record */
  FIELD(6, 3); /* handshake */
  int i = 9 + 2 + 32;
  FIELD(i, 1); /* session id */
  i += 1 + f[k - 1].value;
  FIELD(i, 2); /* cipher suites */
  i += 2 + f[k - 1].value;
  FIELD(i, 1); /* compression */
  i += 1 + f[k - 1].value;
  FIELD(i, 2); /* extensions */
  for (i += 2; i + 4 <= n;) {
    int type = be(b + i, 2), len = be(b + i + 2, 2), at = i + 4;
    FIELD(i + 2, 2);
    if (type == 0 && len >= 5) {
      FIELD(at, 2);
      FIELD(at + 3, 2);
    } else if (type == 16 && len >= 2) {
      FIELD(at, 2);
      for (int j = at + 2; j < at + len && j < n; j += 1 + b[j]) FIELD(j, 1);
    } else if (type == 43 && len >= 1) {
      FIELD(at, 1);
    }
    i = at + len;
  }
  return k;
#undef FIELD
}

static void set_be(uint8_t *b, int size, int v) {
  for (int i = size - 1; i >= 0; i--, v >>= 8) b[i] = (uint8_t)v;
}

static struct buf *pool;
static int pool_len, pool_fixtures;

static void mutate_bytes(struct buf *s) {
  int op = below(9);
  if (s->len == 0) op = 4;
  size_t at = (size_t)below((int)s->len);
  switch (op) {
  case 0: /* a bit flipped */
    s->b[at] ^= (uint8_t)(1 << below(8));
    break;
  case 1: /* a byte set to an interesting value */
    s->b[at] = (uint8_t)INTERESTING[below(N_INTERESTING)];
    break;
  case 2: /* a byte set to a length near where it is */
    s->b[at] = (uint8_t)(s->len - at + (size_t)below(5) - 2);
    break;
  case 3: /* random bytes */
    for (int k = below(8); k >= 0 && at < s->len; k--) s->b[at++] = (uint8_t)rnd();
    break;
  case 4: { /* bytes inserted */
    uint8_t ins[300];
    int m = chance(80) ? 1 + below(8) : 1 + below((int)sizeof ins);
    uint8_t fill = (uint8_t)(chance(50) ? rnd() : (uint64_t)INTERESTING[below(N_INTERESTING)]);
    for (int k = 0; k < m; k++) ins[k] = chance(50) ? fill : (uint8_t)rnd();
    splice_in(s, (size_t)below((int)s->len + 1), 0, ins, (size_t)m);
    break;
  }
  case 5: /* bytes deleted */
    splice_in(s, at, (size_t)(chance(80) ? 1 + below(8) : 1 + below((int)s->len)), NULL, 0);
    break;
  case 6: { /* spliced with another input: its tail from here */
    const struct buf *o = &pool[below(pool_len)];
    size_t from = (size_t)below((int)o->len + 1);
    s->len = at;
    put(s, o->b + from, o->len - from);
    break;
  }
  case 7: /* truncated */
    s->len = at;
    break;
  default: { /* a length field at a boundary */
    struct field f[64];
    int k = length_fields(s->b, (int)s->len, f, 64);
    if (k == 0) break;
    struct field *x = &f[below(k)];
    int max = (1 << (8 * x->size)) - 1;
    const int choices[] = {0, 1, x->value - 1, x->value + 1, x->room, x->room + 1, x->room - 1, max, max - 1, 255, 256,
                           16384, 16385};
    int v = choices[below((int)(sizeof choices / sizeof choices[0]))];
    set_be(s->b + x->at, x->size, v < 0 ? 0 : v > max ? max : v);
  }
  }
}

/* ---------- table mutations ---------- */

static const char *const TOKENS[] = {
    "-1", "0", "1", "2", "15", "16", "17", "63", "64", "65", "255", "256", "1023", "1024", "16384", "65536", "65537",
    "2147483647", "-2147483648", "4294967297", "99999999999999999999", "-", "=", "*", "=.", "*.", "zz", "0g", "g0",
    "ff", "f", "+1", " 1", "0x10", "abc", "rule", "site", "limits", "tls", "prefix", "opaque", "https", "handoff",
    "slow", "=a.test", "*.example.org", "6832", "50524956", "-2", "-17", "00", "0000",
};
#define N_TOKENS (int)(sizeof TOKENS / sizeof TOKENS[0])

/* A token of a length the parser checks: names and hex near its limits. */
static void long_token(struct buf *t) {
  static const int lens[] = {0, 1, 127, 128, 254, 255, 256, 257, 511, 512, 1022, 1023, 1024, 1025};
  int n = lens[below((int)(sizeof lens / sizeof lens[0]))];
  switch (below(3)) {
  case 0:
    put8(t, chance(50) ? '=' : '*');
    for (int i = 0; i < n; i++) put8(t, 'a' + i % 26);
    break;
  case 1:
    for (int i = 0; i < n; i++) putf(t, "%02x", (i * 37 + 1) & 0xff);
    break;
  default: /* odd-length hex */
    for (int i = 0; i < 2 * n + 1; i++) put8(t, "0123456789abcdef"[i % 16]);
  }
}

/* The start and end of line k (0-based) of a text, or 0 if it has none. */
static int line_span(const struct buf *s, int k, size_t *start, size_t *end) {
  size_t i = 0;
  for (int line = 0; i <= s->len; line++) {
    size_t e = i;
    while (e < s->len && s->b[e] != '\n') e++;
    if (line == k) {
      *start = i, *end = e;
      return 1;
    }
    i = e + 1;
  }
  return 0;
}

static int count_lines(const struct buf *s) {
  int n = 1;
  for (size_t i = 0; i < s->len; i++) n += s->b[i] == '\n';
  return n;
}

/* The span of a random space-separated token in [start, end). */
static void token_span(const struct buf *s, size_t start, size_t end, size_t *ts, size_t *te) {
  int tokens = 0;
  for (size_t i = start; i < end; i++)
    if (s->b[i] != ' ' && (i == start || s->b[i - 1] == ' ')) tokens++;
  int want = below(tokens), seen = -1;
  *ts = *te = start;
  for (size_t i = start; i < end; i++) {
    if (s->b[i] != ' ' && (i == start || s->b[i - 1] == ' ') && ++seen == want) {
      *ts = i;
      for (*te = i; *te < end && s->b[*te] != ' '; (*te)++) continue;
      return;
    }
  }
}

static void mutate_table(struct buf *s) {
  size_t ls, le, ts, te;
  if (!line_span(s, below(count_lines(s)), &ls, &le)) return;
  token_span(s, ls, le, &ts, &te);
  switch (below(10)) {
  case 0:
  case 1:
  case 2: { /* a token replaced */
    struct buf t = {0};
    if (chance(70)) puts_(&t, TOKENS[below(N_TOKENS)]);
    else long_token(&t);
    splice_in(s, ts, te - ts, t.b, t.len);
    free(t.b);
    break;
  }
  case 3: /* a token deleted */
    splice_in(s, ts, te - ts + (te < le), NULL, 0);
    break;
  case 4: { /* a token repeated (names past 16) */
    struct buf t = {0};
    for (int k = chance(50) ? 1 : 16 + below(3); k > 0; k--) put8(&t, ' '), put(&t, s->b + ts, te - ts);
    splice_in(s, te, 0, t.b, t.len);
    free(t.b);
    break;
  }
  case 5: { /* a line repeated (rules or sites past their limit) */
    struct buf t = {0};
    for (int k = chance(50) ? 1 : 60 + below(8); k > 0; k--) put(&t, s->b + ls, le - ls), put8(&t, '\n');
    splice_in(s, ls, 0, t.b, t.len);
    free(t.b);
    break;
  }
  case 6: /* a line deleted */
    splice_in(s, ls, le - ls + (le < s->len), NULL, 0);
    break;
  case 7: { /* a line from another table */
    const char *o = SEED_TABLES[below(N_SEED_TABLES)];
    struct buf ob = {(uint8_t *)o, strlen(o), 0};
    size_t os, oe;
    if (line_span(&ob, below(count_lines(&ob)), &os, &oe)) {
      splice_in(s, ls, 0, "\n", 1);
      splice_in(s, ls, 0, o + os, oe - os);
    }
    break;
  }
  case 8: { /* a separator or odd byte */
    static const char seps[] = " \t\n\r\v=*-0f";
    char c = chance(80) ? seps[below((int)sizeof seps - 1)] : (char)(1 + below(255));
    splice_in(s, (size_t)below((int)s->len + 1), 0, &c, 1);
    break;
  }
  default: /* a byte deleted */
    if (s->len) splice_in(s, (size_t)below((int)s->len), 1, NULL, 0);
  }
}

static struct buf mutated_table(void) {
  const char *base = chance(80) ? SEED_TABLES[below(N_SEED_TABLES)] : (const char *)big_tables[below(n_big_tables)].b;
  struct buf s = copy_of((const uint8_t *)base, strlen(base));
  for (int k = 1 + below(4); k > 0; k--) mutate_table(&s);
  put8(&s, 0);
  return s;
}

/* Every table the run starts from, parsed once: the seeds, then the big
 * ones at their limits (one past them is refused: checked here). */
static struct parsed tables[N_SEED_TABLES + 8];
static int n_tables;

static void parse_tables(void) {
  for (int i = 0; i < N_SEED_TABLES + n_big_tables; i++) {
    int big = i - N_SEED_TABLES, rc;
    const char *text = big < 0 ? SEED_TABLES[i] : (const char *)big_tables[big].b;
    struct table *t = fuzz_table_parse(text, &rc);
    lane_runs++;
    if ((t != NULL) != (big < 0 || big % 2 == 0))
      fail("table %d %s (%d)", i, t ? "taken, one past a limit" : "refused", rc);
    if (t) tables[n_tables++] = (struct parsed){text, t};
    else lane_bad_tables++;
  }
}

static const struct parsed *any_table(void) {
  return &tables[chance(95) ? below(N_SEED_TABLES) : below(n_tables)];
}

/* ---------- the stages ---------- */

static long elapsed_ms(const struct timespec *t0) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000;
}

/* Every fixture, whole and every truncation, with every table. */
static void stage_fixtures(void) {
  stage = "fixtures";
  for (int f = 0; f < pool_fixtures; f++)
    for (size_t n = 0; n <= pool[f].len; n++)
      for (int t = 0; t < n_tables; t++, stage_input++) decide_parsed(&tables[t], pool[f].b, n, n % 61 == 0);
}

/* Hellos whose SNI and ALPN names are near their buffers' 256 bytes: one
 * ALPN name of 240-255 bytes (255 once overflowed an event), lists of two
 * or three names that take 250-258 bytes, with and without GREASE; SNI of
 * 250-260 bytes. Each whole, and cut short by one byte. */
static void long_names_with(const struct hello_spec *h) {
  struct buf hello = build_hello(h);
  /* Through the export first, on the table that describes every hello. */
  decide_parsed(&tables[1], hello.b, hello.len, 1);
  for (int t = 0; t < n_tables; t++, stage_input += 2) {
    decide_parsed(&tables[t], hello.b, hello.len, 0);
    decide_parsed(&tables[t], hello.b, hello.len - 1, 0);
  }
  free(hello.b);
}

static void stage_long_names(void) {
  stage = "long-names";
  static const int snis[] = {-1, 0, 1, 63, 250, 251, 252, 253, 254, 255, 256, 257, 258, 259, 260};
  static const int alpns[] = {1, 2, 3, 50, 100, 200, 240, 241, 242, 243, 244, 245, 246, 247, 248, 249, 250,
                              251, 252, 253, 254, 255};
  struct hello_spec h = {.record_version = 0x0301, .grease_at = -1, .versions = 1};
  for (int s = 0; s < (int)(sizeof snis / sizeof snis[0]); s++) {
    h.sni_len = snis[s], h.upper = s % 2;
    h.alpn_count = -1;
    long_names_with(&h);
    h.alpn_count = 1, h.alpn[0] = 255;
    long_names_with(&h);
  }
  for (int i = 0; i < (int)(sizeof alpns / sizeof alpns[0]); i++) {
    int a = alpns[i];
    h.sni_len = i % 2 ? 255 : 15, h.upper = 0;
    h.alpn_count = 1, h.alpn[0] = a, h.grease_at = -1;
    long_names_with(&h);
    for (int list = 250; list <= 258; list++) { /* two names, then three with GREASE between */
      int b = list - 2 - a;
      if (b < 1 || b > 255) continue;
      h.alpn_count = 2, h.alpn[1] = b, h.grease_at = -1;
      long_names_with(&h);
      if (b > 3) {
        h.alpn_count = 3, h.alpn[1] = 2, h.alpn[2] = b - 3, h.grease_at = 1;
        long_names_with(&h);
      }
    }
  }
}

static void stage_mutations(long count) {
  stage = "mutations";
  for (long i = 0; i < count; i++, stage_input++) {
    const struct buf *base = &pool[below(pool_len)];
    struct buf in = copy_of(base->b, base->len);
    if (chance(10)) free(in.b), in = random_hello();
    for (int k = 1 + below(4); k > 0; k--) mutate_bytes(&in);
    decide_parsed(any_table(), in.b, in.len, i % 97 == 0);
    free(in.b);
  }
}

/* Tables mutated, each parsed by pm_express_decide (slow under ASan). */
static void stage_tables(long count) {
  stage = "tables";
  for (long i = 0; i < count; i++, stage_input++) {
    struct buf t = mutated_table();
    const struct buf *in = &pool[below(pool_len)];
    decide_exported((const char *)t.b, in->b, chance(20) ? (size_t)below((int)in->len + 1) : in->len, NULL);
    free(t.b);
  }
}

/* ---------- the handoff receiver ---------- */

static long receiver_runs, receiver_clients;

static void record_into(struct buf *s) {
  static const char *const shapes[] = {
      ("{\"v\":1,\"route\":\"priv\",\"service\":\"svc\",\"client\":{\"address\":\"127.0.0.1\",\"port\":%d},"
       "\"local\":{\"address\":\"127.0.0.1\",\"port\":8443},\"peeked\":%d}\n"),
      "{\"v\":1,\"client\":{\"address\":\"::ffff:10.0.0.%d\",\"port\":%d}}\n",
      "%d%d\n",
      "\n",
  };
  putf(s, shapes[below(4)], below(65536), below(17000));
}

static void stage_receiver(long count) {
  stage = "receiver";
  struct buf s = {0};
  int chunk_len[64], chunk_fds[64];
  for (long i = 0; i < count; i++, stage_input++) {
    s.len = 0;
    for (int k = below(12); k >= 0; k--) record_into(&s);
    for (int k = chance(50) ? below(6) : 0; k > 0; k--) mutate_bytes(&s);
    if (i % 50 == 7) { /* a record of 64 KiB or more, give or take one */
      size_t at = s.len, n = 65536 + (size_t)below(3) - 1 + (size_t)(chance(30) ? below(70000) : 0);
      need(&s, n);
      memset(s.b + at, 'x', n);
      s.len += n;
      if (chance(50)) put8(&s, '\n'), record_into(&s);
    }
    struct rx_plan p = {.bytes = s.b, .len = s.len, .chunk_len = chunk_len, .chunk_fds = chunk_fds};
    p.chunks = 1 + below(63);
    for (int k = 0; k < p.chunks; k++) {
      chunk_len[k] = chance(70) ? 1 + below(200) : 1 + below((int)s.len);
      chunk_fds[k] = chance(60) ? 1 : chance(60) ? 0 : chance(50) ? 2 + below(4) : 15 + below(10);
    }
    p.devnull_mask = chance(80) ? 0 : rnd();
    p.take_cap = chance(70) ? -1 : below(300);
    p.skip_take = chance(5);
    p.problems_cap = chance(50) ? 64 * 202 : below(600);
    p.accept_flags = chance(50) ? SOCK_NONBLOCK | SOCK_CLOEXEC : 0;
    cur_bytes = s.b, cur_len = (int)s.len;
    int got = fuzz_receiver_run(&p);
    if (got < 0) fail("could not set up a receiver: %s", strerror(errno));
    cur_bytes = NULL;
    receiver_runs++, receiver_clients += got;
  }
  free(s.b);
}

/* ---------- hosts and paths ---------- */

static long host_runs;

static void stage_hosts(long count) {
  stage = "hosts";
  static const char *const seeds[] = {"127.0.0.1", "::1", "[::1]", "[", "]", "[]", "[[::1]]", "::ffff:1.2.3.4",
                                      "[fe80::1%lo]", "255.255.255.255", "1.2.3", ""};
  struct buf s = {0};
  for (long i = 0; i < count; i++, stage_input++) {
    s.len = 0;
    const char *seed = seeds[below((int)(sizeof seeds / sizeof seeds[0]))];
    if (chance(20)) { /* lengths around the parser's 64-byte copy */
      int n = 60 + below(8);
      int bracket = chance(50);
      if (bracket) put8(&s, '[');
      for (int k = 0; k < n - 2 * bracket; k++) put8(&s, k % 5 == 4 ? ':' : '1');
      if (bracket) put8(&s, ']');
    } else {
      puts_(&s, seed);
      for (int k = below(4); k > 0; k--) mutate_bytes(&s);
    }
    for (size_t k = 0; k < s.len; k++)
      if (!s.b[k]) s.b[k] = '0'; /* a C string: its length is what is fuzzed */
    char *host = malloc(s.len + 1);
    memcpy(host, s.b, s.len);
    host[s.len] = 0;
    int rc = pm_verify_fd(-1, host, 443, chance(50) ? host : "127.0.0.1", 1);
    if (rc != 0 && rc != -EINVAL) fail("pm_verify_fd(-1, \"%s\") = %d", host, rc);
    free(host);
    host_runs++;
  }
  for (int n = 100; n < 120; n++, stage_input++) { /* sun_path is 108 bytes */
    char *path = malloc((size_t)n + 1);
    memset(path, 'p', (size_t)n);
    memcpy(path, "/nonexistent/", 13);
    path[n] = 0;
    int rc = pm_channel_open(path, -1, -1, -1);
    if (rc >= 0 || (n >= 108 && rc != -ENAMETOOLONG)) fail("pm_channel_open(%d-byte path) = %d", n, rc);
    free(path);
    host_runs++;
  }
  free(s.b);
}

static int open_fds(void) {
  int n = 0;
  DIR *d = opendir("/proc/self/fd");
  if (!d) return -1;
  while (readdir(d)) n++;
  closedir(d);
  return n;
}

/* ---------- main ---------- */

int main(int argc, char **argv) {
  uint64_t seed = 0x706f72746d7578ULL; /* "portmux" */
  long mutations = 100000;
  static struct buf fixtures[256];
  int nfix = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) seed = strtoull(argv[++i], NULL, 0);
    else if (strcmp(argv[i], "--mutations") == 0 && i + 1 < argc) mutations = strtol(argv[++i], NULL, 0);
    else if (strcmp(argv[i], "--crash-dir") == 0 && i + 1 < argc) crash_dir = argv[++i];
    else if (nfix < 256) {
      FILE *f = fopen(argv[i], "rb");
      if (!f) {
        fprintf(stderr, "fuzz: cannot read %s: %s\n", argv[i], strerror(errno));
        return 2;
      }
      uint8_t chunk[4096];
      size_t n;
      while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) put(&fixtures[nfix], chunk, n);
      fclose(f);
      nfix++;
    }
  }
  if (nfix == 0) {
    fprintf(stderr, "usage: fuzz_lane [--seed N] [--mutations N] [--crash-dir DIR] FIXTURE.bin...\n");
    return 2;
  }
  if (pm_express_event_size() != fuzz_event_size())
    fail("two sizes of event: %d and %d", pm_express_event_size(), fuzz_event_size());
  event_size = fuzz_event_size();
  __sanitizer_set_death_callback(on_death);
  signal(SIGABRT, on_abort);
  rng_state = seed;
  make_big_tables();
  parse_tables();

  /* The inputs mutations start from: the fixtures, then generated hellos. */
  pool_fixtures = pool_len = nfix;
  pool = calloc((size_t)nfix + 64, sizeof *pool);
  for (int i = 0; i < nfix; i++) pool[i] = fixtures[i];
  while (pool_len < nfix + 64) pool[pool_len++] = random_hello();

  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int fds_before = open_fds();
  char times[512];
  int tl = 0;
#define STAGE(call)                                                                                \
  do {                                                                                             \
    long started = elapsed_ms(&t0);                                                                \
    stage_input = 0;                                                                               \
    call;                                                                                          \
    tl += snprintf(times + tl, sizeof times - (size_t)tl, "%s %s %ld ms", tl ? "," : "", stage,    \
                   elapsed_ms(&t0) - started);                                                     \
  } while (0)
  STAGE(stage_fixtures());
  STAGE(stage_long_names());
  STAGE(stage_mutations(mutations));
  STAGE(stage_tables(mutations / 20));
  STAGE(stage_receiver(mutations / 25));
  STAGE(stage_hosts(mutations / 10));
#undef STAGE
  int fds_after = open_fds();
  if (fds_after != fds_before) fail("%d fds open after the run, %d before", fds_after, fds_before);

  for (int i = 0; i < n_tables; i++) fuzz_table_free(tables[i].t);
  for (int i = 0; i < pool_len; i++) free(pool[i].b);
  free(pool);
  for (int i = 0; i < n_big_tables; i++) free(big_tables[i].b);
  printf("fuzz: %ld inputs in %ld ms (seed %#llx): lane %ld (%ld decided, %ld tables refused, %ld also through "
         "pm_express_decide to compare), receiver %ld (%ld clients), hosts %ld;%s\n",
         lane_runs + receiver_runs + host_runs, elapsed_ms(&t0), (unsigned long long)seed, lane_runs, lane_matched,
         lane_bad_tables, lane_checked, receiver_runs, receiver_clients, host_runs, times);
  return 0;
}
