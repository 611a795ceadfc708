/**
 * The primary's side of a write: stage the new version locally while the same bytes flow to
 * every replica, and commit in an order that keeps replicas from ever holding a version the
 * primary does not:
 *
 *   1. stage: the primary writes and fdatasyncs its temp file; each replica does the same with
 *      the bytes it is sent, and answers "prepared" (in parallel with the primary);
 *   2. commit the primary (rename + folder fsync);
 *   3. commit the replicas (`rep.commit`, in parallel);
 *   4. a replica that failed at any step is reported to the directory as behind, so no read is
 *      sent to it until it catches up; only then is the client answered.
 *
 * Every exchange with a replica is bounded by the replica timeout (peer-health.ts): a replica
 * that goes silent is dropped from this write and skipped by the next ones until it answers
 * again, so one frozen replica cannot stall writes. docs/PROTOCOL.md argues each crash point.
 */
import type { Logger } from '../../shared/log.js';
import { crashArmed, crashPoint } from '../../shared/crash-points.js';
import { DfsError, toDfsError } from '../../shared/errors.js';
import type { Holding, PreparedResult, ServerRef, WriteMode } from '../../shared/protocol.js';
import type { ConnectionPool } from '../../shared/pool.js';
import { ChunkPipe } from '../../shared/pipe.js';
import type { Response, RpcConnection } from '../../shared/rpc.js';
import type { PeerHealth } from './peer-health.js';

export interface ReplicaTransfer {
  replica: ServerRef;
  /** Resolves to the replica's prepared answer, or to the error that made it fail. */
  prepared: Promise<PreparedResult | DfsError>;
  pipe: ChunkPipe | null;
}

export interface ReplicationRequest {
  holding: Holding;
  version: number;
  baseVersion: number;
  mode: WriteMode;
  size: number;
  mtime: number;
  from: string;
  /** The client's write: kept with the replica's version, so that a replica made primary knows a retry. */
  token: number;
  requestId: string;
  /** Inline content; when absent the content is pushed through each transfer's pipe. */
  body: Buffer | undefined;
}

export interface Replicator {
  peers: ConnectionPool;
  health: PeerHealth;
  log: Logger;
}

/** The whole-exchange bound beyond liveness: a replica that answers pings but never the request. */
const REPLICA_CALL_TIMEOUT_MS = 120_000;

/** The open connection to a replica, within the replica timeout; the peer is skipped after a timeout. */
export async function replicaConnection(r: Replicator, url: string): Promise<RpcConnection> {
  if (r.health.isSkipped(url)) throw new DfsError('UNAVAILABLE', `replica ${url} is not answering; going on without it`);
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      r.peers.get(url),
      new Promise<never>((_resolve, reject) => {
        timer = setTimeout(() => {
          r.health.markSkipped(url);
          reject(new DfsError('TIMEOUT', `replica ${url} did not accept a connection within ${r.health.timeoutMs} ms`));
        }, r.health.timeoutMs);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** One call to a replica, bounded by its liveness. */
export async function callReplica(r: Replicator, url: string, op: string, args: unknown, options: { body?: Buffer; stream?: AsyncIterable<Buffer> } = {}): Promise<Response> {
  const conn = await replicaConnection(r, url);
  const abort = new AbortController();
  return r.health.watch(url, conn, conn.call(op, args, { ...options, timeoutMs: REPLICA_CALL_TIMEOUT_MS, signal: abort.signal }), (err) => abort.abort(err));
}

/** Opens a `rep.write` to every replica; the content follows inline or through the pipes. */
export function startReplication(r: Replicator, request: ReplicationRequest): ReplicaTransfer[] {
  const { holding, version, baseVersion, mode, size, mtime, from, token, requestId, body } = request;
  return holding.replicas.map((replica) => {
    const pipe = body === undefined ? new ChunkPipe() : null;
    const args = { name: holding.name, epoch: holding.epoch, version, baseVersion, mode, size, from, placementEpoch: holding.placementEpoch, mtime, token, requestId };
    const prepared = callReplica(r, replica.url, 'rep.write', args, pipe ? { stream: pipe } : { body }).then(
      (res: Response) => res.result as PreparedResult,
      (err: unknown) => {
        const error = toDfsError(err);
        pipe?.fail(error);
        r.log.debug('replica did not prepare', { name: holding.name, replica: replica.id, error: error.message });
        return error;
      },
    );
    return { replica, prepared, pipe };
  });
}

/** Passes one chunk to every replica still taking part; waits while any is too far behind. */
export async function pushToReplicas(transfers: ReplicaTransfer[], chunk: Buffer): Promise<void> {
  for (const t of transfers) if (t.pipe && !t.pipe.failed) await t.pipe.push(chunk);
}

export function endReplicaStreams(transfers: ReplicaTransfer[]): void {
  for (const t of transfers) t.pipe?.end();
}

export function abortReplicas(transfers: ReplicaTransfer[], err: DfsError): void {
  for (const t of transfers) t.pipe?.fail(err);
}

/**
 * Waits for every replica's prepare, checks each prepared the same content, commits the
 * primary (`commitLocal`), then the replicas. Returns the replicas that did not make it.
 */
export async function finishReplication(
  r: Replicator,
  transfers: ReplicaTransfer[],
  expected: { name: string; epoch: number; placementEpoch: number; version: number; sha256: string; from: string },
  commitLocal: () => Promise<void>,
): Promise<ServerRef[]> {
  const outcomes = await Promise.all(transfers.map((t) => t.prepared));
  // A replica that knows a newer placement fences this primary off: nothing is committed.
  const fenced = outcomes.find((o): o is DfsError => o instanceof DfsError && (o.code === 'STALE_EPOCH' || o.code === 'NOT_PRIMARY'));
  if (fenced) throw fenced;
  const skipped: ServerRef[] = [];
  const ready: ServerRef[] = [];
  outcomes.forEach((outcome, i) => {
    const replica = transfers[i]!.replica;
    if (outcome instanceof DfsError) skipped.push(replica);
    else if (outcome.sha256 !== expected.sha256 || outcome.version !== expected.version) {
      r.log.warn('replica prepared different content', { name: expected.name, replica: replica.id, version: outcome.version });
      skipped.push(replica);
    } else ready.push(replica);
  });
  await commitLocal();
  crashPoint('write:after-primary-commit', expected.name, r.log);
  const commit = (replica: ServerRef) =>
    callReplica(r, replica.url, 'rep.commit', { name: expected.name, epoch: expected.epoch, version: expected.version, from: expected.from, placementEpoch: expected.placementEpoch }).then(
      () => null,
      (err: unknown) => {
        r.log.debug('replica did not commit', { name: expected.name, replica: replica.id, error: toDfsError(err).message });
        return replica;
      },
    );
  let commits: Array<ServerRef | null>;
  if (crashArmed('write:after-replica-commit', expected.name) && ready.length > 1) {
    // Only when that crash point is armed: one replica commits, the process dies before the next.
    const first = await commit(ready[0]!);
    crashPoint('write:after-replica-commit', expected.name, r.log);
    commits = [first, ...(await Promise.all(ready.slice(1).map(commit)))];
  } else {
    commits = await Promise.all(ready.map(commit));
    if (ready.length > 0) crashPoint('write:after-replica-commit', expected.name, r.log);
  }
  for (const failed of commits) if (failed) skipped.push(failed);
  return skipped;
}
