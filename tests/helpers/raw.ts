/** Pieces for tests that speak the protocol by hand or expect a call to fail. */
import { DfsError } from '../../shared/errors.js';

/** The DfsError a promise rejects with; throws if it resolves or rejects with something else. */
export async function failure(promise: Promise<unknown>): Promise<DfsError> {
  const err = await promise.then(
    () => null,
    (e: unknown) => e,
  );
  if (!(err instanceof DfsError)) throw new Error(`expected a DfsError, got ${String(err)}`);
  return err;
}

/** A binary frame as shared/frame.ts lays it out: header length, JSON header, body. */
export function binaryFrame(header: object, body: Buffer): Buffer {
  const json = Buffer.from(JSON.stringify(header));
  const out = Buffer.alloc(4 + json.length + body.length);
  out.writeUInt32BE(json.length, 0);
  json.copy(out, 4);
  body.copy(out, 4 + json.length);
  return out;
}
