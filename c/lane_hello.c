/*
 * The express lane's TLS ClientHello parser (lane.h): the common case
 * only, a well-formed hello in one record, read as src/detect/tls.ts reads
 * it; anything else is the daemon's to read. Then what a hello told, copied
 * into an event.
 */
#define _GNU_SOURCE
#include <string.h>

#include "lane.h"

static int u16(const uint8_t *b) { return b[0] << 8 | b[1]; }
static int grease(int v) { return (v & 0x0f0f) == 0x0a0a && (v >> 8) == (v & 0xff); }
static int printable(const uint8_t *b, int n) {
  for (int i = 0; i < n; i++)
    if (b[i] < 0x21 || b[i] > 0x7e) return 0;
  return 1;
}

/* The hello's body in b[i..end), as src/detect/tls.ts parses it; 1 when it
 * is well formed (h filled in), 0 when the daemon should look (it would
 * say "no", or C keeps no room for what it holds). */
static int parse_hello_body(const uint8_t *b, int i, int end, struct hello *h) {
  if (end - i < 2 + 32 + 1 || b[i] != 3) return 0;
  i += 2 + 32;
  if (b[i] > 32) return 0;
  i += 1 + b[i];
  if (end - i < 2) return 0;
  int suites = u16(b + i);
  if (suites < 2 || suites % 2) return 0;
  i += 2 + suites;
  if (end - i < 1 || b[i] < 1) return 0;
  i += 1 + b[i];
  if (i > end) return 0;
  h->has_sni = 0;
  h->alpn_len = 0;
  if (i == end) return 1;
  if (end - i < 2 || i + 2 + u16(b + i) != end) return 0;
  for (i += 2; i < end;) {
    if (end - i < 4) return 0;
    int type = u16(b + i), len = u16(b + i + 2), at = i + 4, stop = at + len;
    if (stop > end) return 0;
    if (type == 0 && len > 0) { /* server_name; an empty one means none */
      if (len < 2 || at + 2 + u16(b + at) != stop) return 0;
      int found = 0;
      for (int j = at + 2; j < stop;) {
        if (stop - j < 3) return 0;
        int nlen = u16(b + j + 1);
        if (nlen == 0 || j + 3 + nlen > stop) return 0;
        if (b[j] == 0 && !found) {
          if (nlen >= X_NAME || !printable(b + j + 3, nlen)) return 0;
          for (int k = 0; k < nlen; k++) {
            uint8_t c = b[j + 3 + k];
            h->sni[k] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
          }
          h->sni[nlen] = 0;
          found = 1;
        }
        j += 3 + nlen;
      }
      h->has_sni = found;
    } else if (type == 0) {
      h->has_sni = 0;
    } else if (type == 16) { /* ALPN */
      if (len < 2 || at + 2 + u16(b + at) != stop) return 0;
      h->alpn_len = 0;
      for (int j = at + 2; j < stop;) {
        int nlen = b[j];
        if (nlen == 0 || j + 1 + nlen > stop) return 0;
        if (!(nlen == 2 && grease(u16(b + j + 1)))) {
          /* Room for the names and the 0 that ends them in an event. */
          if (!printable(b + j + 1, nlen) || h->alpn_len + 1 + nlen >= X_NAME) return 0;
          memcpy(h->alpn + h->alpn_len, b + j, (size_t)nlen + 1);
          h->alpn_len += 1 + nlen;
        }
        j += 1 + nlen;
      }
    } else if (type == 43) { /* supported_versions: only checked */
      if (len < 1 || b[at] % 2 || at + 1 + b[at] != stop) return 0;
    }
    i = stop;
  }
  return 1;
}

/* Is this a TLS ClientHello? V_NO and V_MORE exactly as the daemon would
 * say them; V_MATCH only for a well-formed hello in one record; V_SLOW for
 * everything else (the daemon decides). */
enum verdict tls_verdict(const uint8_t *b, int n, int limit, struct hello *h) {
  if (n < 1) return V_MORE;
  if (b[0] != 22) return V_NO;
  if (n < 2) return V_MORE;
  if (b[1] != 3) return V_NO;
  if (n < 3) return V_MORE;
  if (b[2] > 4) return V_NO;
  if (n < 5) return V_MORE;
  int record = u16(b + 3);
  if (record == 0 || record > 16384) return V_NO;
  if (n < 6) return V_MORE;
  if (b[5] != 1) return V_NO;
  if (record < 4) return V_SLOW;
  if (n < 9) return V_MORE;
  int body = b[6] << 16 | b[7] << 8 | b[8];
  if (body + 4 > record) return V_SLOW; /* over several records */
  if (n < 5 + record) return 5 + record > limit ? V_SLOW : V_MORE;
  return parse_hello_body(b, 9, 9 + body, h) ? V_MATCH : V_SLOW;
}


/* What the hello told (h NULL: no hello was read), copied into the event's
 * fixed buffers: each copy is bounded by the buffer, whatever h holds. */
void describe_hello(struct event *e, const struct hello *h) {
  size_t sni = 0, alpn = 0;
  e->has_sni = h ? (h->has_sni ? 1 : 0) : -1;
  if (h && h->has_sni) memcpy(e->sni, h->sni, sni = strnlen(h->sni, sizeof e->sni - 1));
  if (h && h->alpn_len > 0) {
    alpn = (size_t)h->alpn_len < sizeof e->alpn - 1 ? (size_t)h->alpn_len : sizeof e->alpn - 1;
    memcpy(e->alpn, h->alpn, alpn);
  }
  e->sni[sni] = 0;
  e->alpn[alpn] = 0;
}
