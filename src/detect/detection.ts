/**
 * What a detector answers for the bytes seen so far (sslh's probes and
 * cmux's lesson: a third answer, "more", instead of blocking for bytes).
 */
export type Detection<T> =
  | { readonly verdict: "match"; readonly info: T }
  | { readonly verdict: "no" }
  | { readonly verdict: "more" };

export type Verdict = Detection<unknown>["verdict"];
