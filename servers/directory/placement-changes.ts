/**
 * Changing where files live: the one place the directory changes a file's placement after its
 * creation, for failover (failover.ts), re-replication (rereplication.ts) and rebalancing
 * (rebalance.ts). One change runs at a time (`exclusive`), and each bumps the file's placement
 * epoch in the table, durably, before anyone sees it (docs/PROTOCOL.md, "Failover" and
 * "Re-replication").
 *
 * Two kinds of change:
 * - **A new primary** (`handOver`): fence the file's in-sync replicas at the next placement epoch
 *   (`rep.fence`: they refuse the old primary from then on and answer the version they hold), pick
 *   the highest version, journal, mark behind the old primary and every replica that missed the
 *   fence, announce.
 * - **Other copies** (`moveCopies`): the primary stays; replicas are added, replaced or dropped.
 *   A new copy is marked behind before the change is visible, so no read reaches it before its
 *   server has copied the file from the primary; the primary learns the new set from the
 *   announcement or, at the latest, from the new copy's first fetch (which makes it refresh and
 *   finish the writes under way first).
 */
import { toDfsError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import { PAGE_BYTES, byteBatches, jsonBytes } from '../../shared/pages.js';
import type { Transport } from '../../shared/tls/transport.js';
import { ConnectionPool } from '../../shared/pool.js';
import type { HoldingEntry, ServerRef, VersionsResult } from '../../shared/protocol.js';
import type { Cluster } from './cluster.js';
import type { FileEntry, FileTable, PlacementChange } from './file-table.js';
import type { MarkedCopy } from './mark-store.js';

/** How long a file server may take to answer one fence or placement batch. */
const PEER_CALL_TIMEOUT_MS = 5000;
/** A fence entry is its name plus about this much JSON. */
const FENCE_ENTRY_OVERHEAD = 64;

export type NamedEntry = [name: string, entry: FileEntry];

export interface Candidate {
  id: string;
  version: number;
  sha256?: string;
}

/**
 * The replica to promote: the highest version among those that answered (an acknowledged write
 * is on every in-sync replica; the highest also keeps a write left half-replicated, so a version
 * a reader may have seen does not vanish); ties go to `preferred`, then to the server with the
 * fewest primaries, then the lower id. Null when none answered.
 */
export function choosePrimary(answers: readonly Candidate[], primariesOf: (id: string) => number, preferred?: string): string | null {
  const rank = (a: Candidate) => [a.version, a.id === preferred ? 1 : 0, -primariesOf(a.id)] as const;
  let best: Candidate | null = null;
  for (const a of answers) {
    if (best === null) {
      best = a;
      continue;
    }
    const [x, y] = [rank(a), rank(best)];
    if (x[0] !== y[0] ? x[0] > y[0] : x[1] !== y[1] ? x[1] > y[1] : x[2] !== y[2] ? x[2] > y[2] : a.id < best.id) best = a;
  }
  return best?.id ?? null;
}

export interface HandOverResult {
  /** The files that got a new primary, with their new entries. */
  moved: NamedEntry[];
  /** Files for which no in-sync replica answered: they keep their primary. */
  stuck: number;
  /** The version each new primary held, by file. */
  versions: Map<string, number>;
}

export class PlacementChanges {
  private readonly peers: ConnectionPool;
  private queue: Promise<unknown> = Promise.resolve();
  private pending = 0;
  /** Files whose primary is being changed: file name → the primary being replaced. */
  private readonly changing = new Map<string, string>();

  constructor(
    private readonly table: FileTable,
    private readonly cluster: Cluster,
    private readonly refOf: (id: string) => ServerRef,
    /** Marks copies behind, durably (the cluster's marks and the mark store). */
    private readonly markBehind: (copies: readonly MarkedCopy[]) => Promise<void>,
    /** Forgets the marks of copies that left their file. */
    private readonly forgetMarks: (copies: readonly MarkedCopy[]) => void,
    private readonly log: Logger,
    transport: Transport,
  ) {
    this.peers = new ConnectionPool({ transport, retryAfterMs: 500, connectTimeoutMs: 2000, log });
  }

  /** Whether a change is running or waiting. */
  get busy(): boolean {
    return this.pending > 0;
  }

  /** Runs fn after every change already queued (one at a time, so two never race on a file). */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    this.pending++;
    const run = this.queue.then(fn).finally(() => this.pending--);
    this.queue = run.catch(() => {});
    return run;
  }

  /**
   * Whether `server` is a primary losing `name` right now. From the fence until the new
   * placement is durable, its `behind` marks are refused: a mark accepted then could let it
   * acknowledge a write that the replica chosen to replace it lacks.
   */
  isBeingReplaced(name: string, server: string): boolean {
    return this.changing.size > 0 && this.changing.get(name) === server;
  }

  close(): void {
    this.peers.closeAll();
  }

  /**
   * Gives each file (all with primary `from`) a new primary among its in-sync replicas, `from`
   * becoming a replica. `preferred` names the replica to choose when versions tie (rebalancing);
   * when `from` is up (a drain or a rebalance), it is fenced too, so that it stops taking writes
   * at once. Call it inside `exclusive`.
   */
  async handOver(from: string, files: readonly NamedEntry[], preferred?: ReadonlyMap<string, string>): Promise<HandOverResult> {
    for (const [name] of files) this.changing.set(name, from);
    try {
      return await this.changePrimaries(from, files, preferred);
    } finally {
      for (const [name] of files) if (this.changing.get(name) === from) this.changing.delete(name);
    }
  }

  private async changePrimaries(from: string, files: readonly NamedEntry[], preferred?: ReadonlyMap<string, string>): Promise<HandOverResult> {
    // 1. Fence each file's in-sync replicas, per server, and collect their versions.
    const byServer = new Map<string, NamedEntry[]>();
    for (const file of files) for (const id of file[1].replicas) if (this.cluster.isReadable(id, file[0])) push(byServer, id, file);
    if (this.cluster.isUp(from)) {
      // Not waited for: the old primary's answer is not needed, only that it stops soon.
      void this.fence(from, files).catch(() => {});
    }
    const answers = new Map<string, Candidate[]>();
    await Promise.all(
      [...byServer].map(async ([id, held]) => {
        for await (const { batch, result } of this.fenceBatches(id, held)) {
          const got = new Map((result?.files ?? []).map((f) => [f.name, f]));
          for (const [name, entry] of batch) {
            const f = got.get(name);
            // No answer for a copy: it is no candidate, and is marked behind if the file moves.
            if (f && f.epoch === entry.epoch) push(answers, name, { id, version: f.version, sha256: f.sha256 });
          }
        }
      }),
    );

    // 2. Choose, spreading the new primaries over the servers.
    const primaries = new Map<string, number>();
    const primariesOf = (id: string) => primaries.get(id) ?? this.table.loadOf(id).primaries;
    const changes: PlacementChange[] = [];
    const versions = new Map<string, number>();
    const stale: MarkedCopy[] = [];
    for (const [name, entry] of files) {
      // A replica marked behind after the round began (by the old primary, before the fence
      // reached it) is no candidate.
      const answered = (answers.get(name) ?? []).filter((a) => this.cluster.isReadable(a.id, name));
      const to = choosePrimary(answered, primariesOf, preferred?.get(name));
      if (to === null) continue;
      primaries.set(to, primariesOf(to) + 1);
      const replicas = [...entry.replicas.filter((id) => id !== to), from];
      changes.push({ name, epoch: entry.epoch, placementEpoch: entry.placementEpoch, primary: this.refOf(to), replicas: replicas.map(this.refOf) });
      const mine = answered.find((a) => a.id === to)!;
      versions.set(name, mine.version);
      // 3. Copies that may lack what the new primary has, or hold what it lacks: every copy but
      // those that answered the fence with the new primary's very version (a replica one version
      // behind, left so by a primary that died between its replicas' commits, would otherwise
      // serve the older version again after readers saw the newer one). Marked, durably, before
      // the new placement exists, so no crash can leave one readable without its mark.
      const same = new Set((answers.get(name) ?? []).filter((a) => a.version === mine.version && a.sha256 === mine.sha256).map((a) => a.id));
      for (const id of replicas) if (!same.has(id)) stale.push({ server: id, name });
    }
    await this.markBehind(stale);

    // 4. Durably, before any write is routed to a new primary.
    const moved = await this.record(changes);

    // 5. Tell the servers.
    await this.announce(moved, []);
    return { moved, stuck: files.length - moved.length, versions };
  }

  /**
   * Gives files new replica sets, their primaries unchanged: `changes[i]` lists the replicas of
   * `files[i]` from now on. Copies on servers that did not hold the file are marked behind
   * first; servers dropped from a file are told so. Call it inside `exclusive`. Returns the files
   * changed (a file changed meanwhile is skipped).
   */
  async moveCopies(files: readonly NamedEntry[], replicas: ReadonlyArray<readonly string[]>): Promise<{ moved: NamedEntry[]; added: Array<{ name: string; id: string }> }> {
    const added: Array<{ name: string; id: string }> = [];
    const dropped: Array<{ name: string; id: string }> = [];
    const changes: PlacementChange[] = files.map(([name, entry], i) => {
      const next = replicas[i]!;
      for (const id of next) if (id !== entry.primary && !entry.replicas.includes(id)) added.push({ name, id });
      for (const id of entry.replicas) if (!next.includes(id)) dropped.push({ name, id });
      return { name, epoch: entry.epoch, placementEpoch: entry.placementEpoch, primary: this.refOf(entry.primary), replicas: next.map(this.refOf) };
    });
    // Durably, before the change is visible: a new copy has nothing until its server copies it.
    await this.markBehind(added.map(({ name, id }) => ({ server: id, name })));
    const moved = await this.record(changes);
    const movedNames = new Set(moved.map(([name]) => name));
    const gone = dropped.filter((d) => movedNames.has(d.name));
    this.forgetMarks(gone.map(({ name, id }) => ({ server: id, name })));
    await this.announce(moved, gone);
    return { moved, added: added.filter((a) => movedNames.has(a.name)) };
  }

  private async record(changes: readonly PlacementChange[]): Promise<NamedEntry[]> {
    const results = changes.length > 0 ? await this.table.replace(changes) : [];
    const done: NamedEntry[] = [];
    results.forEach((entry, i) => {
      if (entry) done.push([changes[i]!.name, entry]);
    });
    return done;
  }

  private async fence(id: string, files: readonly NamedEntry[]): Promise<void> {
    for await (const _ of this.fenceBatches(id, files)) {
      // Answers of the old primary are not used.
    }
  }

  /** `rep.fence` to server `id` for `files`, in frame-sized batches; `result` is null when a batch failed. */
  private async *fenceBatches(id: string, files: readonly NamedEntry[]): AsyncGenerator<{ batch: NamedEntry[]; result: VersionsResult | null }> {
    const url = this.refOf(id).url;
    for (const batch of byteBatches(files, ([name]) => jsonBytes(name) + FENCE_ENTRY_OVERHEAD, PAGE_BYTES, 10_000)) {
      try {
        const conn = await this.peers.get(url, { role: 'file-server', id });
        const copies = batch.map(([name, e]) => ({ name, epoch: e.epoch, placementEpoch: e.placementEpoch + 1 }));
        yield { batch, result: (await conn.call('rep.fence', { copies }, { timeoutMs: PEER_CALL_TIMEOUT_MS })).result as VersionsResult };
      } catch (err) {
        this.log.warn('a file server did not answer a fence; its copies are marked behind', { server: id, files: batch.length, error: toDfsError(err).message });
        yield { batch, result: null };
      }
    }
  }

  /**
   * Sends each up server of the new placements its copies (and each server dropped from a file
   * the placement without it), in pages. A replica that misses it is marked behind; a primary
   * learns it from the next request that carries the new epoch.
   */
  private async announce(changed: readonly NamedEntry[], dropped: ReadonlyArray<{ name: string; id: string }>): Promise<void> {
    const byServer = new Map<string, NamedEntry[]>();
    for (const file of changed) for (const id of [file[1].primary, ...file[1].replicas]) if (this.cluster.isUp(id)) push(byServer, id, file);
    const byName = new Map(changed);
    for (const { name, id } of dropped) if (this.cluster.isUp(id)) push(byServer, id, [name, byName.get(name)!]);
    await Promise.all(
      [...byServer].map(async ([id, held]) => {
        const url = this.refOf(id).url;
        const servers: Record<string, string> = {};
        const entryOf = ([name, e]: NamedEntry): HoldingEntry => ({
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
            const conn = await this.peers.get(url, { role: 'file-server', id });
            await conn.call('rep.placement', { copies: batch.map(entryOf), servers, markSeq: this.cluster.currentMarkSeq, boot: this.cluster.boot }, { timeoutMs: PEER_CALL_TIMEOUT_MS });
          } catch (err) {
            this.log.info('a server missed a placement change; it learns it from its next request', { server: id, files: batch.length, error: toDfsError(err).message });
            await this.markBehind(batch.filter(([, e]) => e.replicas.includes(id)).map(([name]) => ({ server: id, name })));
          }
        }
      }),
    );
  }
}

function push<K, V>(map: Map<K, V[]>, key: K, value: V): void {
  const list = map.get(key);
  if (list) list.push(value);
  else map.set(key, [value]);
}
