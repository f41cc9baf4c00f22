import assert from "node:assert/strict";
import { detectHttp1, detectHttp2 } from "../../src/detect/http.ts";

const enc = new TextEncoder();
const http1 = (s: string) => detectHttp1(enc.encode(s));

Deno.test("detectHttp1() reads the request line and the Host header", () => {
  const d = http1(
    "POST /api?q=1 HTTP/1.1\r\nhost: API.example.com:8443\r\nAccept: */*\r\n\r\nbody",
  );
  assert.deepEqual(d, {
    verdict: "match",
    info: {
      method: "POST",
      target: "/api?q=1",
      version: "HTTP/1.1",
      host: "api.example.com",
      headersComplete: true,
    },
  });
  const v6 = http1("GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n");
  assert.equal(v6.verdict === "match" && v6.info.host, "[2001:db8::1]");
  const bareLf = http1("GET / HTTP/1.0\nHost: a\n\n");
  assert.equal(bareLf.verdict === "match" && bareLf.info.host, "a");
});

Deno.test("detectHttp1() says 'more' until the request line is complete, then reports partial headers", () => {
  const line = "GET /index.html HTTP/1.1\r\n";
  for (let n = 0; n < line.length; n++) {
    assert.equal(http1(line.slice(0, n)).verdict, "more", `${n}`);
  }
  const partial = http1(line + "User-Agent: curl");
  assert.equal(partial.verdict, "match");
  assert.equal(partial.verdict === "match" && partial.info.headersComplete, false);
  assert.equal(partial.verdict === "match" && partial.info.host, null);
});

Deno.test("detectHttp1() refuses what is not an HTTP/1.x request", () => {
  for (
    const bad of [
      "get / HTTP/1.1\r\n", // lower-case method
      "SSH-2.0-OpenSSH_9.2\r\n",
      "GET  / HTTP/1.1\r\n", // empty target
      "GET / HTTP/2.0\r\n",
      "GET / HTTP/1.2\r\n",
      "GET / HTTP/1.1 \r\n",
      "GET / FTP/1.1\r\n",
      "\x16\x03\x01\x02\x00",
      "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
      "A".repeat(40) + " / HTTP/1.1\r\n", // method too long
    ]
  ) assert.equal(http1(bad).verdict, "no", JSON.stringify(bad));
});

Deno.test("detectHttp2() matches the exact prior-knowledge preface", () => {
  const preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  assert.equal(detectHttp2(enc.encode(preface + "\x00\x00\x12\x04")).verdict, "match");
  for (let n = 0; n < preface.length; n++) {
    assert.equal(detectHttp2(enc.encode(preface.slice(0, n))).verdict, "more");
  }
  assert.equal(detectHttp2(enc.encode("PRI * HTTP/1.1\r\n")).verdict, "no");
  assert.equal(detectHttp2(enc.encode("GET / HTTP/1.1\r\n")).verdict, "no");
});
