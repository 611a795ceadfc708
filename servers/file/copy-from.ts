/**
 * Copying one file's current version from a peer, whole (`fetch`), checked by sha256 and
 * committed like any version. Catch-up uses it to bring a replica up to its primary, and a
 * primary to recover a copy it lost (damaged) from its replicas.
 *
 * A copy never goes backwards: a peer's version older than `atLeast` is refused (OUT_OF_ORDER),
 * so a replica never drops or regresses its copy because a primary that lost data says less.
 */
import type { TokenBucket } from 'limiter';
import { DfsError } from '../../shared/errors.js';
import type { Holding, ReadResult } from '../../shared/protocol.js';
import type { RpcConnection } from '../../shared/rpc.js';
import { watchProgress } from './stall.js';
import type { FileStore } from './store.js';

const FETCH_TIMEOUT_MS = 60_000;

/**
 * Fetches `holding`'s file from `conn` and makes it the current version here. Call it holding
 * the file's mutex. Resolves with the peer's metadata.
 */
export async function copyFrom(
  store: FileStore,
  conn: RpcConnection,
  holding: Holding,
  options: { atLeast: number; stallTimeoutMs: number; rate?: TokenBucket | null },
): Promise<ReadResult> {
  const res = await conn.call('fetch', { name: holding.name, epoch: holding.epoch, placementEpoch: holding.placementEpoch }, { timeoutMs: FETCH_TIMEOUT_MS });
  watchProgress(res.stream, options.stallTimeoutMs);
  const meta = res.result as ReadResult;
  if (meta.version < options.atLeast || meta.epoch !== holding.epoch) {
    res.stream?.dispose(new DfsError('CANCELLED', 'not taken'));
    throw new DfsError('OUT_OF_ORDER', `${holding.name} on the peer is v${meta.version} (epoch ${meta.epoch}), older than the v${options.atLeast} kept here; not taken`, { version: meta.version });
  }
  if (meta.version === 0) {
    await res.stream?.drain();
    await store.remove(holding.name);
    return meta;
  }
  const staged = await store.stage(holding.name, holding.epoch, meta.version, 'replace');
  try {
    const rate = options.rate;
    if (rate && res.body) await take(rate, res.body.length);
    await staged.writeAll(rate && res.stream ? throttled(res.stream, rate) : res.stream, res.body);
    const header = await staged.seal({ mtime: meta.mtime, token: meta.token ?? 0, requestId: meta.requestId ?? '', placementEpoch: 0 });
    if (header.sha256 !== meta.sha256 || header.size !== meta.size) throw new DfsError('CHECKSUM', `fetched content of ${holding.name} does not match its sha256`);
    await store.commit(staged, header);
  } catch (err) {
    await staged.discard();
    throw err;
  }
  return meta;
}

/** The copy rate: catch-up and re-replication share it, so that foreground traffic goes on. */
async function take(rate: TokenBucket, bytes: number): Promise<void> {
  for (let left = bytes; left > 0; left -= rate.bucketSize) await rate.removeTokens(Math.min(left, rate.bucketSize));
}

async function* throttled(stream: AsyncIterable<Buffer>, rate: TokenBucket): AsyncIterable<Buffer> {
  for await (const chunk of stream) {
    await take(rate, chunk.length);
    yield chunk;
  }
}
