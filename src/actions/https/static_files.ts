/**
 * The static-folder HTTPS handler: files under one folder, with ETags
 * (If-None-Match: 304), single byte ranges (RFC 9110 §14: 206, 416), gzip
 * for text when the client accepts it, and index.html for folders. Nothing
 * outside the folder is served, symlinks included.
 */
import { extname, join, resolve, sep } from "node:path";
import type { HttpsHandler } from "./frontend.ts";

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".htm": "text/html; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".json": "application/json",
  ".txt": "text/plain; charset=utf-8",
  ".svg": "image/svg+xml",
  ".xml": "application/xml",
  ".png": "image/png",
  ".jpg": "image/jpeg",
  ".jpeg": "image/jpeg",
  ".gif": "image/gif",
  ".webp": "image/webp",
  ".ico": "image/x-icon",
  ".wasm": "application/wasm",
  ".pdf": "application/pdf",
};
const COMPRESSIBLE = /^(text\/|application\/(json|xml|javascript)|image\/svg)/;
const MIN_COMPRESS = 1024; // smaller files gain nothing

function notFound(): Response {
  return new Response("not found\n", { status: 404 });
}

/** A stream of length bytes of file from offset, closing the file at its end. */
function slice(
  file: Deno.FsFile,
  offset: number,
  length: number,
): ReadableStream<Uint8Array<ArrayBuffer>> {
  let left = length;
  return new ReadableStream({
    async start() {
      await file.seek(offset, Deno.SeekMode.Start);
    },
    async pull(controller) {
      const buf = new Uint8Array(Math.min(64 * 1024, left));
      const n = left > 0 ? await file.read(buf) : null;
      if (n === null || n === 0) {
        file.close();
        controller.close();
        return;
      }
      left -= n;
      controller.enqueue(buf.subarray(0, n));
    },
    cancel() {
      file.close();
    },
  });
}

export function staticFilesHandler(folder: string): HttpsHandler {
  const root = Deno.realPathSync(folder);
  return {
    async fetch(req) {
      if (req.method !== "GET" && req.method !== "HEAD") {
        return new Response("method not allowed\n", {
          status: 405,
          headers: { allow: "GET, HEAD" },
        });
      }
      let path: string;
      try {
        path = decodeURIComponent(new URL(req.url).pathname);
      } catch {
        return new Response("bad path\n", { status: 400 });
      }
      if (path.includes("\0")) return notFound();
      let real: string;
      let info: Deno.FileInfo;
      try {
        real = await Deno.realPath(resolve(root, "." + path));
        info = await Deno.stat(real);
        if (info.isDirectory) {
          real = await Deno.realPath(join(real, "index.html"));
          info = await Deno.stat(real);
        }
      } catch {
        return notFound();
      }
      // Resolved (symlinks followed) to a place outside the folder: not ours.
      if (real !== root && !real.startsWith(root + sep)) return notFound();
      if (!info.isFile) return notFound();

      const size = info.size;
      const etag = `"${size.toString(16)}-${(info.mtime?.getTime() ?? 0).toString(16)}"`;
      const type = TYPES[extname(real).toLowerCase()] ?? "application/octet-stream";
      const headers = new Headers({ "content-type": type, "accept-ranges": "bytes", etag });
      if (info.mtime) headers.set("last-modified", info.mtime.toUTCString());
      const ifNoneMatch = req.headers.get("if-none-match");
      if (
        ifNoneMatch && ifNoneMatch.split(",").some((t) => t.trim().replace(/^W\//, "") === etag)
      ) {
        return new Response(null, { status: 304, headers });
      }

      const range = /^bytes=(\d*)-(\d*)$/.exec(req.headers.get("range") ?? "");
      if (range && (range[1] || range[2])) {
        let start = range[1] ? Number(range[1]) : Math.max(0, size - Number(range[2])); // suffix form
        let end = range[1] && range[2] ? Math.min(Number(range[2]), size - 1) : size - 1;
        if (!range[1]) end = size - 1;
        if (start >= size || start > end) {
          headers.set("content-range", `bytes */${size}`);
          return new Response(null, { status: 416, headers });
        }
        start = Math.max(0, start);
        end = Math.max(start, end);
        headers.set("content-range", `bytes ${start}-${end}/${size}`);
        headers.set("content-length", String(end - start + 1));
        if (req.method === "HEAD") return new Response(null, { status: 206, headers });
        return new Response(slice(await Deno.open(real), start, end - start + 1), {
          status: 206,
          headers,
        });
      }

      const gzip = size >= MIN_COMPRESS && COMPRESSIBLE.test(type) &&
        /\bgzip\b/.test(req.headers.get("accept-encoding") ?? "");
      headers.set("vary", "accept-encoding");
      if (gzip) {
        headers.set("content-encoding", "gzip");
        headers.set("etag", etag.replace(/"$/, '-gz"')); // another representation
      } else headers.set("content-length", String(size));
      if (req.method === "HEAD") return new Response(null, { status: 200, headers });
      const body = slice(await Deno.open(real), 0, size);
      return new Response(gzip ? body.pipeThrough(new CompressionStream("gzip")) : body, {
        headers,
      });
    },
  };
}
