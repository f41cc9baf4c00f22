/**
 * Log lines carry what clients sent (a Host header, a User-Agent), and an
 * operator reads them in a terminal: the characters a terminal acts on
 * instead of showing must never reach it raw, or a client could move the
 * cursor, recolour or rewrite the screen, or split a line in two.
 *
 * Those are C0 (U+0000-U+001F, ESC among them), DEL, C1 (U+0080-U+009F:
 * U+009B is an 8-bit CSI, U+0085 a new line), the Unicode line and
 * paragraph separators, and the bidi controls (they reorder what is shown).
 */
const CONTROL_CLASS =
  "[\\x00-\\x1f\\x7f-\\x9f\\u061c\\u200e\\u200f\\u2028\\u2029\\u202a-\\u202e\\u2066-\\u2069]";

/** A test for the hot path: most lines have no control at all. */
export const HAS_CONTROL: RegExp = new RegExp(CONTROL_CLASS);
const CONTROLS = new RegExp(CONTROL_CLASS, "g");

/** \u001b: JSON's own escape, so a JSON string stays valid JSON that reads
 * back as the same text. */
export function unicodeEscape(c: string): string {
  return `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`;
}

/** s with each control replaced by escape(control); s itself (no copy) if
 * it has none. */
export function escapeControls(s: string, escape: (c: string) => string = unicodeEscape): string {
  return HAS_CONTROL.test(s) ? s.replace(CONTROLS, escape) : s;
}
