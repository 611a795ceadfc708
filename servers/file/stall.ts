import type { IncomingStream } from '../../shared/rpc.js';

/** A stream must deliver at least this much per stall period (when it has the credit to). */
export const MIN_PROGRESS_BYTES = 16 << 10;

/** Fails `stream` with TIMEOUT when its sender stops delivering for `withinMs` (see IncomingStream.requireProgress). */
export function watchProgress(stream: IncomingStream | undefined, withinMs: number): void {
  stream?.requireProgress({ withinMs, minBytes: MIN_PROGRESS_BYTES });
}
