/**
 * Catch-up: how a file server that starts, comes back, or missed writes becomes current again
 * before the directory sends it reads.
 *
 * Full catch-up, after every registration:
 *   - drop local files the directory no longer assigns here (deleted meanwhile, or created
 *     again under a new epoch);
 *   - for each file held as a replica, ask its primary for its version and fetch the content
 *     when ours differs;
 *   - for each file held as primary, ask its replicas for theirs and report the ones that
 *     differ as behind (they missed a version the primary committed just before a crash);
 *   - tell the directory `synced`, naming the files that could not be caught up (their primary
 *     is down): those stay out of reads.
 * Partial catch-up handles the names a heartbeat reports as behind.
 */
import { DfsError, toDfsError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import type { Holding, ReadResult, VersionsResult } from '../../shared/protocol.js';
import type { RpcConnection } from '../../shared/rpc.js';
import type { FileServer } from './service.js';

const BATCH = 1000;
/** A heartbeat lists at most this many behind names; more means a full catch-up is due. */
const PARTIAL_LIMIT = 1000;

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

type RemoteVersion = VersionsResult['files'][number];

/** The versions a peer holds of the named files, by name. */
async function askVersions(conn: RpcConnection, names: string[]): Promise<Map<string, RemoteVersion>> {
  const { files } = (await conn.call('versions', { names })).result as VersionsResult;
  return new Map(files.map((f) => [f.name, f]));
}

export class CatchUp {
  running = false;
  private partialRunning = false;
  /** During a full catch-up, the replica copies checked so far. */
  private readonly checked = new Set<string>();

  constructor(
    private readonly server: FileServer,
    private readonly log: Logger,
  ) {}

  /** Whether a replica copy may serve reads as far as catch-up is concerned. */
  mayServe(name: string): boolean {
    return !this.running || this.checked.has(name);
  }

  async full(markSeq: number): Promise<void> {
    if (this.running) return;
    this.running = true;
    this.checked.clear();
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
          await this.server.mutex.run(name, () => this.server.store.remove(name));
          dropped++;
        }
      }
      const { fetched, behind } = await this.pull(replicaCopies);
      const reported = await this.verifyReplicas(holdings.filter((h) => h.role === 'primary'));
      const conn = await this.server.directory();
      await conn.call('synced', { id: this.server.id, upTo: markSeq, behind });
      this.log.info('caught up', { files: holdings.length, fetched, dropped, behind: behind.length, replicasBehind: reported, ms: Date.now() - started });
    } catch (err) {
      this.log.warn('catch-up failed; will retry', { error: toDfsError(err).message });
      throw err;
    } finally {
      this.running = false;
      this.checked.clear();
    }
  }

  /** Catches up the named copies (a heartbeat said they missed writes). */
  async some(names: string[], markSeq: number): Promise<void> {
    if (this.running || this.partialRunning) return;
    if (names.length >= PARTIAL_LIMIT) {
      await this.full(markSeq).catch(() => {});
      return;
    }
    this.partialRunning = true;
    try {
      const holdings: Holding[] = [];
      for (const name of names) {
        this.server.suspect.add(name);
        this.server.holdings.forget(name);
        try {
          holdings.push(await this.server.holdings.lookup(name));
        } catch (err) {
          if (!(err instanceof DfsError && err.code === 'NOT_FOUND')) throw err;
          this.server.suspect.delete(name); // deleted meanwhile: nothing to catch up
        }
      }
      const replicas = holdings.filter((h) => h.role === 'replica');
      for (const h of holdings) if (h.role === 'primary') this.server.suspect.delete(h.name);
      const { fetched, behind } = await this.pull(replicas);
      const conn = await this.server.directory();
      await conn.call('synced', { id: this.server.id, upTo: markSeq, behind });
      this.log.info('caught up behind copies', { files: names.length, fetched, behind: behind.length });
    } catch (err) {
      this.log.warn('partial catch-up failed; will retry', { error: toDfsError(err).message });
    } finally {
      this.partialRunning = false;
    }
  }

  private async pull(copies: Holding[]): Promise<{ fetched: number; behind: string[] }> {
    const behind: string[] = [];
    let fetched = 0;
    await Promise.all(
      [...groupBy(copies, (h) => h.primary.url)].map(async ([url, group]) => {
        let conn: RpcConnection;
        try {
          conn = await this.server.peers.get(url);
        } catch {
          for (const h of group) behind.push(h.name);
          this.log.warn('primary unreachable; its files stay behind', { primary: group[0]!.primary.id, files: group.length });
          return;
        }
        for (let i = 0; i < group.length; i += BATCH) {
          const batch = group.slice(i, i + BATCH);
          try {
            const theirs = await askVersions(conn, batch.map((h) => h.name));
            for (const h of batch) {
              if (this.sameAsMine(h, theirs.get(h.name))) {
                this.markCurrent(h.name);
                continue;
              }
              try {
                await this.fetchOne(conn, h);
                fetched++;
                this.markCurrent(h.name);
              } catch (err) {
                this.log.warn('could not fetch a copy', { name: h.name, error: toDfsError(err).message });
                behind.push(h.name);
              }
            }
          } catch (err) {
            this.log.warn('primary stopped answering during catch-up', { primary: batch[0]!.primary.id, error: toDfsError(err).message });
            for (const h of batch) if (!this.checked.has(h.name)) behind.push(h.name);
          }
        }
      }),
    );
    return { fetched, behind };
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

  /** Copies the primary's current version of one file, whole. */
  private async fetchOne(conn: RpcConnection, holding: Holding): Promise<void> {
    await this.server.mutex.run(holding.name, async () => {
      const res = await conn.call('fetch', { name: holding.name, epoch: holding.epoch }, { timeoutMs: 60_000 });
      const meta = res.result as ReadResult;
      const store = this.server.store;
      if (meta.version === 0) {
        await res.stream?.drain();
        await store.remove(holding.name);
        return;
      }
      const current = store.metaFor(holding.name, holding.epoch);
      if (current.version > meta.version) this.log.warn('replica was ahead of its primary; taking the primary copy', { name: holding.name, replica: current.version, primary: meta.version });
      const staged = await store.stage(holding.name, holding.epoch, meta.version, 'replace');
      try {
        await staged.writeAll(res.stream, res.body);
        const header = await staged.seal({ mtime: meta.mtime, token: 0, requestId: '' });
        if (header.sha256 !== meta.sha256 || header.size !== meta.size) throw new DfsError('CHECKSUM', `fetched content of ${holding.name} does not match its sha256`);
        await store.commit(staged, header);
      } catch (err) {
        await staged.discard();
        throw err;
      }
    });
  }

  /** Reports replicas whose version differs from this primary's; returns how many. */
  private async verifyReplicas(primaries: Holding[]): Promise<number> {
    const pairs = primaries.flatMap((h) => h.replicas.map((replica) => ({ holding: h, replica })));
    let reported = 0;
    await Promise.all(
      [...groupBy(pairs, (p) => p.replica.url)].map(async ([url, group]) => {
        let conn: RpcConnection;
        try {
          conn = await this.server.peers.get(url);
        } catch {
          return; // it will catch up itself when it registers again
        }
        for (let i = 0; i < group.length; i += BATCH) {
          const batch = group.slice(i, i + BATCH);
          try {
            const theirs = await askVersions(conn, batch.map((p) => p.holding.name));
            for (const { holding, replica } of batch) {
              const remote = theirs.get(holding.name);
              if (this.sameAsMine(holding, remote)) continue;
              if (!remote && this.server.store.metaFor(holding.name, holding.epoch).version === 0) continue;
              await this.server.reportBehind(holding.name, replica.id);
              reported++;
            }
          } catch (err) {
            this.log.debug('could not check a replica', { replica: group[0]!.replica.id, error: toDfsError(err).message });
          }
        }
      }),
    );
    return reported;
  }
}
