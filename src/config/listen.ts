/** listen: the addresses and ports portmux accepts connections on. */
import { type Cidr, ipBytes } from "../net/ip.ts";
import { ConfigError, type Path, type Reader } from "./reader.ts";

export interface Listen {
  readonly address: string;
  readonly port: number;
  /** Clients from these addresses must start with a PROXY protocol header
   * (v1 or v2), which portmux reads and removes; null: no PROXY protocol. */
  readonly proxyProtocol: { readonly trusted: readonly Cidr[] } | null;
}

export function readListen(r: Reader): Listen[] {
  const n = r.length(["listen"]);
  if (n === 0) r.fail(["listen"], "at least one listener is required");
  return Array.from({ length: n }, (_, i) => readListener(r, i));
}

function readListener(r: Reader, i: number): Listen {
  const at = ["listen", i];
  r.keys(at, ["address", "port", "proxy_protocol"]);
  const address = r.required([...at, "address"], r.string([...at, "address"]));
  if (!ipBytes(address)) {
    r.fail([...at, "address"], `"${address}" is not an IPv4 or IPv6 address`);
  }
  const port = r.required([...at, "port"], r.integer([...at, "port"], 0, 65535));
  return { address, port, proxyProtocol: readProxyProtocol(r, [...at, "proxy_protocol"]) };
}

function readProxyProtocol(r: Reader, at: Path): Listen["proxyProtocol"] {
  if (r.value(at) === undefined) return null;
  r.keys(at, ["trusted"]);
  const trusted = r.cidrs([...at, "trusted"]);
  if (!trusted) r.fail([...at, "trusted"], "is required");
  return { trusted };
}

/** PORTMUX_LISTEN: "ADDRESS:PORT,..."; the listeners keep the first
 * configured one's PROXY protocol setting. */
export function listenFromEnvironment(
  text: string,
  proxyProtocol: Listen["proxyProtocol"],
): Listen[] {
  return text.split(",").map((item) => {
    const m = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):(\d{1,5})$/.exec(item.trim());
    const address = m?.[1] ?? m?.[2];
    if (!m || !address || !ipBytes(address) || Number(m[3]) > 65535) {
      throw new ConfigError(
        `PORTMUX_LISTEN: "${item}" is not ADDRESS:PORT (IPv6 in brackets, e.g. [::]:443)`,
      );
    }
    return { address, port: Number(m[3]), proxyProtocol };
  });
}

export function describeListen(listen: readonly Listen[]): Record<string, unknown>[] {
  return listen.map((l) => ({
    address: l.address,
    port: l.port,
    ...(l.proxyProtocol
      ? { proxy_protocol: { trusted: l.proxyProtocol.trusted.map((t) => t.text) } }
      : {}),
  }));
}
