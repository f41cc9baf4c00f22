/*
 * What the express lane's table decides on a connection's first bytes
 * (lane.h): the rules in order, exactly as decide() in
 * src/route/classify.ts, and the HTTPS site a hello's SNI picks.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "lane.h"

static int name_matches(const struct name_pattern *p, const char *name) {
  size_t n = strlen(name);
  if (n > 0 && name[n - 1] == '.') n--;
  size_t m = strlen(p->text);
  if (!p->suffix) return n == m && strncmp(name, p->text, n) == 0;
  return n > m && strncmp(name + n - m, p->text, m) == 0;
}

static int alpn_offered(const struct hello *h, const char *want) {
  size_t w = strlen(want);
  for (int i = 0; i < h->alpn_len; i += 1 + h->alpn[i])
    if (h->alpn[i] == w && memcmp(h->alpn + i + 1, want, w) == 0) return 1;
  return 0;
}

static enum verdict rule_verdict(const struct rule *r, const uint8_t *b, int n, int limit,
                                 struct hello *h, enum verdict *tls) {
  switch (r->kind) {
  case K_PREFIX: {
    int m = n < r->prefix_len ? n : r->prefix_len;
    if (memcmp(b, r->prefix, (size_t)m) != 0) return V_NO;
    return n >= r->prefix_len ? V_MATCH : V_MORE;
  }
  case K_TLS: {
    if (*tls == V_SLOW + 1) *tls = tls_verdict(b, n, limit, h); /* once per look */
    if (*tls != V_MATCH) return *tls;
    if (r->sni_count >= 0) {
      int ok = 0;
      for (int i = 0; i < r->sni_count && h->has_sni && !ok; i++) ok = name_matches(&r->sni[i], h->sni);
      if (!ok) return V_NO;
    }
    if (r->alpn_count >= 0) {
      int ok = 0;
      for (int i = 0; i < r->alpn_count && !ok; i++) ok = alpn_offered(h, r->alpn[i]);
      if (!ok) return V_NO;
    }
    return V_MATCH;
  }
  default:
    return V_SLOW;
  }
}

/* The rule that takes these bytes: its index, or -V_MORE / -V_SLOW. The
 * first rule that matches wins once every earlier one said no (as
 * decide() in src/route/classify.ts); bytes that match none go to the daemon,
 * which knows the default route. */
int decide(const struct table *t, const uint8_t *b, int n, struct hello *h, int *tls_seen) {
  enum verdict tls = V_SLOW + 1;
  for (int i = 0; i < t->rule_count; i++) {
    enum verdict v = rule_verdict(&t->rules[i], b, n, t->peek_max, h, &tls);
    if (v == V_MATCH) {
      *tls_seen = tls == V_MATCH;
      return i;
    }
    if (v != V_NO) return -(int)v;
  }
  return DECIDE_SLOW;
}

/* The site for a hello's SNI; the first (the default) when the route was
 * decided without reading a hello (h NULL), as the daemon does. */
const struct site *pick_site(const struct table *t, const struct hello *h) {
  for (int i = 0; h && h->has_sni && i < t->site_count; i++)
    for (int j = 0; j < t->sites[i].name_count; j++)
      if (name_matches(&t->sites[i].names[j], h->sni)) return &t->sites[i];
  return t->site_count ? &t->sites[0] : NULL;
}

/* For tests and the fuzzer: decides on bytes with a table, without
 * sockets, and describes the hello into *out (an event record: has_sni,
 * sni, alpn) as a delivery would, with target the site an https rule
 * picks (-1 for another action). Returns the route, or -2 (more bytes
 * needed) or -3 (the daemon decides); -EINVAL: a bad table. */
PM_EXPORT int pm_express_decide(const char *table_text, const uint8_t *b, int n,
                                struct event *out) {
  int rc;
  struct table *t = parse_table(table_text, &rc);
  if (!t) return rc;
  struct hello h = {.has_sni = 0, .alpn_len = 0};
  int tls_seen = 0;
  int d = decide(t, b, n, &h, &tls_seen);
  rc = d >= 0 ? t->rules[d].route : d == DECIDE_MORE ? -2 : -3;
  memset(out, 0, sizeof *out);
  describe_hello(out, tls_seen ? &h : NULL);
  const struct site *site = d >= 0 && t->rules[d].action == A_HTTPS ? pick_site(t, tls_seen ? &h : NULL) : NULL;
  out->target = site ? (int)(site - t->sites) : -1;
  free(t);
  return rc;
}
