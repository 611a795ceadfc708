/**
 * Failover: when a file's primary has been silent for `failoverAfterMs`, one of the file's
 * in-sync replicas becomes its primary (docs/PROTOCOL.md, "Failover"): every file of that server
 * in one round of PlacementChanges.handOver (fence, choose the highest version, journal, mark,
 * announce). Files no in-sync replica can take are left with their primary and tried again.
 */
import { toDfsError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import type { FailoverSummary } from '../../shared/protocol.js';
import type { Cluster } from './cluster.js';
import type { FileTable } from './file-table.js';
import type { NamedEntry, PlacementChanges } from './placement-changes.js';

export { choosePrimary } from './placement-changes.js';

/** Promotions logged one line each per round; the round's summary line counts them all. */
const LOGGED_PROMOTIONS = 20;
/** A round that left files stuck is tried again after this. */
const STUCK_RETRY_MS = 2000;
/**
 * A server not heard from since this directory started is given this much longer than the
 * failover time: at a cluster's start, a server with many files takes seconds to load them
 * before it registers, and its files should not change primary for that.
 */
export const STARTUP_GRACE_MS = 10_000;

export type FailoverRecord = FailoverSummary;

export interface FailoverOptions {
  failoverAfterMs: number;
  log: Logger;
}

export class Failover {
  private lastRecord: FailoverRecord | null = null;
  /** Servers whose last round failed or left files stuck: retried no sooner than this. */
  private readonly retryAt = new Map<string, number>();

  constructor(
    private readonly table: FileTable,
    private readonly cluster: Cluster,
    private readonly changes: PlacementChanges,
    private readonly options: FailoverOptions,
  ) {}

  get failoverAfterMs(): number {
    return this.options.failoverAfterMs;
  }

  get last(): FailoverRecord | null {
    return this.lastRecord;
  }

  /**
   * Starts a round for the down primary that has been silent longest, if one is due. A server
   * the table names that has not registered since this directory started counts as silent since
   * the start, less STARTUP_GRACE_MS.
   */
  tick(): void {
    if (this.changes.busy) return;
    const now = Date.now();
    const silent = [...this.table.serverIds()].map((id) => ({ id, silentMs: this.cluster.silence(id) - (this.cluster.isRegistered(id) ? 0 : STARTUP_GRACE_MS) }));
    const due = silent
      .filter((d) => d.silentMs >= this.options.failoverAfterMs && this.table.loadOf(d.id).primaries > 0 && (this.retryAt.get(d.id) ?? 0) <= now)
      .sort((a, b) => b.silentMs - a.silentMs)[0];
    if (!due) return;
    void this.changes
      .exclusive(() => this.promoteFrom(due.id))
      .catch((err: unknown) => {
        this.retryAt.set(due.id, Date.now() + 1000);
        this.options.log.error('failover round failed; trying again shortly', { server: due.id, error: toDfsError(err).message });
      });
  }

  private async promoteFrom(victim: string): Promise<void> {
    if (this.cluster.isUp(victim)) return; // back meanwhile
    const { log } = this.options;
    const started = Date.now();
    const files: NamedEntry[] = [];
    for (const [name, entry] of this.table.files()) if (entry.primary === victim) files.push([name, entry]);
    const { moved, stuck, versions } = await this.changes.handOver(victim, files);
    moved.slice(0, LOGGED_PROMOTIONS).forEach(([name, entry]) => {
      log.info('promoted a replica to primary', { name, from: victim, to: entry.primary, placementEpoch: entry.placementEpoch, version: versions.get(name) });
    });
    const record: FailoverRecord = { at: Date.now(), server: victim, files: files.length, promoted: moved.length, stuck, ms: Date.now() - started };
    if (moved.length > 0 || stuck > 0) this.lastRecord = record;
    if (stuck > 0) this.retryAt.set(victim, Date.now() + STUCK_RETRY_MS);
    else this.retryAt.delete(victim);
    log[stuck > 0 ? 'warn' : 'info']('failover', {
      server: victim,
      silentMs: this.cluster.silentMs(victim) ?? undefined,
      files: files.length,
      promoted: moved.length,
      stuck,
      notLogged: Math.max(0, moved.length - LOGGED_PROMOTIONS) || undefined,
      ms: record.ms,
    });
  }
}
