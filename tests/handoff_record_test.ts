import assert from "node:assert/strict";
import { decodeRecord, encodeRecord, type HandoffRecord } from "../src/actions/handoff/record.ts";

const record: HandoffRecord = {
  v: 1,
  route: "private",
  service: "echo",
  client: { address: "2001:db8::7", port: 50123 },
  local: { address: "192.0.2.10", port: 443 },
  peeked: 4,
};

Deno.test("encodeRecord() writes one JSON line that decodeRecord() reads back", () => {
  const text = new TextDecoder().decode(encodeRecord(record));
  assert.ok(text.endsWith("\n"));
  assert.equal(text.indexOf("\n"), text.length - 1, "exactly one line");
  assert.deepEqual(JSON.parse(text), record);
  assert.deepEqual(decodeRecord(text.trimEnd()), record);
});

Deno.test("decodeRecord() refuses what is not a v1 record", () => {
  for (
    const bad of [
      "{}",
      JSON.stringify({ ...record, v: 2 }),
      JSON.stringify({ ...record, client: { address: "x" } }),
      JSON.stringify({ ...record, peeked: "4" }),
    ]
  ) {
    assert.throws(() => decodeRecord(bad), /not a portmux handoff record/);
  }
  assert.throws(() => decodeRecord("not json"), SyntaxError);
});
