/**
 * A file server: primary for some files, replica for others, as the directory's table says.
 * Wires the version store, the replication protocol and catch-up to the RPC server, and keeps
 * the server registered and heartbeating with the directory.
 */
import { createHash } from 'node:crypto';
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
  type InfoResult,
  type PreparedResult,
  type ReadResult,
  type RegisterResult,
  type HeartbeatResult,
  type VersionsResult,
  type WriteResult,
} from '../../shared/protocol.js';
import { RpcServer, Reply, op, type CallContext, type RpcConnection } from '../../shared/rpc.js';
import { Holdings } from './holdings.js';
import { KeyedMutex } from './keyed-mutex.js';
import { abortReplicas, endReplicaStreams, finishReplication, pushToReplicas, startReplication } from './replication.js';
import { FileStore, type StagedVersion, type StoredVersion } from './store.js';
import { publicMeta, type VersionHeader } from './version-file.js';
import { CatchUp } from './catch-up.js';

export interface FileServerOptions {
  id: string;
  host: string;
  port: number;
  /** URL peers and clients use to reach this server (default ws://host:port). */
  advertiseUrl?: string;
  directoryUrl: string;
  dataDir: string;
  maxFileBytes: number;
  log: Logger;
  connections?: ConnectionLimits;
}

interface PreparedCopy {
  staged: StagedVersion;
  header: VersionHeader;
  timer: NodeJS.Timeout;
}

/** Memory for recently read small files, and the largest file kept there. */
const RECENT_CONTENT_BYTES = 16 << 20;
const RECENT_CONTENT_MAX_ENTRY = 64 << 10;

/** A replica's prepared version is dropped if its commit does not come within this time. */
const PREPARED_TTL_MS = 60_000;

export class FileServer {
  readonly store: FileStore;
  readonly holdings: Holdings;
  readonly mutex = new KeyedMutex();
  readonly peers: ConnectionPool;
  /** Replica copies not yet known to be current: reads of them are refused. */
  readonly suspect = new Set<string>();
  readonly counters: FileServerStatus['counters'] = { reads: 0, notModified: 0, contentBytesSent: 0, writes: 0, contentBytesReceived: 0, replicaWrites: 0 };
  private readonly prepared = new Map<string, PreparedCopy>();
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
  private stopping = false;
  private registered = false;
  url = '';

  private constructor(
    private readonly options: FileServerOptions,
    store: FileStore,
  ) {
    this.store = store;
    this.holdings = new Holdings(options.id, () => this.directory());
    this.peers = new ConnectionPool({ retryAfterMs: 1000, connectTimeoutMs: 2000, log: options.log });
    this.directoryPool = new ConnectionPool({ log: options.log, onConnect: (conn) => this.onDirectoryConnected(conn) });
    this.catchUp = new CatchUp(this, options.log);
    this.rpc = new RpcServer({ host: options.host, port: options.port, log: options.log, ...options.connections, handlers: this.handlers() });
  }

  static async start(options: FileServerOptions): Promise<FileServer> {
    const store = await FileStore.open(options.dataDir, options.log);
    const server = new FileServer(options, store);
    await server.rpc.listen();
    server.url = options.advertiseUrl ?? server.rpc.url;
    options.log.info('listening', { url: server.url, id: options.id, files: store.count, data: options.dataDir });
    server.joinLoop();
    return server;
  }

  get id(): string {
    return this.options.id;
  }

  get syncing(): boolean {
    return !this.registered || this.catchUp.running;
  }

  // ------------------------------------------------------------ directory membership

  /** The connection to the directory, opened (and re-opened) on demand. */
  directory(): Promise<RpcConnection> {
    return this.directoryPool.get(this.options.directoryUrl);
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
    const reg = (await conn.call('register', { id: this.id, url: this.url })).result as RegisterResult;
    this.registered = true;
    this.options.log.info('registered with the directory', { directory: this.options.directoryUrl });
    this.startHeartbeat(reg.heartbeatMs);
    await this.catchUp.full(reg.markSeq);
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
        void this.catchUp.some(beat.behind, beat.markSeq).then((ran) => {
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

  /** Tells the directory a replica missed a version, so reads avoid it until it catches up. */
  async reportBehind(name: string, replicaId: string): Promise<void> {
    await this.reportBehindMany(replicaId, [name]);
    this.options.log.debug('replica marked behind', { name, replica: replicaId });
  }

  /** Marks server `replicaId`'s copies of `names` behind, in pages the frame limits allow. */
  async reportBehindMany(replicaId: string, names: readonly string[]): Promise<void> {
    const conn = await this.directory();
    for (const batch of byteBatches(names, jsonBytes, PAGE_BYTES, 10_000)) await conn.call('behind', { id: replicaId, names: batch });
  }

  private async lockService(): Promise<RpcConnection> {
    if (!this.lockUrl) await this.directory();
    if (!this.lockUrl) throw new DfsError('UNAVAILABLE', 'the lock service address is not known yet');
    return this.peers.get(this.lockUrl);
  }

  // ------------------------------------------------------------ handlers

  private handlers() {
    return {
      read: op(fileOps.read, (args) => this.read(args)),
      stat: op(fileOps.stat, async (args) => {
        const holding = await this.holdings.lookup(args.name);
        return publicMeta(this.store.metaFor(args.name, holding.epoch));
      }),
      write: op(fileOps.write, (args, ctx) => this.write(args, ctx)),
      delete: op(fileOps.delete, (args) => this.remove(args)),
      status: op(fileOps.status, (): FileServerStatus => ({
        id: this.id,
        url: this.url,
        files: this.store.count,
        syncing: this.syncing,
        catchingUp: this.suspect.size,
        counters: { ...this.counters },
      })),
      'rep.write': op(fileOps['rep.write'], (args, ctx) => this.replicaWrite(args, ctx)),
      'rep.commit': op(fileOps['rep.commit'], (args) => this.replicaCommit(args)),
      'rep.delete': op(fileOps['rep.delete'], (args) => this.replicaDelete(args)),
      versions: op(fileOps.versions, (args): VersionsResult => {
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
      fetch: op(fileOps.fetch, async (args) => {
        const holding = await this.holdings.lookup(args.name, args.epoch);
        return this.contentReply(holding, args.name, false);
      }),
    };
  }

  private async read(args: FileArgs['read']): Promise<unknown> {
    const holding = await this.holdings.lookup(args.name);
    if (holding.role === 'replica' && (!this.registered || this.suspect.has(args.name) || !this.catchUp.mayServe(args.name))) {
      throw new DfsError('UNAVAILABLE', `the copy of ${args.name} on ${this.id} is catching up; read another copy`);
    }
    this.counters.reads++;
    const meta = this.store.metaFor(args.name, holding.epoch);
    if (args.ifEpoch === meta.epoch && args.ifVersion !== undefined) {
      if (args.ifVersion === meta.version) {
        this.counters.notModified++;
        return { ...publicMeta(meta), notModified: true } satisfies ReadResult;
      }
      if (args.ifVersion > meta.version) {
        throw new DfsError('UNAVAILABLE', `the copy of ${args.name} on ${this.id} is behind (v${meta.version}, you have v${args.ifVersion}); read another copy`);
      }
    }
    return this.contentReply(holding, args.name, true);
  }

  /** The current content of a file: inline when small, streamed when large. */
  private async contentReply(holding: Holding, name: string, count: boolean): Promise<Reply> {
    const stored = this.store.get(name);
    const meta = this.store.metaFor(name, holding.epoch);
    const result: ReadResult = { ...publicMeta(meta), notModified: false };
    if (count) this.counters.contentBytesSent += meta.size;
    if (!stored || stored.epoch !== holding.epoch || meta.size === 0) return new Reply(result, Buffer.alloc(0));
    try {
      if (stored.size <= INLINE_CONTENT_BYTES) return new Reply(result, await this.smallContent(stored));
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
    }
    return new DfsError('UNAVAILABLE', `the copy of ${name} on ${this.id} is damaged; read another copy`);
  }

  private async write(args: FileArgs['write'], ctx: CallContext): Promise<WriteResult> {
    if (this.stopping) throw new DfsError('UNAVAILABLE', `server ${this.id} is shutting down`);
    if (args.size > this.options.maxFileBytes) throw new DfsError('TOO_LARGE', `${args.size} bytes is over this server's ${this.options.maxFileBytes}-byte file limit`);
    const inline = ctx.body;
    if (!ctx.stream && (inline?.length ?? 0) !== args.size) throw new DfsError('BAD_REQUEST', `size says ${args.size} bytes but ${inline?.length ?? 0} were sent`);
    const holding = await this.holdings.lookup(args.name, args.epoch);
    if (holding.role !== 'primary') throw new DfsError('NOT_PRIMARY', `${this.id} is not the primary for ${args.name}; its primary is ${holding.primary.id} at ${holding.primary.url}`);
    // The token is checked with the lock service while the content is staged, off the critical
    // path; nothing is committed until the answer is in.
    const lock = await this.lockService();
    let tokenProblem: DfsError | null | undefined;
    const validation = lock.call('validate', { name: args.name, token: args.token }).then(
      () => (tokenProblem = null),
      (err: unknown) => (tokenProblem = toDfsError(err)),
    );
    const checkToken = async () => {
      await validation;
      if (tokenProblem) throw tokenProblem;
    };

    return this.mutex.run(args.name, async () => {
      if (this.holdings.get(args.name)?.epoch !== holding.epoch) {
        throw new DfsError('NOT_FOUND', `${args.name} was deleted while this write waited its turn`);
      }
      const current = this.store.metaFor(args.name, holding.epoch);
      if (current.requestId === args.requestId) {
        // A retry of a write that already landed: answer as the first time, apply nothing.
        await ctx.stream?.drain();
        await checkToken();
        return { name: args.name, epoch: current.epoch, version: current.version, size: current.size, sha256: current.sha256, skipped: [] };
      }
      if (args.token < current.token) throw new DfsError('STALE_TOKEN', `token ${args.token} is older than the one that wrote v${current.version} of ${args.name}`);
      const version = current.version + 1;
      const mtime = Date.now();
      // Replicas start staging first: they are a round trip away, the local disk is not.
      const transfers = startReplication(
        this.peers,
        { holding, version, baseVersion: current.version, mode: args.mode, size: args.size, mtime, from: this.id, body: inline },
        this.options.log,
      );
      let staged: StagedVersion;
      try {
        staged = await this.store.stage(args.name, holding.epoch, version, args.mode);
      } catch (err) {
        abortReplicas(transfers, toDfsError(err));
        throw err;
      }
      let header: VersionHeader;
      try {
        let received = 0;
        const sent = args.sha256 ? createHash('sha256') : null;
        if (ctx.stream) {
          for await (const chunk of ctx.stream) {
            received += chunk.length;
            if (received > args.size) throw new DfsError('BAD_REQUEST', `more than the announced ${args.size} bytes were sent`);
            if (tokenProblem) throw tokenProblem;
            sent?.update(chunk);
            await Promise.all([staged.write(chunk), pushToReplicas(transfers, chunk)]);
          }
        } else if (inline) {
          received = inline.length;
          sent?.update(inline);
          await staged.write(inline);
        }
        if (received !== args.size) throw new DfsError('BAD_REQUEST', `announced ${args.size} bytes but ${received} arrived`);
        if (sent && sent.digest('hex') !== args.sha256) throw new DfsError('CHECKSUM', `the content of the write to ${args.name} does not match its sha256`);
        // Seal locally while the token answer comes in; the replicas' streams end (and they
        // seal theirs) as soon as the token is known good.
        const [sealed, checked] = await Promise.allSettled([
          staged.seal({ mtime, token: args.token, requestId: args.requestId }),
          checkToken().then(() => endReplicaStreams(transfers)),
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
      const skipped = await finishReplication(
        this.peers,
        transfers,
        { name: args.name, epoch: holding.epoch, version, sha256: header.sha256, from: this.id },
        async () => {
          await this.store.commit(staged, header);
        },
        this.options.log,
      );
      this.counters.writes++;
      this.counters.contentBytesReceived += args.size;
      for (const replica of skipped) await this.reportBehind(args.name, replica.id);
      return { name: args.name, epoch: holding.epoch, version, size: header.size, sha256: header.sha256, skipped: skipped.map((r) => r.id) };
    });
  }

  private async remove(args: FileArgs['delete']): Promise<{ deleted: true }> {
    if (this.stopping) throw new DfsError('UNAVAILABLE', `server ${this.id} is shutting down`);
    const holding = await this.holdings.lookup(args.name, args.epoch);
    if (holding.role !== 'primary') throw new DfsError('NOT_PRIMARY', `${this.id} is not the primary for ${args.name}; its primary is ${holding.primary.id}`);
    const lock = await this.lockService();
    await lock.call('validate', { name: args.name, token: args.token });
    return this.mutex.run(args.name, async () => {
      const conn = await this.directory();
      await conn.call('delete', { name: args.name, epoch: holding.epoch }).catch((err: unknown) => {
        if (!(err instanceof DfsError && err.code === 'NOT_FOUND')) throw err;
      });
      this.holdings.forget(args.name);
      await this.store.remove(args.name);
      await Promise.all(
        holding.replicas.map((replica) =>
          this.peers
            .get(replica.url)
            .then((c) => c.call('rep.delete', { name: args.name, epoch: holding.epoch, from: this.id }))
            .catch((err: unknown) => this.options.log.info('replica will drop the file when it catches up', { name: args.name, replica: replica.id, error: toDfsError(err).message })),
        ),
      );
      this.options.log.info('deleted', { name: args.name });
      return { deleted: true as const };
    });
  }

  private async replicaHolding(name: string, epoch: number, from: string): Promise<Holding> {
    const holding = await this.holdings.lookup(name, epoch);
    if (holding.role !== 'replica') throw new DfsError('BAD_REQUEST', `${this.id} is not a replica of ${name}`);
    if (holding.primary.id !== from) throw new DfsError('NOT_PRIMARY', `only ${name}'s primary ${holding.primary.id} may replicate it, not ${from}`);
    return holding;
  }

  private async replicaWrite(args: FileArgs['rep.write'], ctx: CallContext): Promise<PreparedResult> {
    const drain = async () => ctx.stream?.drain();
    try {
      await this.replicaHolding(args.name, args.epoch, args.from);
    } catch (err) {
      await drain().catch(() => {});
      throw err;
    }
    return this.mutex.run(args.name, async () => {
      const current = this.store.metaFor(args.name, args.epoch);
      if (args.version === current.version) {
        await drain();
        return { version: current.version, sha256: current.sha256, committed: true };
      }
      if (args.version !== current.version + 1 || args.baseVersion !== current.version) {
        await drain().catch(() => {});
        throw new DfsError('OUT_OF_ORDER', `${this.id} has v${current.version} of ${args.name}; cannot apply v${args.version} on v${args.baseVersion}`, { version: current.version });
      }
      this.dropPrepared(args.name);
      const staged = await this.store.stage(args.name, args.epoch, args.version, args.mode);
      try {
        const received = await staged.writeAll(ctx.stream, ctx.body);
        if (received !== args.size) throw new DfsError('BAD_REQUEST', `announced ${args.size} bytes but ${received} arrived`);
        const header = await staged.seal({ mtime: args.mtime, token: 0, requestId: '' });
        const timer = setTimeout(() => this.dropPrepared(args.name), PREPARED_TTL_MS);
        timer.unref();
        this.prepared.set(args.name, { staged, header, timer });
        return { version: header.version, sha256: header.sha256, committed: false };
      } catch (err) {
        await staged.discard();
        throw err;
      }
    });
  }

  private dropPrepared(name: string): void {
    const copy = this.prepared.get(name);
    if (!copy) return;
    this.prepared.delete(name);
    clearTimeout(copy.timer);
    void copy.staged.discard();
  }

  private async replicaCommit(args: FileArgs['rep.commit']): Promise<{ version: number }> {
    await this.replicaHolding(args.name, args.epoch, args.from);
    return this.mutex.run(args.name, async () => {
      const copy = this.prepared.get(args.name);
      if (!copy || copy.header.version !== args.version || copy.header.epoch !== args.epoch) {
        const current = this.store.metaFor(args.name, args.epoch);
        if (current.version === args.version) return { version: current.version };
        throw new DfsError('NOT_FOUND', `${this.id} has no prepared v${args.version} of ${args.name}`);
      }
      this.prepared.delete(args.name);
      clearTimeout(copy.timer);
      await this.store.commit(copy.staged, copy.header);
      this.counters.replicaWrites++;
      return { version: copy.header.version };
    });
  }

  private async replicaDelete(args: FileArgs['rep.delete']): Promise<{ deleted: boolean }> {
    const holding = this.holdings.get(args.name);
    if (holding && (holding.primary.id !== args.from || holding.epoch !== args.epoch)) {
      throw new DfsError('NOT_PRIMARY', `only ${args.name}'s primary ${holding.primary.id} may delete it, not ${args.from}`);
    }
    return this.mutex.run(args.name, async () => {
      this.dropPrepared(args.name);
      this.holdings.forget(args.name);
      this.suspect.delete(args.name);
      return { deleted: await this.store.remove(args.name) };
    });
  }

  // ------------------------------------------------------------ shutdown

  async close(): Promise<void> {
    this.stopping = true;
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    // Let writes under way finish (they are acknowledged only once durable), then stop.
    await Promise.race([this.mutex.idle(), new Promise((resolve) => setTimeout(resolve, 5000).unref())]);
    for (const name of [...this.prepared.keys()]) this.dropPrepared(name);
    await this.rpc.close();
    this.directoryPool.closeAll();
    this.peers.closeAll();
    await this.store.close();
  }
}
