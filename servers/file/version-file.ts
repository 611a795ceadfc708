/**
 * One stored version of a file is one file on disk: a fixed 1 KiB header (magic, JSON metadata)
 * followed by the content. Keeping metadata and content in the same file means a single
 * rename commits both, so they can never disagree after a crash.
 *
 * On-disk name: `<sha256(name)>.<epoch>.<version>`; the current version of a name is the file
 * with the highest (epoch, version). Hashing the name keeps every name, whatever its
 * characters or slashes, a flat file inside the store folder.
 */
import { createHash } from 'node:crypto';
import { DfsError } from '../../shared/errors.js';
import type { FileMeta } from '../../shared/protocol.js';

export const HEADER_BYTES = 1024;
const MAGIC = 'DFSV';
export const EMPTY_SHA256 = createHash('sha256').digest('hex');

export interface VersionHeader extends FileMeta {
  /** Fencing token of the write that made this version (0 for versions copied in catch-up). */
  token: number;
  /** The client's id for the write, so a retried write is recognised and not applied twice. */
  requestId: string;
  /**
   * The placement epoch of the file when its primary wrote this version; 0 when not known (a
   * copy fetched from a peer). Headers written before placement epochs existed read as 1.
   */
  placementEpoch: number;
}

/** The metadata a client sees: the header without the write's token and request id. */
export function publicMeta({ name, epoch, version, size, sha256, mtime }: FileMeta): FileMeta {
  return { name, epoch, version, size, sha256, mtime };
}

export function nameKey(name: string): string {
  return createHash('sha256').update(name, 'utf8').digest('hex');
}

export function versionFileName(key: string, epoch: number, version: number): string {
  return `${key}.${epoch}.${version}`;
}

const VERSION_FILE = /^([0-9a-f]{64})\.(\d+)\.(\d+)$/;

export function parseVersionFileName(file: string): { key: string; epoch: number; version: number } | null {
  const match = VERSION_FILE.exec(file);
  if (!match) return null;
  return { key: match[1]!, epoch: Number(match[2]), version: Number(match[3]) };
}

export function encodeHeader(header: VersionHeader): Buffer {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  if (json.length > HEADER_BYTES - 8) throw new DfsError('TOO_LARGE', 'version header too large');
  const out = Buffer.alloc(HEADER_BYTES);
  out.write(MAGIC, 0, 'latin1');
  out.writeUInt32BE(json.length, 4);
  json.copy(out, 8);
  return out;
}

export function decodeHeader(buf: Buffer): VersionHeader {
  if (buf.length < 8 || buf.toString('latin1', 0, 4) !== MAGIC) throw new Error('not a version file (bad magic)');
  const length = buf.readUInt32BE(4);
  if (length > HEADER_BYTES - 8 || 8 + length > buf.length) throw new Error('corrupt version header length');
  const parsed = JSON.parse(buf.toString('utf8', 8, 8 + length)) as Partial<VersionHeader>;
  const { name, epoch, version, size, sha256, mtime, token, requestId } = parsed;
  const placementEpoch = parsed.placementEpoch ?? 1;
  if (
    typeof name !== 'string' ||
    typeof epoch !== 'number' ||
    typeof version !== 'number' ||
    typeof size !== 'number' ||
    typeof sha256 !== 'string' ||
    typeof mtime !== 'number' ||
    typeof token !== 'number' ||
    typeof requestId !== 'string' ||
    typeof placementEpoch !== 'number'
  ) {
    throw new Error('corrupt version header fields');
  }
  return { name, epoch, version, size, sha256, mtime, token, requestId, placementEpoch };
}
