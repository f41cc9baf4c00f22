/**
 * `deno bench` for the detectors (pure functions, one core). The figure the
 * detection issue asks for: ClientHellos parsed per second for a typical
 * 512-byte hello (curl's), at least 1,000,000.
 */
import { detectTls } from "../src/detect/tls.ts";

const fixture = (name: string) =>
  Deno.readFileSync(new URL(`../tests/fixtures/tls/${name}.bin`, import.meta.url));
const curl = fixture("curl-openssl3-h2");
const chromium = fixture("chromium-pq");

Deno.bench("detectTls: curl ClientHello, 517 bytes", { group: "tls", baseline: true }, () => {
  if (detectTls(curl).verdict !== "match") throw new Error("not parsed");
});
Deno.bench("detectTls: Chromium post-quantum ClientHello, 1958 bytes", { group: "tls" }, () => {
  if (detectTls(chromium).verdict !== "match") throw new Error("not parsed");
});
