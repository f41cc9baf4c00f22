/*
 * The express lane's routing table (lane.h): its text, which the daemon
 * compiles from its routes (src/route/express_lane.ts), read into a
 * struct table; what it has room for; and the limits it sets on the
 * connections that wait in the lane for their first bytes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lane.h"

/* ---------- its text ---------- */

/* A hex string into out (at most cap bytes); its length, or -1. */
static int unhex(const char *s, uint8_t *out, int cap) {
  if (strcmp(s, "-") == 0) return 0;
  int n = (int)strlen(s);
  if (n % 2 || n / 2 > cap) return -1;
  for (int i = 0; i < n / 2; i++) {
    unsigned v;
    if (sscanf(s + 2 * i, "%2x", &v) != 1) return -1;
    out[i] = (uint8_t)v;
  }
  return n / 2;
}

/* "=example.com" (exact) or "*.example.com" (suffix). */
static int parse_name(const char *s, struct name_pattern *p) {
  if ((s[0] != '=' && s[0] != '*') || strlen(s + 1) >= X_NAME) return -1;
  p->suffix = s[0] == '*';
  strcpy(p->text, s + 1);
  return 0;
}

static char *next_token(char **save) { return strtok_r(NULL, " \t", save); }

/* One line of the table's text (src/route/express_lane.ts writes it):
 *   limits <peek_max> <wait_ms> <max_preread> <max_connections> <max_per_source> <generation>
 *   site <listener_fd> <name>...
 *   rule <route> <slow|https|handoff> <service> <head hex> opaque
 *   rule ... prefix <hex>
 *   rule ... tls <n|-1> <name>... <n|-1> <alpn hex>...
 * Returns 0, or -1 if it cannot be read. */
static int parse_line(struct table *t, char *line) {
  char *save, *w = strtok_r(line, " \t", &save);
  if (!w) return 0;
#define NEXT(v) if (!((v) = next_token(&save))) return -1
  char *a;
  if (strcmp(w, "limits") == 0) {
    char *b, *c, *d, *e, *g;
    NEXT(a); NEXT(b); NEXT(c); NEXT(d); NEXT(e); NEXT(g);
    t->peek_max = atoi(a), t->wait_ms = atoi(b), t->max_preread = atoi(c);
    t->max_connections = atoi(d), t->max_per_source = atoi(e), t->generation = atoi(g);
    return t->peek_max > 0 && t->peek_max <= 65536 ? 0 : -1;
  }
  if (strcmp(w, "site") == 0) {
    if (t->site_count == X_MAX_SITES) return -1;
    struct site *s = &t->sites[t->site_count++];
    NEXT(a);
    s->listener_fd = atoi(a);
    while ((a = next_token(&save))) {
      if (s->name_count == X_MAX_NAMES || parse_name(a, &s->names[s->name_count++])) return -1;
    }
    return 0;
  }
  if (strcmp(w, "rule") != 0 || t->rule_count == X_MAX_RULES) return -1;
  struct rule *r = &t->rules[t->rule_count++];
  char *act, *svc, *head, *kind;
  NEXT(a); NEXT(act); NEXT(svc); NEXT(head); NEXT(kind);
  r->route = atoi(a);
  r->action = strcmp(act, "https") == 0 ? A_HTTPS : strcmp(act, "handoff") == 0 ? A_HANDOFF : A_SLOW;
  r->service = atoi(svc);
  r->head_len = unhex(head, (uint8_t *)r->head, X_HEAD - 1);
  if (r->head_len < 0) return -1;
  r->sni_count = r->alpn_count = -1;
  if (strcmp(kind, "opaque") == 0) {
    r->kind = K_OPAQUE;
  } else if (strcmp(kind, "prefix") == 0) {
    r->kind = K_PREFIX;
    NEXT(a);
    r->prefix_len = unhex(a, r->prefix, X_NAME);
    if (r->prefix_len <= 0) return -1;
  } else if (strcmp(kind, "tls") == 0) {
    r->kind = K_TLS;
    NEXT(a);
    r->sni_count = atoi(a);
    if (r->sni_count > X_MAX_NAMES) return -1;
    for (int i = 0; i < r->sni_count; i++) {
      NEXT(a);
      if (parse_name(a, &r->sni[i])) return -1;
    }
    NEXT(a);
    r->alpn_count = atoi(a);
    if (r->alpn_count > X_MAX_NAMES) return -1;
    for (int i = 0; i < r->alpn_count; i++) {
      NEXT(a);
      int n = unhex(a, (uint8_t *)r->alpn[i], X_NAME - 1);
      if (n <= 0) return -1;
      r->alpn[i][n] = 0;
    }
  } else {
    return -1;
  }
#undef NEXT
  return 0;
}

/* The table in text (its lines: parse_line); NULL with *rc = -EINVAL for a
 * text it cannot read (a bad line, or no limits line), -ENOMEM. */
struct table *parse_table(const char *text, int *rc) {
  struct table *t = calloc(1, sizeof *t);
  char *copy = strdup(text);
  *rc = t && copy ? 0 : -ENOMEM;
  char *save, *line = *rc ? NULL : strtok_r(copy, "\n", &save);
  for (; line && *rc == 0; line = strtok_r(NULL, "\n", &save))
    if (parse_line(t, line)) *rc = -EINVAL;
  if (*rc == 0 && t->peek_max == 0) *rc = -EINVAL;
  free(copy);
  if (*rc) {
    free(t);
    return NULL;
  }
  return t;
}

/* The table's capacities, for the table compiler (src/route/express_lane.ts,
 * through ffi/lane.ts) to check its own against at load: rules, names per
 * condition, bytes per name or prefix (without the ending 0), sites, bytes
 * of a record's head. Returns how many numbers it wrote. */
PM_EXPORT int pm_express_table_limits(int32_t *out, int max) {
  const int32_t limits[] = {X_MAX_RULES, X_MAX_NAMES, X_NAME - 1, X_MAX_SITES, X_HEAD - 1};
  int n = (int)(sizeof limits / sizeof limits[0]);
  if (max < n) return -EINVAL;
  memcpy(out, limits, sizeof limits);
  return n;
}

/* ---------- the limits it sets ---------- */

struct source_count {
  uint8_t addr[16];
  int count;
  struct source_count *next;
};

static struct source_count **source_slot(struct source_counts *s, const uint8_t addr[16]) {
  uint32_t h = 2166136261u;
  for (int i = 0; i < 16; i++) h = (h ^ addr[i]) * 16777619u;
  struct source_count **p = &s->buckets[h % SOURCE_BUCKETS];
  while (*p && memcmp((*p)->addr, addr, 16) != 0) p = &(*p)->next;
  return p;
}

static int source_waiting(struct source_counts *s, const uint8_t addr[16]) {
  struct source_count *c = *source_slot(s, addr);
  return c ? c->count : 0;
}

void source_add(struct source_counts *s, const uint8_t addr[16], int by) {
  struct source_count **p = source_slot(s, addr);
  if (!*p) {
    if (by < 0 || !(*p = calloc(1, sizeof **p))) return;
    memcpy((*p)->addr, addr, 16);
  }
  (*p)->count += by;
  if ((*p)->count <= 0) {
    struct source_count *gone = *p;
    *p = gone->next;
    free(gone);
  }
}

/* The daemon's limits (src/accept/admission.ts), in its order. */
enum limit over_limit(const struct table *t, int waiting, struct source_counts *s,
                      const uint8_t source[16]) {
  return waiting >= t->max_connections                   ? L_MAX_CONNECTIONS
         : waiting >= t->max_preread                     ? L_MAX_PREREAD
         : source_waiting(s, source) >= t->max_per_source ? L_MAX_PER_SOURCE
                                                          : 0;
}
