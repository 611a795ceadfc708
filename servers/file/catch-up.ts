/**
 * Catch-up: how a file server that starts, comes back, or missed writes becomes current again
 * before the directory sends it reads.
 *
 * Full catch-up, after every registration:
 *   - move local files the directory no longer assigns here (deleted meanwhile, created again
 *     under a new epoch, or set aside from a damaged table) to orphaned/, kept for a week;
 *   - for each file held as primary, ask its replicas for their versions and report the ones
 *     that differ as behind (they missed a version this primary committed just before a crash);
 *     this comes first, since until a primary copy is reconciled this server refuses writes to it;
 *   - for each file held as a replica, ask its primary for its version and fetch the content
 *     when ours differs;
 *   - mark behind the copies that could not be caught up (their primary is down), then tell the
 *     directory `synced`: those stay out of reads.
 * Partial catch-up handles one page of the names a heartbeat reports as behind, and answers
 * `caughtUp` for the ones it fixed.
 *
 * Every list sent goes in batches sized by bytes (shared/pages.ts), so catch-up works the same
 * with 100,000 files as with ten.
 */
import { eachLimited } from '../../shared/concurrency.js';
import { DfsError, toDfsError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import { PAGE_BYTES, byteBatches, jsonBytes } from '../../shared/pages.js';
import type { Holding, VersionsResult } from '../../shared/protocol.js';
import type { RpcConnection } from '../../shared/rpc.js';
import { copyFrom } from './copy-from.js';
import type { FileServer } from './service.js';

/** A primary that could not be reached is not tried again by partial catch-ups for this long. */
const UNREACHABLE_BACKOFF_MS = 5000;
/** Fetches of missed content running at once per primary. */
const FETCH_CONCURRENCY = 8;
/** A `versions` answer entry is its name plus about this much (epoch, version, sha256, JSON). */
const VERSION_ENTRY_OVERHEAD = 128;

type RemoteVersion = VersionsResult['files'][number];

function groupBy<T>(items: Iterable<T>, key: (item: T) => string): Map<string, T[]> {
  const groups = new Map<string, T[]>();
  for (const item of items) {
    const k = key(item);
    const group = groups.get(k);
    if (group) group.push(item);
    else groups.set(k, [item]);
  }
  return groups;
}

/** Batches of names whose `versions` answer fits in one frame. */
function versionBatches<T>(items: T[], nameOf: (item: T) => string): Iterable<T[]> {
  return byteBatches(items, (item) => jsonBytes(nameOf(item)) + VERSION_ENTRY_OVERHEAD, PAGE_BYTES, 10_000);
}

/** The versions a peer holds of the named files, by name. */
async function askVersions(conn: RpcConnection, names: string[]): Promise<Map<string, RemoteVersion>> {
  const { files } = (await conn.call('versions', { names })).result as VersionsResult;
  return new Map(files.map((f) => [f.name, f]));
}

export class CatchUp {
  running = false;
  private partialRunning = false;
  private rerun: { markSeq: number; boot: string } | null = null;
  /** Primaries that could not be reached, by URL → until when partial catch-ups do not try them again. */
  private readonly unreachableUntil = new Map<string, number>();
  /** During a full catch-up, the replica copies checked so far. */
  private readonly checked = new Set<string>();
  /** During a full catch-up, the primary copies whose replicas have been reconciled. */
  private readonly reconciled = new Set<string>();

  constructor(
    private readonly server: FileServer,
    private readonly log: Logger,
  ) {}

  /** Whether a replica copy may serve reads as far as catch-up is concerned. */
  mayServe(name: string): boolean {
    return !this.running || this.checked.has(name);
  }

  /** Whether a primary copy's replicas are known to agree with it (or are marked behind). */
  isReconciled(name: string): boolean {
    return !this.running || this.reconciled.has(name);
  }

  /** Runs a full catch-up; resolves when the directory has been told `synced`. */
  async full(markSeq: number, boot: string): Promise<void> {
    if (this.running) {
      // A registration since this one began (the directory restarted, say): run again for it
      // once this one ends, so its `synced` is the one that counts.
      this.rerun = { markSeq, boot };
      return;
    }
    this.running = true;
    this.checked.clear();
    this.reconciled.clear();
    const started = Date.now();
    try {
      const holdings = await this.server.fetchHoldings();
      this.server.holdings.replaceAll(holdings);
      const byName = new Map(holdings.map((h) => [h.name, h]));
      const replicaCopies = holdings.filter((h) => h.role === 'replica');
      for (const h of replicaCopies) this.server.suspect.add(h.name);
      let dropped = 0;
      for (const name of [...this.server.store.names()]) {
        const stored = this.server.store.get(name);
        const held = byName.get(name);
        if (stored && (!held || held.epoch !== stored.epoch)) {
          // The snapshot may be older than a create or write that reached this server since
          // (a page served before it): ask the directory again, under the file's turn.
          const orphaned = await this.server.mutex.run(name, async () => {
            const now = this.server.store.get(name);
            if (!now) return false;
            const current = await this.server.holdings.lookup(name, now.epoch).catch((err: unknown) => {
              if (err instanceof DfsError && err.code === 'NOT_FOUND') return null;
              throw err;
            });
            return current === null ? this.server.store.orphan(name) : false;
          });
          if (orphaned) dropped++;
        }
      }
      if (dropped > 0) this.log.info('moved copies the directory no longer assigns here to orphaned/', { copies: dropped });
      const primaries = holdings.filter((h) => h.role === 'primary');
      // A fresh data folder lost its primary copies: each is recovered from its replicas (as a
      // damaged one is) before it is read or written, never taken as the newest.
      if (this.server.isFresh) for (const h of primaries) this.server.store.markUnrecovered(h.name);
      const reported = await this.verifyReplicas(primaries);
      const { fetched, behind, unverified } = await this.pull(replicaCopies);
      await this.server.reportBehindMany(this.server.id, behind);
      await this.server.keepMarks(unverified);
      // Whether they may be read is the directory's call now: it reads no copy it has marked.
      for (const name of unverified) this.server.suspect.delete(name);
      const conn = await this.server.directory();
      await conn.call('synced', { id: this.server.id, upTo: markSeq, boot });
      await this.server.noteCaughtUp();
      this.log.info('caught up', { files: holdings.length, fetched, dropped, behind: behind.length, unverified: unverified.length || undefined, replicasBehind: reported, ms: Date.now() - started });
    } catch (err) {
      this.log.warn('catch-up failed; will retry', { error: toDfsError(err).message });
      throw err;
    } finally {
      this.running = false;
      this.checked.clear();
      this.reconciled.clear();
      const next = this.rerun;
      this.rerun = null;
      if (next) void this.full(next.markSeq, next.boot).catch(() => {});
    }
  }

  /**
   * Catches up the named copies (a heartbeat said they missed writes). Resolves true when it
   * ran (false when another catch-up was already running).
   */
  async some(names: string[], markSeq: number, boot: string): Promise<boolean> {
    if (this.running || this.partialRunning) return false;
    this.partialRunning = true;
    try {
      const holdings: Holding[] = [];
      const gone: string[] = [];
      for (const name of names) {
        this.server.suspect.add(name);
        this.server.holdings.forget(name);
        try {
          holdings.push(await this.server.holdings.lookup(name));
        } catch (err) {
          if (!(err instanceof DfsError && err.code === 'NOT_FOUND')) throw err;
          this.server.suspect.delete(name); // deleted meanwhile: nothing to catch up
          gone.push(name);
        }
      }
      const replicas = holdings.filter((h) => h.role === 'replica');
      for (const h of holdings) if (h.role === 'primary') this.server.suspect.delete(h.name);
      const { fetched, behind, unverified } = await this.pull(replicas, { backOff: true });
      const stillBehind = new Set([...behind, ...unverified]);
      const done = names.filter((name) => !stillBehind.has(name));
      await this.server.reportBehindMany(this.server.id, behind);
      const conn = await this.server.directory();
      for (const batch of byteBatches(done, jsonBytes, PAGE_BYTES, 10_000)) await conn.call('caughtUp', { id: this.server.id, upTo: markSeq, boot, names: batch });
      // Every heartbeat brings back copies whose primary is away: only progress is worth a line.
      this.log[fetched > 0 || done.length > 0 ? 'info' : 'debug']('caught up behind copies', { files: names.length, fetched, behind: behind.length, unverified: unverified.length || undefined, gone: gone.length || undefined });
      return true;
    } catch (err) {
      this.log.warn('partial catch-up failed; will retry', { error: toDfsError(err).message });
      return true;
    } finally {
      this.partialRunning = false;
    }
  }

  /**
   * Brings replica copies up to their primaries' versions. Returns those it could not: `behind`
   * (they differ from their primary and could not be fetched) and `unverified` (their primary
   * could not be asked; they keep whatever marks the directory has on them: without one, they
   * hold every acknowledged write, since a write that missed them marked them first).
   */
  private async pull(copies: Holding[], options: { backOff?: boolean } = {}): Promise<{ fetched: number; behind: string[]; unverified: string[] }> {
    const behind: string[] = [];
    const unverified: string[] = [];
    let fetched = 0;
    await Promise.all(
      [...groupBy(copies, (h) => h.primary.url)].map(async ([url, group]) => {
        if (options.backOff && (this.unreachableUntil.get(url) ?? 0) > Date.now()) {
          for (const h of group) unverified.push(h.name);
          return;
        }
        let conn: RpcConnection;
        try {
          conn = await this.server.peers.get(url, { role: 'file-server', id: group[0]!.primary.id });
          this.unreachableUntil.delete(url);
        } catch {
          this.unreachableUntil.set(url, Date.now() + UNREACHABLE_BACKOFF_MS);
          for (const h of group) unverified.push(h.name);
          this.log.warn('primary unreachable; its files keep the marks they have', { primary: group[0]!.primary.id, files: group.length });
          return;
        }
        for (const batch of versionBatches(group, (h) => h.name)) {
          let theirs: Map<string, RemoteVersion>;
          try {
            theirs = await askVersions(conn, batch.map((h) => h.name));
          } catch (err) {
            this.log.warn('primary stopped answering during catch-up', { primary: batch[0]!.primary.id, error: toDfsError(err).message });
            for (const h of batch) unverified.push(h.name);
            continue;
          }
          const differing: Holding[] = [];
          for (const h of batch) {
            if (this.sameAsMine(h, theirs.get(h.name))) this.markCurrent(h.name);
            else differing.push(h);
          }
          await eachLimited(differing, FETCH_CONCURRENCY, async (h) => {
            try {
              await this.fetchOne(conn, h);
              fetched++;
              this.markCurrent(h.name);
            } catch (err) {
              this.log.warn('could not fetch a copy', { name: h.name, error: toDfsError(err).message });
              behind.push(h.name);
            }
          });
        }
      }),
    );
    return { fetched, behind, unverified };
  }

  /** Whether a replica's copy is this primary's version, or both have nothing (version 0). */
  private agrees(holding: Holding, remote: RemoteVersion | undefined): boolean {
    return this.sameAsMine(holding, remote) || (!remote && this.server.store.metaFor(holding.name, holding.epoch).version === 0);
  }

  /** Whether a peer's copy is the version (and content) this server holds. */
  private sameAsMine(holding: Holding, remote: RemoteVersion | undefined): boolean {
    const mine = this.server.store.metaFor(holding.name, holding.epoch);
    return remote !== undefined && remote.epoch === holding.epoch && remote.version === mine.version && remote.sha256 === mine.sha256;
  }

  private markCurrent(name: string): void {
    this.server.suspect.delete(name);
    if (this.running) this.checked.add(name);
  }

  /** Copies the primary's current version of one file, whole; never goes back to an older one. */
  private async fetchOne(conn: RpcConnection, holding: Holding): Promise<void> {
    const s = this.server;
    await s.mutex.run(holding.name, async () => {
      const mine = s.store.metaFor(holding.name, holding.epoch);
      await copyFrom(s.store, conn, holding, { atLeast: mine.version, stallTimeoutMs: s.stallTimeoutMs, rate: s.copyRate });
    });
  }

  /**
   * Reports replicas whose version differs from this primary's, or that cannot be asked;
   * returns how many copies were marked.
   */
  private async verifyReplicas(primaries: Holding[]): Promise<number> {
    const pairs = primaries.flatMap((h) => h.replicas.map((replica) => ({ holding: h, replica })));
    const byName = new Map(primaries.map((h) => [h.name, h]));
    const unreachable = new Set<string>();
    const recover = new Map<string, Holding>();
    let reported = 0;
    await Promise.all(
      [...groupBy(pairs, (p) => p.replica.url)].map(async ([url, group]) => {
        const replicaId = group[0]!.replica.id;
        let conn: RpcConnection | null = null;
        try {
          conn = await this.server.peers.get(url, { role: 'file-server', id: replicaId });
        } catch {
          unreachable.add(replicaId);
        }
        for (const batch of versionBatches(group, (p) => p.holding.name)) {
          const names = batch.map((p) => p.holding.name);
          // A copy we could not compare may be older than ours: it is marked behind, to be safe;
          // unless ours is the one lost (damaged, or a fresh folder), which is recovered instead.
          let differing = names.filter((name) => {
            if (!this.server.store.isDamaged(name)) return true;
            recover.set(name, byName.get(name)!);
            return false;
          });
          if (conn) {
            try {
              const theirs = await askVersions(conn, names);
              differing = [];
              for (const { holding } of batch) {
                const remote = theirs.get(holding.name);
                // A replica ahead of this primary, or a copy here set aside as damaged: this copy
                // lost data and is recovered from its replicas, not the other way round.
                if (this.server.store.isDamaged(holding.name) || (remote && remote.epoch === holding.epoch && remote.version > this.server.store.metaFor(holding.name, holding.epoch).version)) {
                  recover.set(holding.name, holding);
                } else if (!this.agrees(holding, remote)) differing.push(holding.name);
              }
            } catch (err) {
              this.log.debug('could not check a replica; marking its copies behind', { replica: replicaId, error: toDfsError(err).message });
            }
          }
          differing = differing.filter((name) => !recover.has(name));
          await this.server.reportBehindMany(replicaId, differing);
          reported += differing.length;
        }
      }),
    );
    // Recovery goes through the write path's reconciliation, which fetches the newest replica's
    // copy and then marks the others as it would before any write.
    let recovered = 0;
    for (const holding of recover.values()) {
      try {
        await this.server.mutex.run(holding.name, () => this.server.writes.reconcileNow(holding));
        recovered++;
      } catch (err) {
        this.log.warn('could not recover a primary copy yet; its first write will try again', { name: holding.name, error: toDfsError(err).message });
      }
    }
    if (recover.size > 0) this.log.info('recovered primary copies from their replicas', { recovered, of: recover.size });
    const done = primaries.filter((h) => !recover.has(h.name)).map((h) => h.name);
    for (const name of done) this.reconciled.add(name);
    this.server.writes.markReconciled(done);
    if (unreachable.size > 0) this.log.info('replicas unreachable during catch-up; their copies are marked behind', { replicas: [...unreachable].join(',') });
    return reported;
  }
}
