import assert from "node:assert/strict";
import { encodeRecord, type HandoffRecord } from "../src/actions/handoff/record.ts";
import { RecordAssembler } from "../src/service/record_assembly.ts";

const rec = (port: number): HandoffRecord => ({
  v: 1,
  route: "r",
  service: "s",
  client: { address: "192.0.2.1", port },
  local: { address: "192.0.2.2", port: 443 },
  peeked: 4,
});
const bytes = (...records: HandoffRecord[]) =>
  Uint8Array.from(records.flatMap((r) => [...encodeRecord(r)]));

Deno.test("RecordAssembler pairs each record with its fd, one recvmsg at a time", () => {
  const a = new RecordAssembler();
  assert.deepEqual(a.push(bytes(rec(1)), [10], false), [{ record: rec(1), fd: 10 }]);
  assert.deepEqual(a.push(bytes(rec(2)), [11], false), [{ record: rec(2), fd: 11 }]);
});

Deno.test("RecordAssembler copes with records split anywhere, and merged", () => {
  const records = [rec(1), rec(2), rec(3)];
  const all = bytes(...records);
  const starts = [0, encodeRecord(rec(1)).length, 2 * encodeRecord(rec(1)).length];
  // Three reads, cut at every pair of points (stepping 3 bytes): each read
  // carries the fds of the records whose first byte it holds, as the
  // kernel delivers them.
  for (let c1 = 1; c1 < all.length; c1 += 3) {
    for (let c2 = c1; c2 <= all.length; c2 += 3) {
      const a = new RecordAssembler();
      const out = [[0, c1], [c1, c2], [c2, all.length]].flatMap(([from, to]) =>
        a.push(
          all.subarray(from, to),
          starts.flatMap((st, k) => (st >= from! && st < to! ? [100 + k] : [])),
          false,
        )
      );
      assert.deepEqual(out, records.map((record, k) => ({ record, fd: 100 + k })), `${c1}/${c2}`);
    }
  }
});

Deno.test("RecordAssembler keeps pairing right after an fd is lost to MSG_CTRUNC", () => {
  const a = new RecordAssembler();
  const out = [
    ...a.push(bytes(rec(1)), [10], false),
    ...a.push(bytes(rec(2)), [], true), // its fd was closed by the kernel
    ...a.push(bytes(rec(3)), [12], false),
  ];
  assert.deepEqual(out[0], { record: rec(1), fd: 10 });
  assert.equal(out[1]!.fd, null);
  assert.match((out[1] as { problem: string }).problem, /lost \(MSG_CTRUNC/);
  assert.deepEqual(out[2], { record: rec(3), fd: 12 }); // not fd 12 for record 2
});

Deno.test("RecordAssembler hands back an fd whose record is unreadable, and fds left at the end", () => {
  const a = new RecordAssembler();
  const [bad] = a.push(new TextEncoder().encode("not json\n"), [10], false);
  assert.equal(bad!.fd, null);
  assert.equal((bad as { discard?: number }).discard, 10);
  const partial = bytes(rec(1)).subarray(0, 10);
  assert.deepEqual(a.push(partial, [11], false), []); // a record cut short by a dying sender
  assert.deepEqual(a.leftoverFds(), [11]);
});

Deno.test("RecordAssembler drops a record longer than 64 KiB with its fd, and the next record keeps its own", () => {
  const a = new RecordAssembler();
  const long = new TextEncoder().encode("x".repeat(70 * 1024) + "\n");
  const out = [
    ...a.push(long.subarray(0, 40 * 1024), [10], false),
    ...a.push(long.subarray(40 * 1024, 68 * 1024), [], false),
    ...a.push(long.subarray(68 * 1024), [], false), // the rest, up to its newline: skipped
    ...a.push(bytes(rec(2)), [11], false),
  ];
  assert.equal(out.length, 2);
  assert.match((out[0] as { problem: string }).problem, /longer than 64 KiB/);
  assert.equal((out[0] as { discard?: number }).discard, 10);
  assert.deepEqual(out[1], { record: rec(2), fd: 11 });
  assert.deepEqual(a.leftoverFds(), []);
});
