/**
 * A replica's side of replication: `rep.write` stages (and fdatasyncs) the next version and
 * answers "prepared"; `rep.commit` makes it current; `rep.delete` drops the file. A replica
 * accepts these only from the file's primary and only in version order, so it never holds a
 * version its primary has not committed. A prepared version not committed within a minute is
 * dropped, and one whose stream stops delivering is aborted: neither holds the file for ever.
 */
import { crashPoint } from '../../shared/crash-points.js';
import { DfsError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import type { FileArgs, Holding, PreparedResult } from '../../shared/protocol.js';
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

export class ReplicaCopies {
  private readonly prepared = new Map<string, PreparedCopy>();

  constructor(
    private readonly server: FileServer,
    private readonly log: Logger,
  ) {}

  private async holdingFrom(name: string, epoch: number, from: string): Promise<Holding> {
    const s = this.server;
    const holding = await s.holdings.lookup(name, epoch);
    if (holding.role !== 'replica') throw new DfsError('BAD_REQUEST', `${s.id} is not a replica of ${name}`);
    if (holding.primary.id !== from) throw new DfsError('NOT_PRIMARY', `only ${name}'s primary ${holding.primary.id} may replicate it, not ${from}`);
    return holding;
  }

  async write(args: FileArgs['rep.write'], ctx: CallContext): Promise<PreparedResult> {
    const s = this.server;
    watchProgress(ctx.stream, s.stallTimeoutMs);
    await this.holdingFrom(args.name, args.epoch, args.from);
    return s.mutex.run(args.name, async () => {
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
      try {
        const received = await staged.writeAll(ctx.stream, ctx.body);
        if (received !== args.size) throw new DfsError('BAD_REQUEST', `announced ${args.size} bytes but ${received} arrived`);
        const header = await staged.seal({ mtime: args.mtime, token: 0, requestId: '' });
        const timer = setTimeout(() => this.drop(args.name), PREPARED_TTL_MS);
        timer.unref();
        this.prepared.set(args.name, { staged, header, timer });
        crashPoint('replica:after-prepare', args.name, this.log);
        return { version: header.version, sha256: header.sha256, committed: false };
      } catch (err) {
        await staged.discard();
        throw err;
      }
    });
  }

  async commit(args: FileArgs['rep.commit']): Promise<{ version: number }> {
    const s = this.server;
    await this.holdingFrom(args.name, args.epoch, args.from);
    return s.mutex.run(args.name, async () => {
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
    if (holding && (holding.primary.id !== args.from || holding.epoch !== args.epoch)) {
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
