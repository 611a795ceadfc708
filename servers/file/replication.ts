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
 * A crash before 2 leaves the old version everywhere; after 2 the primary has the new one and
 * the replicas catch up from it when they (or it) come back.
 */
import type { Logger } from '../../shared/log.js';
import { DfsError, toDfsError } from '../../shared/errors.js';
import type { Holding, PreparedResult, ServerRef, WriteMode } from '../../shared/protocol.js';
import type { ConnectionPool } from '../../shared/pool.js';
import { ChunkPipe } from '../../shared/pipe.js';
import type { Response } from '../../shared/rpc.js';

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
  /** Inline content; when absent the content is pushed through each transfer's pipe. */
  body: Buffer | undefined;
}

const REPLICA_TIMEOUT_MS = 30_000;

/** Opens a `rep.write` to every replica; the content follows inline or through the pipes. */
export function startReplication(peers: ConnectionPool, request: ReplicationRequest, log: Logger): ReplicaTransfer[] {
  const { holding, version, baseVersion, mode, size, mtime, from, body } = request;
  return holding.replicas.map((replica) => {
    const pipe = body === undefined ? new ChunkPipe() : null;
    const args = { name: holding.name, epoch: holding.epoch, version, baseVersion, mode, size, from, mtime };
    const prepared = peers
      .get(replica.url)
      .then((conn) => conn.call('rep.write', args, pipe ? { stream: pipe, timeoutMs: REPLICA_TIMEOUT_MS } : { body, timeoutMs: REPLICA_TIMEOUT_MS }))
      .then(
        (res: Response) => res.result as PreparedResult,
        (err: unknown) => {
          const error = toDfsError(err);
          pipe?.fail(error);
          log.debug('replica did not prepare', { name: holding.name, replica: replica.id, error: error.message });
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
  peers: ConnectionPool,
  transfers: ReplicaTransfer[],
  expected: { name: string; epoch: number; version: number; sha256: string; from: string },
  commitLocal: () => Promise<void>,
  log: Logger,
): Promise<ServerRef[]> {
  const outcomes = await Promise.all(transfers.map((t) => t.prepared));
  const skipped: ServerRef[] = [];
  const ready: ServerRef[] = [];
  outcomes.forEach((outcome, i) => {
    const replica = transfers[i]!.replica;
    if (outcome instanceof DfsError) skipped.push(replica);
    else if (outcome.sha256 !== expected.sha256 || outcome.version !== expected.version) {
      log.warn('replica prepared different content', { name: expected.name, replica: replica.id, version: outcome.version });
      skipped.push(replica);
    } else ready.push(replica);
  });
  await commitLocal();
  const commits = await Promise.all(
    ready.map((replica) =>
      peers
        .get(replica.url)
        .then((conn) => conn.call('rep.commit', { name: expected.name, epoch: expected.epoch, version: expected.version, from: expected.from }, { timeoutMs: REPLICA_TIMEOUT_MS }))
        .then(
          () => null,
          (err: unknown) => {
            log.debug('replica did not commit', { name: expected.name, replica: replica.id, error: toDfsError(err).message });
            return replica;
          },
        ),
    ),
  );
  for (const failed of commits) if (failed) skipped.push(failed);
  return skipped;
}
