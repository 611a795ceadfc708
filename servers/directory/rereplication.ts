/**
 * Re-replication: every file keeps R copies on live servers (docs/PROTOCOL.md,
 * "Re-replication"). Two triggers:
 *
 * - a server silent for `replaceAfterMs` (a few minutes by default): each of its replica copies
 *   is replaced by a new copy on the least-loaded live server that does not hold the file (its
 *   primary copies have gone to other servers by failover first);
 * - a server an operator drains (`dfs server drain ID`): its primaries are handed to in-sync
 *   replicas, then each of its replica copies gets a new copy elsewhere *before* it is dropped, so
 *   the file never has fewer in-sync copies than before; once it holds nothing it can be removed.
 *
 * A new copy is marked behind until its server has copied the file from the primary (checked by
 * sha256, at the file server's bounded copy rate), so reads never reach it early. Rounds are
 * bounded (files per round, copies still being made), so a server holding 100,000 files is
 * re-replicated a slice at a time while foreground traffic goes on.
 */
import { toDfsError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import type { RereplicationStatus } from '../../shared/protocol.js';
import { compareIds, type Cluster } from './cluster.js';
import type { Draining } from './draining.js';
import type { FileTable } from './file-table.js';
import type { NamedEntry, PlacementChanges } from './placement-changes.js';

export const DEFAULT_REPLACE_AFTER_MS = 5 * 60_000;
/** Files changed in one round. */
const FILES_PER_ROUND = 2000;
/** No new round while this many new copies are still being made. */
const MAX_COPIES_IN_FLIGHT = 4000;
/** Copies logged one line each per round; the round's summary line counts them all. */
const LOGGED_COPIES = 20;

export interface RereplicationOptions {
  replaceAfterMs: number;
  log: Logger;
}

/** The server for a new copy: the one with the fewest files among `candidates` not in `holders`; null if none. */
export function pickTarget(holders: readonly string[], candidates: readonly string[], filesOf: (id: string) => number): string | null {
  let best: string | null = null;
  for (const id of candidates) {
    if (holders.includes(id)) continue;
    if (best === null || filesOf(id) < filesOf(best) || (filesOf(id) === filesOf(best) && compareIds(id, best) < 0)) best = id;
  }
  return best;
}

export class Rereplication {
  /** New copies being made: server → names. */
  private readonly copying = new Map<string, Set<string>>();
  private copied = 0;
  private lastRound: RereplicationStatus['lastRound'] = null;
  /** Servers whose last round could not move anything: not tried again before this. */
  private readonly retryAt = new Map<string, number>();

  constructor(
    private readonly table: FileTable,
    private readonly cluster: Cluster,
    private readonly changes: PlacementChanges,
    private readonly draining: Draining,
    private readonly options: RereplicationOptions,
  ) {}

  get replaceAfterMs(): number {
    return this.options.replaceAfterMs;
  }

  status(): RereplicationStatus {
    this.prune();
    let inFlight = 0;
    for (const names of this.copying.values()) inFlight += names.size;
    return { copying: inFlight, copied: this.copied, replaceAfterMs: this.options.replaceAfterMs, lastRound: this.lastRound };
  }

  /** Starts a round for one server that is due, if nothing else is changing placements. */
  tick(): void {
    if (this.changes.busy) return;
    if (this.status().copying >= MAX_COPIES_IN_FLIGHT) return;
    const victim = this.due();
    if (!victim) return;
    void this.changes
      .exclusive(() => this.round(victim.id, victim.kind))
      .catch((err: unknown) => {
        this.retryAt.set(victim.id, Date.now() + 5000);
        this.options.log.error('re-replication round failed; trying again shortly', { server: victim.id, error: toDfsError(err).message });
      });
  }

  /** A drained server first; then the server silent longest past the replace time. */
  private due(): { id: string; kind: 'dead' | 'draining' } | null {
    const now = Date.now();
    const ready = (id: string) => (this.retryAt.get(id) ?? 0) <= now && this.table.loadOf(id).files > 0;
    for (const id of this.draining.list()) if (ready(id)) return { id, kind: 'draining' };
    let best: { id: string; silent: number } | null = null;
    for (const id of this.table.serverIds()) {
      const silent = this.cluster.silence(id);
      if (silent >= this.options.replaceAfterMs && ready(id) && (best === null || silent > best.silent)) best = { id, silent };
    }
    return best ? { id: best.id, kind: 'dead' } : null;
  }

  /** Live servers that may take new copies: up, caught up, not draining. */
  private targets(): string[] {
    return this.cluster.readyMembers().filter((id) => !this.draining.has(id));
  }

  private async round(victim: string, kind: 'dead' | 'draining'): Promise<void> {
    const { log } = this.options;
    const started = Date.now();
    const replication = this.cluster.replication;
    if (kind === 'draining' && this.table.loadOf(victim).primaries > 0 && this.cluster.isUp(victim)) {
      // Its primaries go to in-sync replicas first, as in a failover but with the server up.
      const files: NamedEntry[] = [];
      for (const [name, entry] of this.table.files()) if (entry.primary === victim && files.length < FILES_PER_ROUND) files.push([name, entry]);
      const { moved, stuck } = await this.changes.handOver(victim, files);
      log.info('drain: handed primaries to in-sync replicas', { server: victim, files: files.length, moved: moved.length, stuck });
      if (moved.length > 0) return;
      // None could be handed over (no in-sync replica): those files get a new copy first, below.
    }
    const targets = this.targets();
    const filesOf = new Map<string, number>();
    const load = (id: string) => filesOf.get(id) ?? this.table.loadOf(id).files;
    const files: NamedEntry[] = [];
    const next: string[][] = [];
    let noTarget = 0;
    let waiting = 0;
    /** Gives the file a new copy on the least-loaded server without one; `replicasWith` says where it goes. */
    const addCopy = (file: NamedEntry, replicasWith: (target: string) => string[]): void => {
      const target = pickTarget([file[1].primary, ...file[1].replicas], targets, load);
      if (target === null) {
        noTarget++;
        return;
      }
      filesOf.set(target, load(target) + 1);
      files.push(file);
      next.push(replicasWith(target));
    };
    for (const [name, entry] of this.table.files()) {
      if (files.length >= FILES_PER_ROUND) break;
      const holders = [entry.primary, ...entry.replicas];
      if (kind === 'draining' && entry.primary === victim) {
        // A primary with no in-sync replica to take it: a new copy first (once it is in sync,
        // the next round hands the primary to it). One being made already: wait for it.
        if (entry.replicas.some((id) => this.cluster.isReadable(id, name))) continue;
        if (entry.replicas.some((id) => this.cluster.isUp(id) && !this.draining.has(id))) {
          waiting++;
          continue;
        }
        addCopy([name, entry], (target) => [...entry.replicas, target]);
        continue;
      }
      if (!entry.replicas.includes(victim)) continue;
      const others = holders.filter((id) => id !== victim);
      if (kind === 'draining' && others.length >= Math.min(replication, holders.length)) {
        // Enough copies without it: dropped once those are all in sync.
        if (others.every((id) => (id === entry.primary ? this.cluster.isUp(id) : this.cluster.isReadable(id, name)))) {
          files.push([name, entry]);
          next.push(entry.replicas.filter((id) => id !== victim));
        } else waiting++;
        continue;
      }
      addCopy([name, entry], (target) => (kind === 'dead' ? entry.replicas.map((id) => (id === victim ? target : id)) : [...entry.replicas, target]));
    }
    const reason = kind === 'dead' ? 'down' : 'drained';
    if (files.length === 0) {
      this.retryAt.set(victim, Date.now() + (waiting > 0 ? 1000 : 10_000));
      if (noTarget > 0) {
        this.lastRound = { at: Date.now(), server: victim, reason, newCopies: 0, dropped: 0, noTarget };
        log.warn('re-replication: no live server can take a new copy', { server: victim, files: noTarget, liveServers: targets.length });
      }
      return;
    }
    const { moved, added } = await this.changes.moveCopies(files, next);
    for (const { name, id } of added) {
      let names = this.copying.get(id);
      if (!names) this.copying.set(id, (names = new Set()));
      names.add(name);
    }
    added.slice(0, LOGGED_COPIES).forEach(({ name, id }) => log.info('re-replicating a copy', { name, from: victim, to: id }));
    this.lastRound = { at: Date.now(), server: victim, reason, newCopies: added.length, dropped: moved.length - added.length, noTarget };
    log.info('re-replication', {
      server: victim,
      reason,
      files: moved.length,
      newCopies: added.length,
      dropped: this.lastRound.dropped || undefined,
      noTarget: noTarget || undefined,
      waiting: waiting || undefined,
      notLogged: Math.max(0, added.length - LOGGED_COPIES) || undefined,
      ms: Date.now() - started,
    });
  }

  /** Forgets new copies that have been made (no longer behind) or whose file moved on. */
  private prune(): void {
    for (const [id, names] of this.copying) {
      for (const name of names) {
        const entry = this.table.get(name);
        if (!entry || !entry.replicas.includes(id)) names.delete(name);
        else if (!this.cluster.isBehind(id, name) && this.cluster.isUp(id)) {
          names.delete(name);
          this.copied++;
        }
      }
      if (names.size === 0) this.copying.delete(id);
    }
  }
}
