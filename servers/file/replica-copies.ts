/**
 * A replica's side of replication: `rep.write` stages (and fdatasyncs) the next version and
 * answers "prepared"; `rep.commit` makes it current; `rep.delete` drops the file. A replica
 * accepts these only from the file's primary, only in version order, and only stamped with the
 * file's current placement epoch (older: STALE_EPOCH; newer: the holding is refreshed first), so it
 * never holds a version its primary has not committed, and a primary that lost its role (failover)
 * is fenced off. `rep.fence` (from the directory, before it changes a file's primary) raises the
 * epoch a copy accepts, aborts replication under way, and says which version is held. A prepared
 * version not committed within a minute is dropped, and one whose stream stops delivering is
 * aborted: neither holds the file for ever.
 */
import { eachLimited } from '../../shared/concurrency.js';
import { crashPoint } from '../../shared/crash-points.js';
import { DfsError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import type { FileArgs, Holding, PreparedResult, VersionsResult } from '../../shared/protocol.js';
import type { CallContext } from '../../shared/rpc.js';
import { watchProgress } from './stall.js';
import type { FileServer } from './service.js';
import type { StagedVersion } from './store.js';
import type { VersionHeader } from './version-file.js';

/** A replica's prepared version is dropped if its commit does not come within this time. */
const PREPARED_TTL_MS = 60_000;

interface PreparedCopy {
  staged: StagedVersion;
  header: VersionHeader;
  timer: NodeJS.Timeout;
}

/** Fenced files whose versions are collected at once. */
const FENCE_CONCURRENCY = 64;
/**
 * How long a fence waits for one file's turn: a file held longer (a stalled write) is left out
 * of the answer (not a candidate this round) instead of holding up the answer for all the others.
 */
const FENCE_TURN_WAIT_MS = 2000;

export class ReplicaCopies {
  private readonly prepared = new Map<string, PreparedCopy>();
  /** Incoming `rep.write`s under way, by name: a fence aborts them. */
  private readonly incoming = new Map<string, (err: DfsError) => void>();

  constructor(
    private readonly server: FileServer,
    private readonly log: Logger,
  ) {}

  /** The holding, if `from` may replicate it at `placementEpoch`; the right typed error if not. */
  private async holdingFrom(name: string, epoch: number, from: string, placementEpoch: number): Promise<Holding> {
    const s = this.server;
    const holding = await s.holdings.lookup(name, epoch, placementEpoch);
    if (placementEpoch < holding.placementEpoch) {
      throw new DfsError('STALE_EPOCH', `${name} is at placement epoch ${holding.placementEpoch} on ${s.id}; ${from} sent ${placementEpoch} (its primary is now ${holding.primary.id})`, { placementEpoch: holding.placementEpoch });
    }
    if (holding.role !== 'replica') throw new DfsError('NOT_PRIMARY', `${s.id} is not a replica of ${name} (placement epoch ${holding.placementEpoch})`);
    if (holding.primary.id !== from) throw new DfsError('NOT_PRIMARY', `only ${name}'s primary ${holding.primary.id} may replicate it, not ${from}`);
    return holding;
  }

  /**
   * Fences each copy at its new placement epoch, aborts incoming replication of it, and answers
   * the version held once nothing else is under way on the file (so the answer is final).
   */
  async fence(args: FileArgs['rep.fence']): Promise<VersionsResult> {
    const s = this.server;
    // A copy this server has not looked up since its last catch-up (a file created since and never
    // written) is looked up first: it is as much a candidate as any.
    const unknown = args.copies.filter((c) => s.holdings.get(c.name)?.epoch !== c.epoch);
    await eachLimited(unknown, FENCE_CONCURRENCY, (c) => s.holdings.lookup(c.name, c.epoch).then(() => undefined, () => undefined));
    const fenced = args.copies.filter((c) => s.holdings.fence(c.name, c.epoch, c.placementEpoch));
    for (const { name } of fenced) {
      this.incoming.get(name)?.(new DfsError('STALE_EPOCH', `${name} is changing primary; replication from the old one stops`));
      this.drop(name);
    }
    const files: VersionsResult['files'] = [];
    let answering = true;
    await eachLimited(fenced, FENCE_CONCURRENCY, async (c) => {
      let timer: NodeJS.Timeout | undefined;
      const turn = s.mutex.run(c.name, async () => {
        this.drop(c.name);
        const meta = s.store.metaFor(c.name, c.epoch);
        // A copy known to be damaged or still catching up is not a candidate: it says nothing.
        if (answering && !s.store.isDamaged(c.name) && !s.suspect.has(c.name)) files.push({ name: c.name, epoch: c.epoch, version: meta.version, sha256: meta.sha256 });
      });
      await Promise.race([turn, new Promise((resolve) => (timer = setTimeout(resolve, FENCE_TURN_WAIT_MS)))]);
      clearTimeout(timer);
    });
    answering = false;
    return { files };
  }

  async write(args: FileArgs['rep.write'], ctx: CallContext): Promise<PreparedResult> {
    const s = this.server;
    watchProgress(ctx.stream, s.stallTimeoutMs);
    await this.holdingFrom(args.name, args.epoch, args.from, args.placementEpoch);
    return s.mutex.run(args.name, async () => {
      // Checked again under the file's turn: a fence may have come while this waited.
      await this.holdingFrom(args.name, args.epoch, args.from, args.placementEpoch);
      const current = s.store.metaFor(args.name, args.epoch);
      if (args.version === current.version) {
        await ctx.stream?.drain();
        return { version: current.version, sha256: current.sha256, committed: true };
      }
      // The next version, built on ours (it may skip numbers: see lostVersion in store.ts).
      if (args.baseVersion !== current.version || args.version <= current.version) {
        throw new DfsError('OUT_OF_ORDER', `${s.id} has v${current.version} of ${args.name}; cannot apply v${args.version} on v${args.baseVersion}`, { version: current.version });
      }
      this.drop(args.name);
      const staged = await s.store.stage(args.name, args.epoch, args.version, args.mode);
      this.incoming.set(args.name, (err) => ctx.stream?.dispose(err));
      try {
        const received = await staged.writeAll(ctx.stream, ctx.body);
        if (received !== args.size) throw new DfsError('BAD_REQUEST', `announced ${args.size} bytes but ${received} arrived`);
        const header = await staged.seal({ mtime: args.mtime, token: args.token ?? 0, requestId: args.requestId ?? '', placementEpoch: args.placementEpoch });
        if (s.holdings.get(args.name)?.placementEpoch !== args.placementEpoch) throw new DfsError('STALE_EPOCH', `${args.name} was fenced while its content came in`);
        const timer = setTimeout(() => this.drop(args.name), PREPARED_TTL_MS);
        timer.unref();
        this.prepared.set(args.name, { staged, header, timer });
        crashPoint('replica:after-prepare', args.name, this.log);
        return { version: header.version, sha256: header.sha256, committed: false };
      } catch (err) {
        await staged.discard();
        throw err;
      } finally {
        this.incoming.delete(args.name);
      }
    });
  }

  async commit(args: FileArgs['rep.commit']): Promise<{ version: number }> {
    const s = this.server;
    await this.holdingFrom(args.name, args.epoch, args.from, args.placementEpoch);
    return s.mutex.run(args.name, async () => {
      await this.holdingFrom(args.name, args.epoch, args.from, args.placementEpoch);
      const copy = this.prepared.get(args.name);
      if (!copy || copy.header.version !== args.version || copy.header.epoch !== args.epoch) {
        const current = s.store.metaFor(args.name, args.epoch);
        if (current.version === args.version) return { version: current.version };
        throw new DfsError('NOT_FOUND', `${s.id} has no prepared v${args.version} of ${args.name}`);
      }
      this.prepared.delete(args.name);
      clearTimeout(copy.timer);
      await s.store.commit(copy.staged, copy.header);
      s.counters.replicaWrites++;
      crashPoint('replica:after-commit', args.name, this.log);
      return { version: copy.header.version };
    });
  }

  async remove(args: FileArgs['rep.delete']): Promise<{ deleted: boolean }> {
    const s = this.server;
    const holding = s.holdings.get(args.name);
    if (holding && holding.epoch === args.epoch && args.placementEpoch < holding.placementEpoch) {
      throw new DfsError('STALE_EPOCH', `${args.name} is at placement epoch ${holding.placementEpoch} on ${s.id}; ${args.from} sent ${args.placementEpoch}`);
    }
    if (holding && (holding.primary.id !== args.from || holding.epoch !== args.epoch) && args.placementEpoch <= holding.placementEpoch) {
      throw new DfsError('NOT_PRIMARY', `only ${args.name}'s primary ${holding.primary.id} may delete it, not ${args.from}`);
    }
    return s.mutex.run(args.name, async () => {
      this.drop(args.name);
      s.holdings.forget(args.name);
      s.suspect.delete(args.name);
      return { deleted: await s.store.remove(args.name) };
    });
  }

  /** Discards the prepared version of `name`, if any. */
  drop(name: string): void {
    const copy = this.prepared.get(name);
    if (!copy) return;
    this.prepared.delete(name);
    clearTimeout(copy.timer);
    void copy.staged.discard();
  }

  dropAll(): void {
    for (const name of [...this.prepared.keys()]) this.drop(name);
  }
}
