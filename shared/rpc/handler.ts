/**
 * What a service writes: handlers, their context, and the arguments check every one of them
 * sits behind.
 */
import type { z } from 'zod';
import { DfsError } from '../errors.js';
import type { IncomingStream } from './incoming-stream.js';
import type { RpcConnection } from './connection.js';

export interface CallContext {
  readonly conn: RpcConnection;
  readonly requestId: number;
  /** The inline body of the request, if it had one. */
  readonly body: Buffer | undefined;
  /** The streamed body of the request, if it was sent as a stream. */
  readonly stream: IncomingStream | undefined;
  /** Aborted when the requester cancels or the connection closes. */
  readonly signal: AbortSignal;
  /** Sends an event about this request (a queue position, say) to the requester. */
  event(ev: string, data: unknown): void;
  /**
   * Waits until the connection has room to send `bytes` more (its send buffer is below the
   * high-water mark), and holds that room for this request's answer. A handler that is about to
   * load content calls it first, so that a peer pipelining reads it never takes cannot make the
   * process hold more than the high-water mark of answers.
   */
  reserveOutput(bytes: number): Promise<void>;
}

export type Handler = (args: unknown, ctx: CallContext) => unknown;
export type Handlers = Record<string, Handler>;

/** A handler's answer when it has a body or a stream to send along with the result. */
export class Reply {
  constructor(
    readonly result: unknown,
    readonly body?: Buffer,
    readonly stream?: AsyncIterable<Buffer>,
  ) {}
}

/** Wraps a handler with argument validation: invalid arguments are BAD_REQUEST and reach no code. */
export function op<S extends z.ZodType>(schema: S, fn: (args: z.infer<S>, ctx: CallContext) => unknown): Handler {
  return (args, ctx) => {
    const parsed = schema.safeParse(args);
    if (!parsed.success) {
      const problems = parsed.error.issues
        .slice(0, 3)
        .map((issue) => `${issue.path.length ? issue.path.join('.') : 'arguments'}: ${issue.message}`)
        .join('; ');
      throw new DfsError('BAD_REQUEST', `invalid arguments: ${problems}`);
    }
    return fn(parsed.data, ctx);
  };
}
