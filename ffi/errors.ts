/** The one place where a C return code (a negative errno) becomes a named
 * error. */

/** Linux errno numbers the shim can return, by name. */
export const ECONNABORTED = 103;
const ERRNO_NAMES: Record<number, string> = {
  1: "EPERM",
  2: "ENOENT",
  4: "EINTR",
  5: "EIO",
  9: "EBADF",
  11: "EAGAIN",
  12: "ENOMEM",
  13: "EACCES",
  17: "EEXIST",
  20: "ENOTDIR",
  22: "EINVAL",
  23: "ENFILE",
  24: "EMFILE",
  28: "ENOSPC",
  32: "EPIPE",
  36: "ENAMETOOLONG",
  71: "EPROTO",
  103: "ECONNABORTED",
  88: "ENOTSOCK",
  90: "EMSGSIZE",
  98: "EADDRINUSE",
  104: "ECONNRESET",
  105: "ENOBUFS",
  107: "ENOTCONN",
  109: "ETOOMANYREFS",
  110: "ETIMEDOUT",
  111: "ECONNREFUSED",
  115: "EINPROGRESS",
};

export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `errno ${errno}`;
}

/** A failed shim call: `code` is the errno name ("ECONNREFUSED"). */
export class ShimError extends Error {
  constructor(readonly call: string, readonly errno: number) {
    const code = errnoName(errno);
    super(`${call}: ${code}`);
    this.name = "ShimError";
    this.code = code;
  }
  readonly code: string;
}

export function check(call: string, rc: number): number {
  if (rc < 0) throw new ShimError(call, -rc);
  return rc;
}
