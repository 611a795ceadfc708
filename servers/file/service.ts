/**
 * A file server: primary for some files, replica for others, as the directory's table says.
 * Wires the version store, the replication protocol and catch-up to the RPC server, and keeps
 * the server registered and heartbeating with the directory.
 */
import { join } from 'node:path';
import { TokenBucket } from 'limiter';
import { readIfExists, writeFileDurably } from '../../shared/durable.js';
import { LRUCache } from 'lru-cache';
import { DfsError, toDfsError } from '../../shared/errors.js';
import type { ConnectionLimits } from '../../shared/args.js';
import type { Logger } from '../../shared/log.js';
import { PAGE_BYTES, allPages, byteBatches, jsonBytes } from '../../shared/pages.js';
import { ConnectionPool } from '../../shared/pool.js';
import {
  INLINE_CONTENT_BYTES,
  fileOps,
  holdingsOf,
  type FileArgs,
  type FileServerStatus,
  type Holding,
  type HoldingsResult,
  type BehindResult,
  type PlacementAppliedResult,
  type InfoResult,
  type ReadResult,
  type RegisterResult,
  type HeartbeatResult,
  type VersionsResult,
} from '../../shared/protocol.js';
import type { Transport } from '../../shared/tls/transport.js';
import { requireService } from '../../shared/auth/peers.js';
import { RpcServer, Reply, op, type CallContext, type RpcConnection } from '../../shared/rpc.js';
import { Holdings } from './holdings.js';
import { KeyedMutex } from './keyed-mutex.js';
import { FileStore, type StoredVersion } from './store.js';
import { publicMeta } from './version-file.js';
import { CatchUp } from './catch-up.js';
import { PeerHealth } from './peer-health.js';
import { PrimaryWrites, notHereIsNotPrimary } from './primary-writes.js';
import { ReplicaCopies } from './replica-copies.js';
import { callReplica, type Replicator } from './replication.js';

export interface FileServerOptions {
  id: string;
  /** TLS with this server's certificate (the default), or --insecure. */
  transport: Transport;
  host: string;
  port: number;
  /** URL peers and clients use to reach this server (default ws://host:port). */
  advertiseUrl?: string;
  directoryUrl: string;
  dataDir: string;
  maxFileBytes: number;
  log: Logger;
  connections?: ConnectionLimits;
  /** A write stream that delivers nothing for this long is aborted (default 10 s). */
  stallTimeoutMs?: number;
  /** A replica silent for this long is dropped from a write and marked behind (default 1 s). */
  replicaTimeoutMs?: number;
  /** Bytes per second that catch-up and re-replication may copy in (default 128 MiB/s; 0: no limit). */
  copyRateBytesPerSec?: number;
}

export const DEFAULT_STALL_TIMEOUT_MS = 10_000;
/** Written in the data folder after its first full catch-up (docs/PROTOCOL.md, "Catch-up"). */
export const SERVER_FILE = 'server.json';

/** Records that a data folder belongs to the cluster (no longer fresh), durably. */
function recordKnownFolder(dataDir: string, id: string): Promise<void> {
  return writeFileDurably(join(dataDir, SERVER_FILE), JSON.stringify({ id, since: new Date().toISOString() }) + '\n');
}
export const DEFAULT_REPLICA_TIMEOUT_MS = 1000;
export const DEFAULT_COPY_RATE_BYTES_PER_SEC = 128 << 20;

/** Room left in an inline answer's message for its header. */
const INLINE_HEADER_ALLOWANCE = 16 << 10;

/** Memory for recently read small files, and the largest file kept there. */
const RECENT_CONTENT_BYTES = 16 << 20;
const RECENT_CONTENT_MAX_ENTRY = 64 << 10;

export class FileServer {
  readonly store: FileStore;
  readonly holdings: Holdings;
  readonly mutex = new KeyedMutex();
  readonly peers: ConnectionPool;
  /** Replica copies not yet known to be current: reads of them are refused. */
  readonly suspect = new Set<string>();
  readonly counters: FileServerStatus['counters'] = { reads: 0, notModified: 0, contentBytesSent: 0, writes: 0, contentBytesReceived: 0, replicaWrites: 0 };
  readonly health: PeerHealth;
  readonly replicator: Replicator;
  readonly writes: PrimaryWrites;
  /** The bound on catch-up and re-replication copies, shared by all of them; null: none. */
  readonly copyRate: TokenBucket | null;
  private readonly replicas: ReplicaCopies;
  private readonly recentContent = new LRUCache<string, Buffer>({
    maxSize: RECENT_CONTENT_BYTES,
    sizeCalculation: (content) => Math.max(1, content.length),
  });
  private readonly rpc: RpcServer;
  private readonly catchUp: CatchUp;
  /** The directory's connection; a pool of one, so that it is opened again after it drops. */
  private readonly directoryPool: ConnectionPool;
  private lockUrl: string | null = null;
  private heartbeatTimer: NodeJS.Timeout | null = null;
  stopping = false;
  private registered = false;
  /** No full catch-up has finished with this data folder yet (no server.json). */
  private fresh = false;
  url = '';

  private constructor(
    private readonly options: FileServerOptions,
    store: FileStore,
  ) {
    this.store = store;
    this.holdings = new Holdings(options.id, () => this.directory());
    this.peers = new ConnectionPool({ transport: options.transport, expect: { role: 'file-server' }, retryAfterMs: 1000, connectTimeoutMs: 2000, log: options.log });
    this.health = new PeerHealth(this.peers, options.replicaTimeoutMs ?? DEFAULT_REPLICA_TIMEOUT_MS, options.log);
    this.replicator = { peers: this.peers, health: this.health, log: options.log };
    this.writes = new PrimaryWrites(this, options.log);
    const rate = options.copyRateBytesPerSec ?? DEFAULT_COPY_RATE_BYTES_PER_SEC;
    this.copyRate = rate > 0 ? new TokenBucket({ bucketSize: Math.max(rate, 1 << 20), tokensPerInterval: rate, interval: 'second' }) : null;
    this.replicas = new ReplicaCopies(this, options.log);
    this.directoryPool = new ConnectionPool({ transport: options.transport, log: options.log, onConnect: (conn) => this.onDirectoryConnected(conn) });
    this.catchUp = new CatchUp(this, options.log);
    this.rpc = new RpcServer({ transport: options.transport, host: options.host, port: options.port, log: options.log, ...options.connections, handlers: this.handlers() });
  }

  static async start(options: FileServerOptions): Promise<FileServer> {
    const store = await FileStore.open(options.dataDir, options.log);
    const server = new FileServer(options, store);
    // Fresh: a folder that holds nothing and never finished a catch-up (new, or lost). One the
    // previous version wrote (copies, no server.json) is not: it is marked as known at once.
    const known = (await readIfExists(join(options.dataDir, SERVER_FILE))) !== null;
    server.fresh = !known && store.count === 0;
    if (!known && store.count > 0) await recordKnownFolder(options.dataDir, options.id);
    await server.rpc.listen();
    server.url = options.advertiseUrl ?? server.rpc.url;
    options.log.info('listening', { url: server.url, id: options.id, files: store.count, data: options.dataDir });
    server.joinLoop();
    return server;
  }

  get id(): string {
    return this.options.id;
  }

  get maxFileBytes(): number {
    return this.options.maxFileBytes;
  }

  get stallTimeoutMs(): number {
    return this.options.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS;
  }

  get syncing(): boolean {
    return !this.registered || this.catchUp.running;
  }

  // ------------------------------------------------------------ directory membership

  /** The connection to the directory, opened (and re-opened) on demand. */
  directory(): Promise<RpcConnection> {
    return this.directoryPool.get(this.options.directoryUrl, { role: 'directory' });
  }

  /** Learns the lock service's address; losing the directory means joining it again. */
  private async onDirectoryConnected(conn: RpcConnection): Promise<void> {
    const info = (await conn.call('info', {})).result as InfoResult;
    this.lockUrl = info.lockUrl;
    conn.onClose(() => {
      if (!this.stopping && this.registered) {
        this.registered = false;
        this.options.log.warn('lost the directory; joining again');
        this.joinLoop();
      }
    });
  }

  /** Registers, catches up, then heartbeats; retries until it succeeds or the server stops. */
  private joinLoop(): void {
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = null;
    let attempt = 0;
    const tryJoin = async () => {
      if (this.stopping) return;
      try {
        await this.join();
      } catch (err) {
        attempt++;
        if (attempt === 1 || attempt % 10 === 0) this.options.log.warn('cannot join the directory yet; retrying', { directory: this.options.directoryUrl, error: toDfsError(err).message });
        setTimeout(() => void tryJoin(), Math.min(1000, 100 * attempt)).unref();
      }
    };
    void tryJoin();
  }

  private async join(): Promise<void> {
    const conn = await this.directory();
    // A data folder that has not finished a catch-up since it was made says so: its copies hold nothing yet.
    const reg = (await conn.call('register', this.fresh ? { id: this.id, url: this.url, fresh: true } : { id: this.id, url: this.url })).result as RegisterResult;
    this.registered = true;
    this.options.log.info('registered with the directory', { directory: this.options.directoryUrl });
    this.startHeartbeat(reg.heartbeatMs);
    await this.catchUp.full(reg.markSeq, reg.boot);
  }

  /** Every holding of this server, page by page. */
  async fetchHoldings(): Promise<Holding[]> {
    const conn = await this.directory();
    return allPages(
      async (after) => {
        const page = (await conn.call('holdings', after === undefined ? { id: this.id, limit: 10_000 } : { id: this.id, after, limit: 10_000 })).result as HoldingsResult;
        return { items: holdingsOf(page), more: page.more };
      },
      (copy) => copy.name,
    );
  }

  private startHeartbeat(intervalMs: number): void {
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = setInterval(() => void this.heartbeat(), intervalMs);
    this.heartbeatTimer.unref();
  }

  private async heartbeat(): Promise<void> {
    if (this.stopping || !this.registered) return;
    try {
      const conn = await this.directory();
      const beat = (await conn.call('heartbeat', { id: this.id }, { timeoutMs: 2000 })).result as HeartbeatResult;
      if (beat.behind.length > 0) {
        // One page per heartbeat; when more are marked, the next page is asked for at once.
        void this.catchUp.some(beat.behind, beat.markSeq, beat.boot).then((ran) => {
          if (ran && beat.more) void this.heartbeat();
        });
      }
    } catch (err) {
      const error = toDfsError(err);
      if (error.code === 'NOT_FOUND' && this.registered) {
        this.registered = false;
        this.options.log.warn('the directory no longer knows this server; joining again', { error: error.message });
        this.joinLoop();
      }
    }
  }

  /**
   * Copies a full catch-up could not check (their primary is unreachable) keep the marks the
   * directory has on them past `synced`, and get no new ones.
   */
  keepMarks(names: readonly string[]): Promise<void> {
    return this.reportBehindMany(this.id, names, { keep: true });
  }

  /** Whether this data folder has not yet finished a catch-up (no server.json): its copies hold nothing yet. */
  get isFresh(): boolean {
    return this.fresh;
  }

  /**
   * After the first full catch-up that recovered every primary copy, the data folder is known to
   * the cluster: it is no longer fresh. Until then every start treats it as fresh again.
   */
  async noteCaughtUp(): Promise<void> {
    if (!this.fresh) return;
    for (const h of this.holdings.all()) if (h.role === 'primary' && this.store.isDamaged(h.name)) return;
    await recordKnownFolder(this.options.dataDir, this.id);
    this.fresh = false;
  }

  /** Tells the directory a replica missed a version, so reads avoid it until it catches up. */
  async reportBehind(name: string, replicaId: string): Promise<void> {
    await this.reportBehindMany(replicaId, [name]);
    this.options.log.debug('replica marked behind', { name, replica: replicaId });
  }

  /**
   * Marks server `replicaId`'s copies of `names` behind, in pages the frame limits allow.
   * NOT_PRIMARY when the directory refuses a report because this server is no longer the
   * primary of one of the files: whatever that report was for must not be acknowledged.
   */
  async reportBehindMany(replicaId: string, names: readonly string[], options: { keep?: boolean } = {}): Promise<void> {
    if (names.length === 0) return;
    const conn = await this.directory();
    for (const batch of byteBatches(names, jsonBytes, PAGE_BYTES, 10_000)) {
      const args = options.keep ? { id: replicaId, by: this.id, names: batch, keep: true } : { id: replicaId, by: this.id, names: batch };
      const answer = (await conn.call('behind', args)).result as BehindResult;
      if (answer.refused > 0) {
        throw new DfsError('NOT_PRIMARY', `the directory refused to mark ${replicaId}'s copies behind: ${this.id} is no longer the primary of ${answer.refused === 1 && batch.length === 1 ? batch[0] : `${answer.refused} of those files`}`);
      }
    }
  }

  async lockService(): Promise<RpcConnection> {
    if (!this.lockUrl) await this.directory();
    if (!this.lockUrl) throw new DfsError('UNAVAILABLE', 'the lock service address is not known yet');
    return this.peers.get(this.lockUrl, { role: 'lock' });
  }

  // ------------------------------------------------------------ handlers

  private handlers() {
    return {
      read: op(fileOps.read, (args, ctx) => this.read(args, ctx)),
      stat: op(fileOps.stat, async (args) => {
        const holding = await this.holdings.lookup(args.name);
        return publicMeta(this.store.metaFor(args.name, holding.epoch));
      }),
      write: op(fileOps.write, (args, ctx) => this.writes.write(args, ctx)),
      delete: op(fileOps.delete, (args) => this.remove(args)),
      status: op(fileOps.status, (): FileServerStatus => ({
        id: this.id,
        url: this.url,
        files: this.store.count,
        syncing: this.syncing,
        catchingUp: this.suspect.size,
        counters: { ...this.counters },
      })),
      // Replication comes from a file server that is what `from` says: its certificate proves it.
      'rep.write': op(fileOps['rep.write'], (args, ctx) => {
        requireService(ctx.conn, 'rep.write', 'file-server', args.from);
        return this.replicas.write(args, ctx);
      }),
      'rep.commit': op(fileOps['rep.commit'], (args, ctx) => {
        requireService(ctx.conn, 'rep.commit', 'file-server', args.from);
        return this.replicas.commit(args);
      }),
      'rep.delete': op(fileOps['rep.delete'], (args, ctx) => {
        requireService(ctx.conn, 'rep.delete', 'file-server', args.from);
        return this.replicas.remove(args);
      }),
      'rep.fence': op(fileOps['rep.fence'], (args, ctx) => {
        requireService(ctx.conn, 'rep.fence', 'directory');
        return this.replicas.fence(args);
      }),
      'rep.placement': op(fileOps['rep.placement'], (args, ctx) => {
        requireService(ctx.conn, 'rep.placement', 'directory');
        return this.adoptPlacements(args);
      }),
      versions: op(fileOps.versions, (args, ctx): VersionsResult => {
        requireService(ctx.conn, 'versions', 'file-server');
        const files: VersionsResult['files'] = [];
        for (const name of args.names) {
          const holding = this.holdings.get(name);
          const stored = this.store.get(name);
          const epoch = holding?.epoch ?? stored?.epoch;
          if (epoch === undefined) continue;
          const meta = this.store.metaFor(name, epoch);
          files.push({ name, epoch, version: meta.version, sha256: meta.sha256 });
        }
        return { files };
      }),
      fetch: op(fileOps.fetch, async (args, ctx) => {
        requireService(ctx.conn, 'fetch', 'file-server');
        const known = this.holdings.get(args.name);
        const holding = await this.holdings.lookup(args.name, args.epoch, args.placementEpoch);
        if (known && holding.placementEpoch > known.placementEpoch) {
          // A copy this server did not know of (re-replication): writes under way were sent to
          // the old set of replicas, so they finish before the new copy takes its content; later
          // ones go to it too.
          await this.mutex.run(args.name, async () => {});
        }
        return this.contentReply(holding, args.name, false, ctx);
      }),
    };
  }

  /**
   * New placements from the directory (a failover or re-replication changed them). A copy that
   * stops being the primary is not served until a catch-up checks it (the directory marks it
   * behind); one that becomes the primary reconciles with its replicas before its first write.
   */
  private adoptPlacements(args: FileArgs['rep.placement']): PlacementAppliedResult {
    let applied = 0;
    let becamePrimary = 0;
    const toCatchUp: string[] = [];
    for (const holding of holdingsOf(args)) {
      if (holding.primary.id !== this.id && !holding.replicas.some((r) => r.id === this.id)) {
        // No longer assigned here: dropped (to orphaned/) at the next full catch-up.
        this.holdings.forget(holding.name);
        this.writes.forget(holding.name);
        applied++;
        continue;
      }
      const role: Holding['role'] = holding.primary.id === this.id ? 'primary' : 'replica';
      const before = this.holdings.adopt({ ...holding, role });
      if (before === undefined) continue;
      applied++;
      this.writes.forget(holding.name);
      // A copy that stopped being the primary, or that is new here, is not served until checked.
      if (role === 'replica' && before?.role !== 'replica') {
        this.suspect.add(holding.name);
        toCatchUp.push(holding.name);
      }
      if (role === 'primary' && before?.role !== 'primary') becamePrimary++;
      this.options.log.debug('placement changed', { name: holding.name, placementEpoch: holding.placementEpoch, primary: holding.primary.id, was: before?.role });
    }
    if (applied > 0) this.options.log.info('took new placements from the directory', { files: applied, nowPrimary: becamePrimary || undefined, newCopies: toCatchUp.length || undefined });
    // New copies here are copied at once rather than at the next heartbeat; if a catch-up is
    // already running, the heartbeat's page of marks brings them in later.
    if (toCatchUp.length > 0 && args.markSeq !== undefined && args.boot !== undefined) void this.catchUp.some(toCatchUp, args.markSeq, args.boot);
    return { applied };
  }

  private async read(args: FileArgs['read'], ctx: CallContext): Promise<unknown> {
    const holding = await this.holdings.lookup(args.name);
    if (holding.role === 'replica' && (!this.registered || this.suspect.has(args.name) || !this.catchUp.mayServe(args.name))) {
      throw new DfsError('UNAVAILABLE', `the copy of ${args.name} on ${this.id} is catching up; read another copy`);
    }
    if (this.store.isDamaged(args.name)) throw new DfsError('UNAVAILABLE', `the copy of ${args.name} on ${this.id} was damaged and is being recovered; read another copy`);
    this.counters.reads++;
    const meta = this.store.metaFor(args.name, holding.epoch);
    if (holding.role === 'replica' && args.minEpoch === meta.epoch && args.minVersion !== undefined && args.minVersion > meta.version) {
      throw new DfsError('UNAVAILABLE', `the copy of ${args.name} on ${this.id} is at v${meta.version}, older than the v${args.minVersion} you have seen; read another copy`, { behind: true });
    }
    if (args.ifEpoch === meta.epoch && args.ifVersion !== undefined) {
      if (args.ifVersion === meta.version) {
        this.counters.notModified++;
        return { ...publicMeta(meta), notModified: true } satisfies ReadResult;
      }
      if (args.ifVersion > meta.version && holding.role === 'replica') {
        throw new DfsError('UNAVAILABLE', `the copy of ${args.name} on ${this.id} is behind (v${meta.version}, you have v${args.ifVersion}); read another copy`, { behind: true });
      }
    }
    return this.contentReply(holding, args.name, true, ctx);
  }

  /** The current content of a file: inline when small, streamed when large. */
  private async contentReply(holding: Holding, name: string, count: boolean, ctx: CallContext): Promise<Reply> {
    const stored = this.store.get(name);
    const meta = this.store.metaFor(name, holding.epoch);
    // A peer's fetch also learns which client write made the version (clients never see it).
    const result: ReadResult = count ? { ...publicMeta(meta), notModified: false } : { ...publicMeta(meta), notModified: false, requestId: meta.requestId, token: meta.token };
    if (count) this.counters.contentBytesSent += meta.size;
    if (!stored || stored.epoch !== holding.epoch || meta.size === 0) return new Reply(result, Buffer.alloc(0));
    try {
      // Inline when it fits one message the peer accepts; streamed otherwise.
      if (stored.size <= Math.min(INLINE_CONTENT_BYTES, ctx.conn.peerMaxMessageBytes - INLINE_HEADER_ALLOWANCE)) {
        // Room in the send buffer first: a peer pipelining reads it never takes cannot make
        // this server load one answer per request.
        await ctx.reserveOutput(stored.size);
        return new Reply(result, await this.smallContent(stored));
      }
    } catch (err) {
      throw this.onDamaged(name, err);
    }
    return new Reply(result, undefined, this.guardedContent(stored, name));
  }

  /** A large file's content, streamed; a checksum failure on the way takes the copy out of service. */
  private async *guardedContent(stored: StoredVersion, name: string): AsyncIterable<Buffer> {
    try {
      yield* this.store.readContent(stored);
    } catch (err) {
      throw this.onDamaged(name, err);
    }
  }

  /**
   * Small hot files are served from memory. Keyed by the version file's path, which names the
   * epoch and version, so an entry can never be stale; checked against its sha256 when loaded.
   */
  private async smallContent(stored: StoredVersion): Promise<Buffer> {
    const hit = this.recentContent.get(stored.path);
    if (hit) return hit;
    const content = await this.store.readAll(stored);
    if (content.length <= RECENT_CONTENT_MAX_ENTRY) this.recentContent.set(stored.path, content);
    return content;
  }

  /** A copy that fails its checksum is taken out of service and fetched again. */
  private onDamaged(name: string, err: unknown): DfsError {
    const error = toDfsError(err);
    if (error.code !== 'CHECKSUM') return error;
    this.options.log.error('damaged copy detected', { name, error: error.message });
    const holding = this.holdings.get(name);
    if (holding?.role === 'replica') {
      this.suspect.add(name);
      void this.mutex
        .run(name, () => this.store.quarantine(name))
        .then(() => this.reportBehind(name, this.id))
        .catch((e: unknown) => this.options.log.warn('could not report a damaged copy', { name, error: toDfsError(e).message }));
    } else if (holding?.role === 'primary') {
      // The primary's copy is recovered from its replicas before it is read or written again.
      void this.mutex
        .run(name, async () => {
          await this.store.quarantine(name);
          await this.writes.reconcileNow(holding);
        })
        .catch((e: unknown) => this.options.log.warn('could not recover a damaged primary copy yet; its next write tries again', { name, error: toDfsError(e).message }));
    }
    return new DfsError('UNAVAILABLE', `the copy of ${name} on ${this.id} is damaged; read another copy`);
  }

  private async remove(args: FileArgs['delete']): Promise<{ deleted: true }> {
    if (this.stopping) throw new DfsError('UNAVAILABLE', `server ${this.id} is shutting down`);
    let holding = await notHereIsNotPrimary(this.holdings.lookup(args.name, args.epoch));
    if (!this.holdings.isWritablePrimary(holding)) holding = await this.holdings.refresh(args.name, args.epoch);
    if (!this.holdings.isWritablePrimary(holding)) throw new DfsError('NOT_PRIMARY', `${this.id} is not the primary for ${args.name} now; its primary is ${holding.primary.id}; locate it again`);
    await this.writes.validateToken(args.name, args.token);
    return this.mutex.run(args.name, async () => {
      const conn = await this.directory();
      await conn.call('delete', { name: args.name, epoch: holding.epoch }).catch((err: unknown) => {
        if (!(err instanceof DfsError && err.code === 'NOT_FOUND')) throw err;
      });
      this.holdings.forget(args.name);
      this.writes.forget(args.name);
      await this.store.remove(args.name);
      await Promise.all(
        holding.replicas.map((replica) =>
          callReplica(this.replicator, replica.url, 'rep.delete', { name: args.name, epoch: holding.epoch, from: this.id, placementEpoch: holding.placementEpoch })
            .catch((err: unknown) => this.options.log.info('replica will drop the file when it catches up', { name: args.name, replica: replica.id, error: toDfsError(err).message })),
        ),
      );
      this.options.log.info('deleted', { name: args.name });
      return { deleted: true as const };
    });
  }

  // ------------------------------------------------------------ shutdown

  async close(): Promise<void> {
    this.stopping = true;
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    // Let writes under way finish (they are acknowledged only once durable), then stop.
    await Promise.race([this.mutex.idle(), new Promise((resolve) => setTimeout(resolve, 5000).unref())]);
    this.replicas.dropAll();
    this.health.close();
    await this.rpc.close();
    this.directoryPool.closeAll();
    this.peers.closeAll();
    await this.store.close();
  }
}
