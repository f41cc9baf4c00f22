/**
 * The protocols a route can name, each with its detector. One table: the
 * config refuses any other name at load.
 */
import type { Detection } from "./detection.ts";
import { detectHttp1, detectHttp2, type Http1Request } from "./http.ts";
import { detectSsh, type SshBanner } from "./ssh.ts";
import { type ClientHello, detectTls } from "./tls.ts";

export interface ProtocolInfo {
  tls: ClientHello;
  http: Http1Request;
  http2: Record<never, never>;
  ssh: SshBanner;
}

export type ProtocolName = keyof ProtocolInfo;

type Detector<P extends ProtocolName> = (
  b: Uint8Array,
  maxBytes: number,
) => Detection<ProtocolInfo[P]>;

export const DETECTORS: { readonly [P in ProtocolName]: Detector<P> } = {
  tls: detectTls,
  http: detectHttp1,
  http2: detectHttp2,
  ssh: detectSsh,
};

export const PROTOCOL_NAMES = Object.keys(DETECTORS) as ProtocolName[];

export function isProtocolName(s: string): s is ProtocolName {
  return Object.hasOwn(DETECTORS, s);
}
