/**
 * Typed errors with stable codes. Every error that crosses a process boundary is one of these
 * codes plus a human message; callers branch on `code`, people read `message`.
 */
export const ERROR_CODES = [
  'BAD_REQUEST', // malformed frame, unknown op, invalid arguments or name
  'TOO_LARGE', // message, header or file over a configured limit
  'NOT_FOUND', // no such file (or server, or request)
  'EXISTS', // create of a name that is taken
  'LOCKED', // the lock is held by someone else and the caller asked not to wait
  'NOT_HOLDER', // release or use of a lock the caller does not hold
  'STALE_TOKEN', // a fencing token that is not the one currently granted
  'NOT_PRIMARY', // a write sent to a server that is not the file's primary
  'OUT_OF_ORDER', // a replica was sent a version that does not follow its own
  'STALE_EPOCH', // replication from a server whose placement of the file is older than the receiver's (fenced)
  'UNAVAILABLE', // the server, or every copy, cannot serve this now; try again later
  'TIMEOUT', // a wait or a request ran out of time
  'CANCELLED', // the caller cancelled the request
  'CHECKSUM', // content does not match its sha256
  'LIMIT', // a per-session or per-connection cap was reached (locks held, waits, streams, connections)
  'LOCK_LOST', // the caller's lock ended (lease lapsed, session lost) before a write made under it
  'CLOSED', // the connection closed before the answer came
  'UNAUTHENTICATED', // no valid credentials: none, a wrong password, an expired or revoked session
  'FORBIDDEN', // authenticated, but not allowed to do this
  'RATE_LIMITED', // too many failed logins; details.retryAfterMs says when to try again
  'INTERNAL', // a bug or an unexpected I/O failure on the server
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

const codeSet: ReadonlySet<string> = new Set(ERROR_CODES);

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && codeSet.has(value);
}

export class DfsError extends Error {
  readonly code: ErrorCode;
  /** Extra machine-readable facts (a lock holder, a queue position, a current version). */
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, details?: Record<string, unknown>) {
    super(message);
    this.name = 'DfsError';
    this.code = code;
    this.details = details;
  }

  toWire(): WireError {
    return this.details === undefined
      ? { code: this.code, message: this.message }
      : { code: this.code, message: this.message, details: this.details };
  }
}

export interface WireError {
  code: ErrorCode;
  message: string;
  details?: Record<string, unknown>;
}

/** Turns anything thrown into a DfsError, keeping DfsErrors as they are. */
export function toDfsError(err: unknown): DfsError {
  if (err instanceof DfsError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new DfsError('INTERNAL', message);
}

/** Errors worth retrying on another copy or after a pause. */
export function isTransient(err: unknown): boolean {
  return err instanceof DfsError && (err.code === 'UNAVAILABLE' || err.code === 'CLOSED' || err.code === 'TIMEOUT');
}
