/**
 * Failover: when a file's primary has been silent for `failoverAfterMs`, one of the file's
 * in-sync replicas becomes its primary (docs/PROTOCOL.md, "Failover"). For each file of the
 * silent server, in one round:
 *
 *   1. Fence. Every in-sync replica (up, caught up, not marked behind) is sent `rep.fence` at the
 *      file's next placement epoch: from then on it refuses replication from the old primary,
 *      whose epoch is now older, and it answers the version it holds once nothing is under way.
 *   2. Choose the replica with the highest version (ties: the one with the fewest primaries), among
 *      those that answered. An acknowledged write is on every in-sync replica, so any of them holds
 *      it; the highest also holds a write the old primary left half-replicated, so a version a
 *      reader may have seen does not vanish.
 *   3. Record the new placement durably: the chosen replica is primary, the old primary becomes a
 *      replica, and the placement epoch grows by one (FileTable.replace, one journal append for the
 *      whole round). Writes are routed to the new primary only from here on.
 *   4. Mark behind the old primary's copy and every in-sync replica that did not answer the fence
 *      (it may still take a commit from the old primary): reads avoid them until they catch up.
 *   5. Tell the new copies' servers (`rep.placement`); one that misses it learns the placement from
 *      the next request that carries the new epoch.
 *
 * The I/O is here; the choice (`choosePrimary`) is a pure function.
 */
import { toDfsError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import { PAGE_BYTES, byteBatches, jsonBytes } from '../../shared/pages.js';
import { ConnectionPool } from '../../shared/pool.js';
import type { HoldingEntry, ServerRef, VersionsResult } from '../../shared/protocol.js';
import type { Cluster } from './cluster.js';
import type { FileEntry, FileTable } from './file-table.js';

/** How long a file server may take to answer one fence or placement batch. */
const PEER_CALL_TIMEOUT_MS = 5000;
/** Promotions logged one line each per round; the round's summary line counts them all. */
const LOGGED_PROMOTIONS = 20;
/** A fence entry is its name plus about this much JSON. */
const FENCE_ENTRY_OVERHEAD = 64;

export interface FailoverRecord {
  /** Milliseconds since the epoch when the round ended. */
  at: number;
  server: string;
  /** Files the server was primary of. */
  files: number;
  promoted: number;
  /** Files left without a primary: no in-sync replica answered. */
  stuck: number;
  ms: number;
}

export interface FailoverOptions {
  failoverAfterMs: number;
  log: Logger;
}

interface Candidate {
  id: string;
  version: number;
}

/**
 * The replica to promote: the highest version among those that answered; ties go to the server
 * with the fewest primaries, then the lower id. Null when none answered.
 */
export function choosePrimary(answers: readonly Candidate[], primariesOf: (id: string) => number): string | null {
  let best: Candidate | null = null;
  for (const a of answers) {
    if (
      best === null ||
      a.version > best.version ||
      (a.version === best.version && (primariesOf(a.id) < primariesOf(best.id) || (primariesOf(a.id) === primariesOf(best.id) && a.id < best.id)))
    ) {
      best = a;
    }
  }
  return best?.id ?? null;
}

export class Failover {
  private readonly peers: ConnectionPool;
  private running: Promise<void> | null = null;
  /** Files whose primary is being changed: file name → the primary being replaced. */
  private readonly changing = new Map<string, string>();
  private lastRecord: FailoverRecord | null = null;
  /** Servers whose last round left files stuck: retried no sooner than this. */
  private readonly retryAt = new Map<string, number>();

  constructor(
    private readonly table: FileTable,
    private readonly cluster: Cluster,
    private readonly refOf: (id: string) => ServerRef,
    private readonly options: FailoverOptions,
  ) {
    this.peers = new ConnectionPool({ retryAfterMs: 500, connectTimeoutMs: 2000, log: options.log });
  }

  /**
   * Whether `server` is a primary losing `name` right now. From the fence until the new
   * placement is durable, its `behind` marks are refused: a mark accepted then could let it
   * acknowledge a write that the replica chosen to replace it lacks.
   */
  isBeingReplaced(name: string, server: string): boolean {
    return this.changing.size > 0 && this.changing.get(name) === server;
  }

  get failoverAfterMs(): number {
    return this.options.failoverAfterMs;
  }

  get last(): FailoverRecord | null {
    return this.lastRecord;
  }

  /** Starts a round for the first down primary that is due, unless one is running. */
  tick(): void {
    if (this.running) return;
    const now = Date.now();
    const due = this.cluster
      .downMembers()
      .filter((d) => d.silentMs >= this.options.failoverAfterMs && this.table.loadOf(d.id).primaries > 0 && (this.retryAt.get(d.id) ?? 0) <= now)
      .sort((a, b) => b.silentMs - a.silentMs)[0];
    if (!due) return;
    this.running = this.promoteFrom(due.id)
      .catch((err: unknown) => {
        this.retryAt.set(due.id, Date.now() + 1000);
        this.options.log.error('failover round failed; trying again shortly', { server: due.id, error: toDfsError(err).message });
      })
      .finally(() => (this.running = null));
  }

  /** Resolves when the round under way, if any, is over. */
  async idle(): Promise<void> {
    await this.running;
  }

  close(): void {
    this.peers.closeAll();
  }

  private async promoteFrom(victim: string): Promise<void> {
    const started = Date.now();
    const files: Array<[string, FileEntry]> = [];
    for (const [name, entry] of this.table.files()) if (entry.primary === victim) files.push([name, entry]);
    for (const [name] of files) this.changing.set(name, victim);
    try {
      await this.changePrimaries(victim, files, started);
    } finally {
      for (const [name] of files) if (this.changing.get(name) === victim) this.changing.delete(name);
    }
  }

  private async changePrimaries(victim: string, files: Array<[string, FileEntry]>, started: number): Promise<void> {
    const { log } = this.options;

    // 1. Fence each file's in-sync replicas, per server, and collect their versions.
    const byServer = new Map<string, Array<[string, FileEntry]>>();
    for (const file of files) {
      for (const id of file[1].replicas) {
        if (!this.cluster.isReadable(id, file[0])) continue;
        let list = byServer.get(id);
        if (!list) byServer.set(id, (list = []));
        list.push(file);
      }
    }
    const answers = new Map<string, Candidate[]>();
    const unfenced: Array<{ name: string; id: string }> = [];
    await Promise.all(
      [...byServer].map(async ([id, held]) => {
        const url = this.refOf(id).url;
        for (const batch of byteBatches(held, ([name]) => jsonBytes(name) + FENCE_ENTRY_OVERHEAD, PAGE_BYTES, 10_000)) {
          let result: VersionsResult;
          try {
            const conn = await this.peers.get(url);
            const copies = batch.map(([name, e]) => ({ name, epoch: e.epoch, placementEpoch: e.placementEpoch + 1 }));
            result = (await conn.call('rep.fence', { copies }, { timeoutMs: PEER_CALL_TIMEOUT_MS })).result as VersionsResult;
          } catch (err) {
            log.warn('a replica did not answer the failover fence; its copies are marked behind', { server: id, files: batch.length, error: toDfsError(err).message });
            for (const [name] of batch) unfenced.push({ name, id });
            continue;
          }
          const got = new Map(result.files.map((f) => [f.name, f]));
          for (const [name, entry] of batch) {
            const f = got.get(name);
            if (!f || f.epoch !== entry.epoch) {
              unfenced.push({ name, id });
              continue;
            }
            let list = answers.get(name);
            if (!list) answers.set(name, (list = []));
            list.push({ id, version: f.version });
          }
        }
      }),
    );

    // 2. Choose, spreading the new primaries over the servers.
    const primaries = new Map<string, number>();
    const primariesOf = (id: string) => primaries.get(id) ?? this.table.loadOf(id).primaries;
    const changes: Array<{ name: string; epoch: number; placementEpoch: number; primary: ServerRef; replicas: ServerRef[] }> = [];
    const chosen = new Map<string, { to: string; version: number }>();
    for (const [name, entry] of files) {
      // A replica marked behind after the round began (by the old primary, before the fence
      // reached it) is no candidate.
      const to = choosePrimary((answers.get(name) ?? []).filter((a) => this.cluster.isReadable(a.id, name)), primariesOf);
      if (to === null) continue;
      primaries.set(to, primariesOf(to) + 1);
      const replicas = [...entry.replicas.filter((id) => id !== to), victim];
      changes.push({ name, epoch: entry.epoch, placementEpoch: entry.placementEpoch, primary: this.refOf(to), replicas: replicas.map(this.refOf) });
      chosen.set(name, { to, version: answers.get(name)!.find((a) => a.id === to)!.version });
    }

    // 3. Durably, before any write is routed to a new primary.
    const results = changes.length > 0 ? await this.table.replace(changes) : [];
    const promoted: Array<[string, FileEntry]> = [];
    results.forEach((entry, i) => {
      if (entry) promoted.push([changes[i]!.name, entry]);
    });

    // 4. Copies that may lack what the new primary has, or hold what it lacks.
    const promotedNames = new Set(promoted.map(([name]) => name));
    for (const [name] of promoted) this.cluster.markBehind(name, victim);
    for (const { name, id } of unfenced) if (promotedNames.has(name)) this.cluster.markBehind(name, id);

    // 5. Tell the servers of the new placements.
    await this.announce(promoted);

    const stuck = files.length - promoted.length;
    promoted.slice(0, LOGGED_PROMOTIONS).forEach(([name, entry]) => {
      log.info('promoted a replica to primary', { name, from: victim, to: entry.primary, placementEpoch: entry.placementEpoch, version: chosen.get(name)?.version });
    });
    const record: FailoverRecord = { at: Date.now(), server: victim, files: files.length, promoted: promoted.length, stuck, ms: Date.now() - started };
    if (promoted.length > 0 || stuck > 0) this.lastRecord = record;
    if (stuck > 0) this.retryAt.set(victim, Date.now() + 2000);
    else this.retryAt.delete(victim);
    const level = stuck > 0 ? 'warn' : 'info';
    log[level]('failover', { server: victim, silentMs: this.cluster.silentMs(victim) ?? undefined, files: files.length, promoted: promoted.length, stuck, notLogged: Math.max(0, promoted.length - LOGGED_PROMOTIONS) || undefined, ms: record.ms });
  }

  /** Sends each up server of the new placements its copies, in pages; a replica that misses it is marked behind. */
  private async announce(changed: ReadonlyArray<[string, FileEntry]>): Promise<void> {
    const byServer = new Map<string, Array<[string, FileEntry]>>();
    for (const file of changed) {
      for (const id of [file[1].primary, ...file[1].replicas]) {
        if (!this.cluster.isUp(id)) continue;
        let list = byServer.get(id);
        if (!list) byServer.set(id, (list = []));
        list.push(file);
      }
    }
    await Promise.all(
      [...byServer].map(async ([id, held]) => {
        const url = this.refOf(id).url;
        const servers: Record<string, string> = {};
        const entryOf = ([name, e]: [string, FileEntry]): HoldingEntry => ({
          name,
          epoch: e.epoch,
          placementEpoch: e.placementEpoch,
          role: e.primary === id ? 'primary' : 'replica',
          primary: e.primary,
          replicas: [...e.replicas],
        });
        for (const batch of byteBatches(held, (file) => jsonBytes(entryOf(file)), PAGE_BYTES - 4096, 10_000)) {
          for (const [, e] of batch) for (const sid of [e.primary, ...e.replicas]) servers[sid] ??= this.refOf(sid).url;
          try {
            const conn = await this.peers.get(url);
            await conn.call('rep.placement', { copies: batch.map(entryOf), servers }, { timeoutMs: PEER_CALL_TIMEOUT_MS });
          } catch (err) {
            const error = toDfsError(err);
            this.options.log.info('a server missed a placement change; it learns it from its next request', { server: id, files: batch.length, error: error.message });
            for (const [name, e] of batch) if (e.primary !== id) this.cluster.markBehind(name, id);
          }
        }
      }),
    );
  }
}

