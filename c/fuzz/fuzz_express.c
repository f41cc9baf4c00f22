/*
 * The express lane for the fuzz harness, so that a table can be parsed
 * once and decided on many times. pm_express_decide parses its table on
 * every call, and a table is ~680 KB, which ASan maps and unmaps each time
 * (~150 us): 100,000 inputs would take half a minute. fuzz_decide_parsed
 * does what pm_express_decide (lane_decide.c) does after the parse; the
 * harness checks that both agree.
 *
 * The parsers it calls (lane.h) are built beside the harness with the
 * shim's other files. express_lane.c is compiled unchanged into this file:
 * tests/c_fuzz_test.ts leaves it out of those (INCLUDED).
 */
#include "../express_lane.c"
#include "../lane.h"

#include "fuzz.h"

struct table *fuzz_table_parse(const char *text, int *rc) { return parse_table(text, rc); }

void fuzz_table_free(struct table *t) { free(t); }

int fuzz_event_size(void) { return (int)sizeof(struct event); }

/* pm_express_decide on a parsed table: the same steps, in the same order. */
int fuzz_decide_parsed(const struct table *t, const uint8_t *b, int n, struct event *out) {
  struct hello h = {.has_sni = 0, .alpn_len = 0};
  int tls_seen = 0;
  int d = decide(t, b, n, &h, &tls_seen);
  int rc = d >= 0 ? t->rules[d].route : d == DECIDE_MORE ? -2 : -3;
  memset(out, 0, sizeof *out);
  describe_hello(out, tls_seen ? &h : NULL);
  const struct site *site =
      d >= 0 && t->rules[d].action == A_HTTPS ? pick_site(t, tls_seen ? &h : NULL) : NULL;
  out->target = site ? (int)(site - t->sites) : -1;
  return rc;
}

/* What a reader of the event (ffi/lane_records.ts) relies on: the SNI a printable
 * lower-case string ended in its buffer, the ALPN list whole in its own
 * with a 0 after the last name, a site the table has. NULL, or what is
 * wrong. */
const char *fuzz_check_event(const struct event *e, int site_count) {
  if (e->has_sni < -1 || e->has_sni > 1) return "has_sni is not -1, 0 or 1";
  const char *end = memchr(e->sni, 0, sizeof e->sni);
  if (!end) return "the SNI has no end in its buffer";
  if (e->has_sni != 1 && end != e->sni) return "an SNI without has_sni";
  for (const char *c = e->sni; c < end; c++)
    if (*c < 0x21 || *c > 0x7e || (*c >= 'A' && *c <= 'Z')) return "an SNI byte not printable lower case";
  size_t i = 0;
  while (i < sizeof e->alpn && e->alpn[i]) {
    size_t n = e->alpn[i];
    if (i + 1 + n >= sizeof e->alpn) return "an ALPN list with no 0 after its last name in its buffer";
    for (size_t k = 0; k < n; k++)
      if (e->alpn[i + 1 + k] < 0x21 || e->alpn[i + 1 + k] > 0x7e) return "an ALPN byte not printable";
    i += 1 + n;
  }
  if (e->has_sni < 0 && e->alpn[0]) return "an ALPN list without a hello";
  if (e->target < -1 || (site_count >= 0 && e->target >= site_count)) return "a target the table has no site for";
  return NULL;
}

int fuzz_site_count(const struct table *t) { return t->site_count; }
