/**
 * Server names as routes give them: "example.com" (exact) or
 * "*.example.com" (any name below example.com, one label or more, not
 * example.com itself). Case-insensitive, a trailing dot ignored.
 */
export type NamePattern = { readonly exact: string } | { readonly suffix: string };

export function parseNamePattern(text: string): NamePattern | null {
  const t = text.toLowerCase().replace(/\.$/, "");
  const label = "[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?";
  const name = new RegExp(`^${label}(\\.${label})*$`);
  if (t.startsWith("*.") && name.test(t.slice(2))) return { suffix: t.slice(1) }; // ".example.com"
  if (name.test(t) || /^[0-9a-f:.]+$/.test(t)) return { exact: t };
  return null;
}

export function nameMatches(p: NamePattern, name: string): boolean {
  const n = name.toLowerCase().replace(/\.$/, "");
  return "exact" in p ? n === p.exact : n.length > p.suffix.length && n.endsWith(p.suffix);
}
