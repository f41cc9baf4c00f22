/** tls: the certificates HTTPS is served with. */
import type { NamePattern } from "../route/name_pattern.ts";
import { describeNames, type Path, type Reader } from "./reader.ts";

/** A certificate and the server names (SNI) it is for. */
export interface Certificate {
  /** Empty: only the default (for no SNI, or a name no other matches). */
  readonly names: readonly NamePattern[];
  readonly cert: string;
  readonly key: string;
}

/** The first certificate is the default. */
export type TlsSource =
  | { readonly kind: "files"; readonly certificates: readonly Certificate[] }
  | { readonly kind: "self_signed" };

/** null when there is no tls section (then no route may be https). */
export function readTls(r: Reader): TlsSource | null {
  if (r.value(["tls"]) === undefined) return null;
  refuseOcsp(r, ["tls"]);
  const keys = r.keys(["tls"], ["cert", "key", "self_signed", "certificates"]);
  if (r.boolean(["tls", "self_signed"])) {
    if (keys.length > 1) {
      r.fail(["tls", "self_signed"], "cannot be combined with cert, key or certificates");
    }
    return { kind: "self_signed" };
  }
  if (keys.includes("certificates")) {
    if (keys.includes("cert") || keys.includes("key")) {
      r.fail(["tls", "certificates"], "give cert and key, or certificates, not both");
    }
    return { kind: "files", certificates: readCertificates(r) };
  }
  return {
    kind: "files",
    certificates: [{
      names: [],
      cert: readFile(r, ["tls", "cert"]),
      key: readFile(r, ["tls", "key"]),
    }],
  };
}

function readCertificates(r: Reader): Certificate[] {
  const n = r.length(["tls", "certificates"]);
  if (n === 0 || n > 30) r.fail(["tls", "certificates"], "give from 1 to 30 certificates");
  return Array.from({ length: n }, (_, i) => readCertificate(r, i));
}

function readCertificate(r: Reader, i: number): Certificate {
  const at = ["tls", "certificates", i];
  refuseOcsp(r, at);
  r.keys(at, ["names", "cert", "key"]);
  const names = r.names([...at, "names"]) ?? [];
  if (names.length === 0 && i > 0) {
    r.fail(
      [...at, "names"],
      "is required (only the first certificate, the default, may have none)",
    );
  }
  return { names, cert: readFile(r, [...at, "cert"]), key: readFile(r, [...at, "key"]) };
}

/** A required file name, checked at start rather than at the first handshake. */
function readFile(r: Reader, at: Path): string {
  const f = r.resolve(r.required(at, r.string(at)));
  try {
    Deno.statSync(f);
  } catch {
    r.fail(at, `cannot read ${f}`);
  }
  return f;
}

/** OCSP stapling is asked for often enough to deserve its own answer. */
export function refuseOcsp(r: Reader, at: Path): void {
  const v = r.value(at);
  const key = v && typeof v === "object" ? Object.keys(v).find((k) => /^ocsp/i.test(k)) : undefined;
  if (key === undefined) return;
  r.fail(
    [...at, key],
    "OCSP stapling is not supported: HTTPS is served by Deno.serve, which takes a certificate " +
      "and key but no OCSP response. To staple, route the site's SNI to a server that does " +
      "(action: proxy or handoff, TLS passthrough)",
  );
}

export function describeTls(tls: TlsSource | null): Record<string, unknown> | null {
  if (tls === null) return null;
  if (tls.kind === "self_signed") return { self_signed: true };
  return {
    certificates: tls.certificates.map((x) => ({
      names: describeNames(x.names),
      cert: x.cert,
      key: x.key,
    })),
  };
}
