/**
 * Writes on a file's primary, end to end (docs/PROTOCOL.md, "Replication" and "Crash points").
 *
 * The order of one write, and why:
 *   1. The fencing token is validated with the lock service before the write takes the file's
 *      turn, so a stale or forged token never holds the mutex.
 *   2. Under the file's mutex: the first write to a primary copy since this process started
 *      reconciles it with its replicas (each either holds this copy's version or is marked
 *      behind), because a crash may have left the primary one version ahead of its replicas.
 *   3. A retry of the write that made the current version (same request id) applies nothing,
 *      but is acknowledged only once every replica holds that version or is marked behind.
 *   4. Otherwise the new version is staged here and on every replica, the token is checked
 *      again, the primary commits, the replicas commit, the ones that failed are marked behind,
 *      and only then is the client answered.
 * So no acknowledgement, first attempt or retry, leaves a readable copy without the version.
 *
 * A write stream that stops delivering for the stall timeout is aborted, its staged files are
 * removed and the mutex is freed; a replica that stops answering is dropped from the write.
 */
import { createHash } from 'node:crypto';
import { crashPoint } from '../../shared/crash-points.js';
import { DfsError, toDfsError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import type { FileArgs, Holding, ServerRef, VersionsResult, WriteResult } from '../../shared/protocol.js';
import type { CallContext } from '../../shared/rpc.js';
import { copyFrom } from './copy-from.js';
import { watchProgress } from './stall.js';
import { abortReplicas, callReplica, endReplicaStreams, finishReplication, pushToReplicas, replicaConnection, startReplication } from './replication.js';
import type { FileServer } from './service.js';
import type { StagedVersion } from './store.js';
import type { VersionHeader } from './version-file.js';

/** How long the lock service may take to answer a token check. */
const VALIDATE_TIMEOUT_MS = 5000;

export class PrimaryWrites {
  /** Primary copies this process has reconciled with their replicas since it started. */
  private readonly reconciled = new Set<string>();

  constructor(
    private readonly server: FileServer,
    private readonly log: Logger,
  ) {}

  markReconciled(names: Iterable<string>): void {
    for (const name of names) this.reconciled.add(name);
  }

  forget(name: string): void {
    this.reconciled.delete(name);
  }

  async write(args: FileArgs['write'], ctx: CallContext): Promise<WriteResult> {
    const s = this.server;
    if (s.stopping) throw new DfsError('UNAVAILABLE', `server ${s.id} is shutting down`);
    if (args.size > s.maxFileBytes) throw new DfsError('TOO_LARGE', `${args.size} bytes is over this server's ${s.maxFileBytes}-byte file limit`);
    if (!ctx.stream && (ctx.body?.length ?? 0) !== args.size) throw new DfsError('BAD_REQUEST', `size says ${args.size} bytes but ${ctx.body?.length ?? 0} were sent`);
    watchProgress(ctx.stream, s.stallTimeoutMs);
    let holding = await notHereIsNotPrimary(s.holdings.lookup(args.name, args.epoch, args.placementEpoch));
    // The client was sent here by the directory: a role this server does not know yet may be new.
    if (!s.holdings.isWritablePrimary(holding)) holding = await s.holdings.refresh(args.name, args.epoch);
    this.requirePrimary(holding);
    await this.validateToken(args.name, args.token);
    return s.mutex.run(args.name, () => this.apply(args, ctx, holding));
  }

  /** NOT_PRIMARY unless this server may take writes of the file now (the primary, not fenced). */
  private requirePrimary(holding: Holding): void {
    const s = this.server;
    if (s.holdings.isWritablePrimary(holding)) return;
    const now = s.holdings.get(holding.name) ?? holding;
    if (s.holdings.isFenced(holding.name)) throw new DfsError('NOT_PRIMARY', `${holding.name} is changing primary (placement epoch ${now.placementEpoch}); locate it again`);
    throw new DfsError('NOT_PRIMARY', `${s.id} is not the primary for ${holding.name}; its primary is ${now.primary.id} at ${now.primary.url}`);
  }

  /** STALE_TOKEN unless `token` is the grant in force on `name`. */
  async validateToken(name: string, token: number): Promise<void> {
    const lock = await this.server.lockService();
    await lock.call('validate', { name, token }, { timeoutMs: VALIDATE_TIMEOUT_MS });
  }

  private async apply(args: FileArgs['write'], ctx: CallContext, holding: Holding): Promise<WriteResult> {
    const s = this.server;
    const { name } = args;
    if (s.holdings.get(name)?.epoch !== holding.epoch) throw new DfsError('NOT_FOUND', `${name} was deleted while this write waited its turn`);
    this.requirePrimary(holding);
    const justReconciled = await this.reconcile(holding);
    const current = s.store.metaFor(name, holding.epoch);
    if (current.requestId === args.requestId) {
      // A retry of a write that already landed here: apply nothing, but answer only once every
      // replica holds it or is marked behind (the first attempt may have died before that).
      await ctx.stream?.drain();
      const skipped = justReconciled ?? (await this.alignReplicas(holding, current));
      return { name, epoch: current.epoch, version: current.version, size: current.size, sha256: current.sha256, skipped: skipped.map((r) => r.id) };
    }
    if (args.token < current.token) throw new DfsError('STALE_TOKEN', `token ${args.token} is older than the one that wrote v${current.version} of ${name}`);
    crashPoint('write:before-stage', name, this.log);
    const version = nextVersion(current, s.store.lostVersion(name), holding.placementEpoch);
    const mtime = Date.now();
    // Replicas start staging first: they are a round trip away, the local disk is not.
    const transfers = startReplication(s.replicator, {
      holding,
      version,
      baseVersion: current.version,
      mode: args.mode,
      size: args.size,
      mtime,
      from: s.id,
      token: args.token,
      requestId: args.requestId,
      body: ctx.body,
    });
    let staged: StagedVersion;
    try {
      staged = await s.store.stage(name, holding.epoch, version, args.mode);
    } catch (err) {
      abortReplicas(transfers, toDfsError(err));
      throw err;
    }
    let header: VersionHeader;
    try {
      const received = await this.receive(args, ctx, staged, transfers);
      if (received !== args.size) throw new DfsError('BAD_REQUEST', `announced ${args.size} bytes but ${received} arrived`);
      endReplicaStreams(transfers);
      // The lock may have been lost while the content came in: check again before anything commits.
      const [sealed, checked] = await Promise.allSettled([
        staged.seal({ mtime, token: args.token, requestId: args.requestId, placementEpoch: holding.placementEpoch }),
        this.validateToken(name, args.token),
      ]);
      if (checked.status === 'rejected') throw checked.reason;
      if (sealed.status === 'rejected') throw sealed.reason;
      header = sealed.value;
    } catch (err) {
      const error = toDfsError(err);
      abortReplicas(transfers, error);
      await staged.discard();
      throw error;
    }
    let skipped: ServerRef[];
    try {
      skipped = await finishReplication(s.replicator, transfers, { name, epoch: holding.epoch, placementEpoch: holding.placementEpoch, version, sha256: header.sha256, from: s.id }, async () => {
        crashPoint('write:after-stage', name, this.log);
        // The last moment to find out this server lost the role (fenced, or a replica refused).
        this.requirePrimary(holding);
        await s.store.commit(staged, header);
      });
    } catch (err) {
      await staged.discard();
      throw this.onLostRole(holding, err);
    }
    s.counters.writes++;
    s.counters.contentBytesReceived += args.size;
    try {
      for (const replica of skipped) await s.reportBehind(name, replica.id);
      // Copies added to the file while this write ran (re-replication) were not sent it: they may
      // have copied the file before it landed, so they are marked behind before the answer.
      const now = s.holdings.get(name);
      if (now && now.epoch === holding.epoch && now.placementEpoch !== holding.placementEpoch) {
        for (const replica of now.replicas) if (!holding.replicas.some((r) => r.id === replica.id)) await s.reportBehind(name, replica.id);
      }
    } catch (err) {
      // Committed here but not acknowledged: the next write reconciles again before it goes on,
      // so no second version is built on this one while a replica may lack it unmarked.
      this.reconciled.delete(name);
      throw this.onLostRole(holding, err);
    }
    crashPoint('write:before-ack', name, this.log);
    return { name, epoch: holding.epoch, version, size: header.size, sha256: header.sha256, skipped: skipped.map((r) => r.id) };
  }

  /**
   * A replica that refused with STALE_EPOCH knows a newer placement of the file: this server is
   * no longer (only) its primary. The holding is refreshed and the write fails with NOT_PRIMARY,
   * so the client locates the file again.
   */
  private onLostRole(holding: Holding, err: unknown): DfsError {
    const error = toDfsError(err);
    if (error.code !== 'STALE_EPOCH' && error.code !== 'NOT_PRIMARY') return error;
    this.reconciled.delete(holding.name);
    void this.server.holdings.lookup(holding.name, holding.epoch, holding.placementEpoch + 1).catch(() => {});
    return new DfsError('NOT_PRIMARY', `${this.server.id} is no longer the primary of ${holding.name} (${error.message}); locate it again`);
  }

  /** Takes the content into the staged file and the replica streams; returns its size. */
  private async receive(args: FileArgs['write'], ctx: CallContext, staged: StagedVersion, transfers: ReturnType<typeof startReplication>): Promise<number> {
    const hash = args.sha256 ? createHash('sha256') : null;
    let received = 0;
    if (ctx.stream) {
      for await (const chunk of ctx.stream) {
        received += chunk.length;
        if (received > args.size) throw new DfsError('BAD_REQUEST', `more than the announced ${args.size} bytes were sent`);
        hash?.update(chunk);
        await Promise.all([staged.write(chunk), pushToReplicas(transfers, chunk)]);
      }
    } else if (ctx.body) {
      received = ctx.body.length;
      hash?.update(ctx.body);
      await staged.write(ctx.body);
    }
    if (hash && hash.digest('hex') !== args.sha256) throw new DfsError('CHECKSUM', `the content of the write to ${args.name} does not match its sha256`);
    return received;
  }

  /**
   * The first write to a primary copy since this process started reconciles it (so does any
   * write while the copy here is known to be damaged): returns the replicas it marked behind, or
   * null when it had been reconciled already.
   */
  private async reconcile(holding: Holding): Promise<ServerRef[] | null> {
    if (this.reconciled.has(holding.name) && !this.server.store.isDamaged(holding.name)) return null;
    return this.reconcileNow(holding);
  }

  /**
   * Reconciles a primary copy with its replicas, holding the file's mutex: if a replica holds a
   * newer version than this copy (this copy was damaged, or lost), that version is copied here
   * first; then every replica that does not hold this copy's version, or does not answer, is
   * marked behind. Returns those.
   */
  async reconcileNow(holding: Holding): Promise<ServerRef[]> {
    const s = this.server;
    const { name } = holding;
    let mine = s.store.metaFor(name, holding.epoch);
    let answers = await this.replicaVersions(holding);
    // A copy just made primary by failover was chosen as the newest in-sync one: a replica that is
    // further ahead holds only what the old primary never acknowledged (and may be this very
    // write, retried), so it is marked behind, not copied.
    const newPrimary = holding.placementEpoch > 1 && mine.placementEpoch < holding.placementEpoch && !s.store.isDamaged(name);
    const newest = newPrimary ? null : answers.reduce<{ replica: ServerRef; version: number } | null>((best, a) => {
      const v = a.theirs && a.theirs.epoch === holding.epoch ? a.theirs.version : -1;
      return v > mine.version && v > (best?.version ?? -1) ? { replica: a.replica, version: v } : best;
    }, null);
    if (newest) {
      const conn = await replicaConnection(s.replicator, newest.replica.url);
      await copyFrom(s.store, conn, holding, { atLeast: newest.version, stallTimeoutMs: s.stallTimeoutMs });
      this.log.warn('primary copy was behind its replicas (lost or damaged here); recovered it', { name, from: newest.replica.id, version: newest.version, had: mine.version });
      mine = s.store.metaFor(name, holding.epoch);
      answers = await this.replicaVersions(holding);
    } else if (s.store.isDamaged(name)) {
      if (answers.some((a) => a.theirs === null)) {
        throw new DfsError('UNAVAILABLE', `the copy of ${name} on ${s.id} was damaged, and a replica that may hold it is not answering; try again shortly`);
      }
      this.log.error('a damaged primary copy has no intact copy on any replica; the file goes on from what is left', { name, version: mine.version, lostVersion: s.store.lostVersion(name) });
      s.store.markRecovered(name);
    }
    const behind = answers.filter((a) => !agrees(mine, a.theirs)).map((a) => a.replica);
    for (const replica of behind) await s.reportBehind(name, replica.id);
    this.reconciled.add(name);
    if (behind.length > 0) this.log.info('reconciled a primary copy with its replicas', { name, behind: behind.map((r) => r.id).join(',') });
    return behind;
  }

  /**
   * Makes sure every replica holds `version` or is marked behind, before a write is answered.
   * Returns the replicas marked.
   */
  private async alignReplicas(holding: Holding, version: VersionHeader): Promise<ServerRef[]> {
    const behind = (await this.replicaVersions(holding)).filter((a) => !agrees(version, a.theirs)).map((a) => a.replica);
    for (const replica of behind) await this.server.reportBehind(holding.name, replica.id);
    return behind;
  }

  /** Each replica's version of the file (within the replica timeout): null when it did not answer. */
  private async replicaVersions(holding: Holding): Promise<Array<{ replica: ServerRef; theirs: RemoteVersion | undefined | null }>> {
    return Promise.all(
      holding.replicas.map(async (replica) => {
        try {
          const res = await callReplica(this.server.replicator, replica.url, 'versions', { names: [holding.name] });
          return { replica, theirs: (res.result as VersionsResult).files.find((f) => f.name === holding.name) };
        } catch {
          return { replica, theirs: null };
        }
      }),
    );
  }
}

type RemoteVersion = VersionsResult['files'][number];

/**
 * A write sent to a server that holds no copy of the file (its copy moved away): NOT_PRIMARY, so
 * that the client locates the file again, not NOT_FOUND, which says the file does not exist.
 */
export async function notHereIsNotPrimary<T>(lookup: Promise<T>): Promise<T> {
  try {
    return await lookup;
  } catch (err) {
    if (err instanceof DfsError && err.code === 'NOT_FOUND' && err.details?.notHere === true) throw new DfsError('NOT_PRIMARY', `${err.message}; locate it again`);
    throw err;
  }
}

/**
 * The number of the next version. Above any version lost with a damaged copy here, so that a
 * number once given is never reused; and the first write of a new primary (the file's placement
 * epoch is newer than the one its current version was written under) skips one number for each
 * placement epoch since, because each primary of those epochs may have committed a number above
 * this copy's, unacknowledged, before it lost the role (docs/PROTOCOL.md, "Failover"). A copy
 * fetched from a peer does not know its epoch (0): it skips one per epoch of the file.
 */
export function nextVersion(current: VersionHeader, lostVersion: number, placementEpoch: number): number {
  const skipped = placementEpoch > 1 && current.placementEpoch < placementEpoch ? placementEpoch - current.placementEpoch : 0;
  return Math.max(current.version, lostVersion) + 1 + skipped;
}

/** Whether a replica's answer says it holds `version` (no answer never agrees; no copy agrees with version 0). */
function agrees(version: VersionHeader, theirs: RemoteVersion | undefined | null): boolean {
  if (theirs === null) return false;
  if (theirs === undefined) return version.version === 0;
  return theirs.epoch === version.epoch && theirs.version === version.version && theirs.sha256 === version.sha256;
}
