/**
 * Wire frames. A WebSocket message is either a text message holding one JSON header, or a
 * binary message: a 4-byte big-endian header length, the JSON header, then raw body bytes.
 * Bodies carry file content untouched, so any byte values travel as they are.
 *
 * Requests are numbered by the side that makes them; both sides of a connection may make
 * requests, so frames about a request stream say which way the stream flows (`up`: from the
 * requester to the responder), and the side that made the request owns the id.
 */
import { DfsError, isErrorCode, type WireError } from './errors.js';

/** Largest JSON header accepted; file content goes in bodies, never in headers. */
export const MAX_HEADER_BYTES = 64 * 1024;

export type Frame =
  | { t: 'req'; id: number; op: string; args: unknown; stream?: boolean }
  | { t: 'res'; id: number; ok: true; result: unknown; stream?: boolean }
  | { t: 'res'; id: number; ok: false; error: WireError }
  | { t: 'evt'; ev: string; data: unknown; re?: number }
  | { t: 'data'; id: number; up: boolean }
  | { t: 'end'; id: number; up: boolean }
  | { t: 'abort'; id: number; up: boolean; error: WireError }
  | { t: 'ack'; id: number; up: boolean; bytes: number }
  | { t: 'cancel'; id: number };

export interface DecodedFrame {
  frame: Frame;
  body: Buffer | undefined;
}

/**
 * Encodes a frame. Throws TOO_LARGE when the header would be over MAX_HEADER_BYTES: the sender
 * refuses what every receiver refuses, so that the caller hears of it at once.
 */
export function encodeFrame(frame: Frame, body?: Buffer): Buffer | string {
  const json = JSON.stringify(frame);
  // One UTF-8 byte per UTF-16 unit at least, three at most: most headers skip the exact count.
  const headerLength = json.length * 3 <= MAX_HEADER_BYTES ? -1 : Buffer.byteLength(json);
  if (headerLength > MAX_HEADER_BYTES) throw new DfsError('TOO_LARGE', `a ${frame.t} frame header of ${headerLength} bytes is over the ${MAX_HEADER_BYTES}-byte limit`, { bytes: headerLength });
  if (body === undefined) return json;
  const length = headerLength === -1 ? Buffer.byteLength(json) : headerLength;
  const out = Buffer.allocUnsafe(4 + length + body.length);
  out.writeUInt32BE(length, 0);
  out.write(json, 4, 'utf8');
  body.copy(out, 4 + length);
  return out;
}

/** Bytes a message takes on the wire. */
export function messageBytes(data: Buffer | string): number {
  return typeof data === 'string' ? Buffer.byteLength(data) : data.length;
}

/**
 * The type and id a frame that cannot be decoded seems to carry, read from the start of its
 * header (our encoder writes `{"t":...,"id":...` first), so that a refused frame can still be
 * matched to its request: an oversize answer fails its caller at once instead of leaving it to
 * time out.
 */
export function frameIdentity(data: Buffer, isBinary: boolean): { t: string; id: number } | null {
  const start = isBinary ? 4 : 0;
  if (data.length < start + 8) return null;
  const prefix = data.toString('utf8', start, Math.min(data.length, start + 96));
  const match = /^\{"t":"([a-z]{1,8})","id":(\d{1,15})[,}]/.exec(prefix);
  if (!match) return null;
  const id = Number(match[2]);
  return Number.isSafeInteger(id) ? { t: match[1]!, id } : null;
}

function isId(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

function wireError(value: unknown): WireError | null {
  if (typeof value !== 'object' || value === null) return null;
  const { code, message, details } = value as Record<string, unknown>;
  if (!isErrorCode(code) || typeof message !== 'string') return null;
  if (details !== undefined && (typeof details !== 'object' || details === null)) return null;
  return details === undefined ? { code, message } : { code, message, details: details as Record<string, unknown> };
}

/** The request id a malformed frame seemed to carry, so that its error can be matched. */
export function guessId(header: unknown): number {
  if (typeof header === 'object' && header !== null && isId((header as { id?: unknown }).id)) return (header as { id: number }).id;
  return 0;
}

/** Checks a parsed header's shape; throws BAD_REQUEST describing the first problem. */
export function validateHeader(header: unknown, hasBody: boolean): Frame {
  if (typeof header !== 'object' || header === null || Array.isArray(header)) throw new DfsError('BAD_REQUEST', 'malformed frame: the header must be a JSON object');
  const h = header as Record<string, unknown>;
  const bad = (what: string): never => {
    throw new DfsError('BAD_REQUEST', `malformed ${String(h.t)} frame: ${what}`);
  };
  switch (h.t) {
    case 'req':
      if (!isId(h.id)) bad('"id" must be a non-negative integer');
      if (typeof h.op !== 'string' || h.op.length === 0 || h.op.length > 64) bad('"op" must be a short string');
      if (h.stream !== undefined && typeof h.stream !== 'boolean') bad('"stream" must be a boolean');
      return { t: 'req', id: h.id as number, op: h.op as string, args: h.args ?? {}, stream: h.stream === true };
    case 'res':
      if (!isId(h.id)) bad('"id" must be a non-negative integer');
      if (h.ok === true) return { t: 'res', id: h.id as number, ok: true, result: h.result ?? null, stream: h.stream === true };
      if (h.ok === false) {
        const error = wireError(h.error);
        if (error === null) bad('"error" must have a known "code" and a "message"');
        return { t: 'res', id: h.id as number, ok: false, error: error as WireError };
      }
      return bad('"ok" must be true or false');
    case 'evt':
      if (typeof h.ev !== 'string' || h.ev.length === 0) bad('"ev" must be a string');
      if (h.re !== undefined && !isId(h.re)) bad('"re" must be a request id');
      return h.re === undefined ? { t: 'evt', ev: h.ev as string, data: h.data ?? null } : { t: 'evt', ev: h.ev as string, data: h.data ?? null, re: h.re as number };
    case 'data':
    case 'end':
    case 'abort':
    case 'ack': {
      if (!isId(h.id)) bad('"id" must be a non-negative integer');
      if (typeof h.up !== 'boolean') bad('"up" must be a boolean');
      if (h.t === 'data') {
        if (!hasBody) bad('a data frame must be binary, with a body');
        return { t: 'data', id: h.id as number, up: h.up as boolean };
      }
      if (h.t === 'end') return { t: 'end', id: h.id as number, up: h.up as boolean };
      if (h.t === 'ack') {
        if (!isId(h.bytes)) bad('"bytes" must be a non-negative integer');
        return { t: 'ack', id: h.id as number, up: h.up as boolean, bytes: h.bytes as number };
      }
      const error = wireError(h.error) ?? { code: 'INTERNAL' as const, message: 'stream aborted' };
      return { t: 'abort', id: h.id as number, up: h.up as boolean, error };
    }
    case 'cancel':
      if (!isId(h.id)) bad('"id" must be a non-negative integer');
      return { t: 'cancel', id: h.id as number };
    default:
      return bad(`unknown frame type ${JSON.stringify(h.t)}`);
  }
}

/**
 * Decodes one WebSocket message. Throws BAD_REQUEST (with the id it could find, if any) for
 * anything malformed, TOO_LARGE for an oversize header.
 */
export function decodeFrame(data: Buffer, isBinary: boolean): DecodedFrame {
  let headerText: string;
  let body: Buffer | undefined;
  if (isBinary) {
    if (data.length < 4) throw new DfsError('BAD_REQUEST', 'malformed frame: a binary message must start with a 4-byte header length');
    const headerLength = data.readUInt32BE(0);
    if (headerLength > MAX_HEADER_BYTES) throw new DfsError('TOO_LARGE', `frame header of ${headerLength} bytes is over the ${MAX_HEADER_BYTES}-byte limit`);
    if (4 + headerLength > data.length) throw new DfsError('BAD_REQUEST', 'malformed frame: header length runs past the end of the message');
    headerText = data.toString('utf8', 4, 4 + headerLength);
    body = data.subarray(4 + headerLength);
  } else {
    if (data.length > MAX_HEADER_BYTES) throw new DfsError('TOO_LARGE', `text frame of ${data.length} bytes is over the ${MAX_HEADER_BYTES}-byte header limit; send content as a binary body`);
    headerText = data.toString('utf8');
  }
  let header: unknown;
  try {
    header = JSON.parse(headerText);
  } catch {
    throw new DfsError('BAD_REQUEST', 'malformed frame: the header is not valid JSON');
  }
  try {
    return { frame: validateHeader(header, body !== undefined), body };
  } catch (err) {
    if (err instanceof DfsError) throw new DfsError(err.code, err.message, { id: guessId(header) });
    throw err;
  }
}
