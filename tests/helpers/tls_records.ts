/** Builders of TLS byte sequences for detector tests. */

export const FIXTURES = new URL("../fixtures/tls/", import.meta.url).pathname;

export function fixture(name: string): Uint8Array {
  return Deno.readFileSync(`${FIXTURES}${name}.bin`);
}

/** The handshake message carried by a single-record hello. */
export function handshakeOf(hello: Uint8Array): Uint8Array {
  return hello.subarray(5, 5 + ((hello[3]! << 8) | hello[4]!));
}

/** Wraps a handshake message in records of the given fragment sizes (the
 * last record takes the rest). */
export function inRecords(message: Uint8Array, sizes: number[], version = 0x0301): Uint8Array {
  const out: number[] = [];
  let at = 0;
  for (let i = 0; at < message.length; i++) {
    const size = i < sizes.length ? sizes[i]! : message.length - at;
    const part = message.subarray(at, at + size);
    out.push(22, version >> 8, version & 0xff, part.length >> 8, part.length & 0xff, ...part);
    at += part.length;
  }
  return Uint8Array.from(out);
}

/** Builds a ClientHello message with the given extensions. */
export function buildHello(extensions: [number, number[]][], legacyVersion = 0x0303): Uint8Array {
  const exts: number[] = [];
  for (const [type, data] of extensions) {
    exts.push(type >> 8, type & 0xff, data.length >> 8, data.length & 0xff, ...data);
  }
  const body = [
    legacyVersion >> 8,
    legacyVersion & 0xff,
    ...new Array(32).fill(7), // random
    0, // session id
    0,
    2,
    0x13,
    0x01, // one cipher suite
    1,
    0, // null compression
    exts.length >> 8,
    exts.length & 0xff,
    ...exts,
  ];
  return Uint8Array.from([1, 0, body.length >> 8, body.length & 0xff, ...body]);
}

export function sniExtension(name: string): [number, number[]] {
  const n = [...new TextEncoder().encode(name)];
  const entry = [0, n.length >> 8, n.length & 0xff, ...n];
  return [0, [entry.length >> 8, entry.length & 0xff, ...entry]];
}

export function alpnExtension(...names: (string | number[])[]): [number, number[]] {
  const list: number[] = [];
  for (const name of names) {
    const b = typeof name === "string" ? [...new TextEncoder().encode(name)] : name;
    list.push(b.length, ...b);
  }
  return [16, [list.length >> 8, list.length & 0xff, ...list]];
}
