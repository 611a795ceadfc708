/**
 * The client library: one directory URL in, files out. A DfsClient holds a session with the
 * directory and the lock service, connections to the file servers it talks to, and a cache.
 *
 * - Reads go to a replica the directory picks (round-robin), sending the cached version; an
 *   unchanged file comes back as NOT_MODIFIED, with no content.
 * - Writes go to the file's primary with the fencing token of the file's lock; a write without
 *   a lock held takes and releases one itself. After the write is acknowledged the cache holds
 *   the new content (write-through), so a client always reads its own writes.
 * - A lock the caller took (lock, withLock) is never replaced behind its back: once it has
 *   ended (lease lapsed, session not reclaimable after a lock-service restart, or a file server
 *   refused its token), every write under it fails with LOCK_LOST until it is unlocked
 *   (lock-client.ts keeps the session and reclaims it after a restart).
 * - Transient failures (a copy down, a connection lost) are retried with backoff on another
 *   copy within a bounded time. A retried write carries the same request id, so a write whose
 *   answer was lost is not applied twice.
 */
import { createHash, randomUUID } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, readFile, rename, stat as statFile, unlink } from 'node:fs/promises';
import { hostname, userInfo } from 'node:os';
import { LRUCache } from 'lru-cache';
import { DfsError, isTransient, toDfsError } from '../shared/errors.js';
import { assertValidName } from '../shared/names.js';
import { silentLogger, type Logger } from '../shared/log.js';
import { allPages } from '../shared/pages.js';
import { ConnectionPool } from '../shared/pool.js';
import type {
  InfoResult,
  ListResult,
  LocateResult,
  LockStatusResult,
  DrainResult,
  Placement,
  PlacementResult,
  RebalanceResult,
  QueuedEvent,
  ReadResult,
  StatusResult,
  WriteMode,
  WriteResult,
  FileMeta,
} from '../shared/protocol.js';
import { INLINE_CONTENT_BYTES } from '../shared/limits.js';
import { checkUrl, type RpcConnection, type Response } from '../shared/rpc.js';
import type { Transport } from '../shared/tls/transport.js';
import { ContentCache, type CachedFile } from './cache.js';
import { LockClient, type HeldLock } from './lock-client.js';

export interface DfsClientOptions {
  /** TLS with the cluster CA (client/credentials.ts finds it), or plain ws:// under --insecure. */
  transport: Transport;
  /** Shown to other clients as the holder of this client's locks (default user@host:pid). */
  clientName?: string;
  /** Bytes of file content the cache may hold (default 64 MiB). */
  cacheBytes?: number;
  /** How long a write waits for the file's lock by default (default 30 s). */
  lockTimeoutMs?: number;
  /** Total time spent retrying one operation across copies (default 15 s). */
  retryBudgetMs?: number;
  /** How long to keep trying to reach a restarted lock service to reclaim held locks (default 30 s). */
  reclaimBudgetMs?: number;
  /**
   * Told as soon as a lock the caller took is known to be lost (its writes will fail with
   * LOCK_LOST), so that a program can say so before its next write.
   */
  onLockLost?: (name: string, error: DfsError) => void;
  log?: Logger;
}

export interface ReadOutcome extends FileMeta {
  content: Buffer;
  /** `cache`: the server confirmed the cached version is current and sent no content. */
  source: 'cache' | 'server';
  /** The server that answered. */
  server: string;
}

export interface StatOutcome extends FileMeta {
  primary: string;
  copies: PlacementResult['copies'];
}

export interface LockHandle {
  name: string;
  token: number;
  release(): Promise<void>;
}

export interface LockOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Called with the place in line while waiting (1 = next). */
  onQueued?: (event: QueuedEvent) => void;
}

export interface WriteOptions {
  /** Wait this long for the lock when the client does not hold it already. */
  lockTimeoutMs?: number;
  onQueued?: (event: QueuedEvent) => void;
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
}

export interface ClusterStatus extends StatusResult {
  locks: LockStatusResult['locks'] | null;
}

interface WriteTarget {
  epoch: number;
  /** The placement the directory gave; a primary that knows an older one checks again. */
  placementEpoch: number;
  primaryUrl: string;
  primaryId: string;
}

/** What a write learned of its own fate: whether an attempt may have been applied unseen. */
interface WriteAttempt {
  /** An attempt's answer was lost (connection closed, timed out): it may have been applied. */
  uncertain: boolean;
}

/** How many times a write under a lock the library took is run again after losing that lock. */
const MAX_IMPLICIT_RUNS = 3;

/** A content source that can be opened again, so a write can be retried. */
type ContentSource = { kind: 'buffer'; content: Buffer } | { kind: 'stream'; size: number; open: () => AsyncIterable<Buffer> };

const sha256 = (content: Buffer) => createHash('sha256').update(content).digest('hex');

function defaultClientName(): string {
  let user = 'user';
  try {
    user = userInfo().username;
  } catch {
    // no passwd entry; keep the default
  }
  return `${user}@${hostname()}:${process.pid}`;
}

export class DfsClient {
  readonly directoryUrl: string;
  readonly clientName: string;
  readonly cache: ContentCache;
  private readonly pool: ConnectionPool;
  private readonly log: Logger;
  private readonly lockTimeoutMs: number;
  private readonly retryBudgetMs: number;
  private lockUrl: string | null = null;
  private readonly locks: LockClient;
  private readonly writeTargets = new Map<string, WriteTarget>();
  /** The newest version of each file this client has read or written: its reads never go back. */
  private readonly seen = new LRUCache<string, { epoch: number; version: number }>({ max: 100_000 });
  private closed = false;

  private constructor(directoryUrl: string, options: DfsClientOptions) {
    this.directoryUrl = directoryUrl;
    this.clientName = options.clientName ?? defaultClientName();
    this.cache = new ContentCache(options.cacheBytes ?? 64 << 20);
    this.log = options.log ?? silentLogger;
    this.lockTimeoutMs = options.lockTimeoutMs ?? 30_000;
    this.retryBudgetMs = options.retryBudgetMs ?? 15_000;
    this.pool = new ConnectionPool({ transport: options.transport, connectTimeoutMs: 5000, log: this.log });
    this.locks = new LockClient({
      lockUrl: async () => {
        if (!this.lockUrl) await this.directory();
        return this.lockUrl as string;
      },
      clientName: this.clientName,
      transport: options.transport,
      log: this.log,
      connectBudgetMs: this.retryBudgetMs,
      ...(options.reclaimBudgetMs !== undefined ? { reclaimBudgetMs: options.reclaimBudgetMs } : {}),
      ...(options.onLockLost ? { onLockLost: options.onLockLost } : {}),
    });
  }

  /** Connects to a cluster through its directory. UNAVAILABLE if the directory cannot be reached. */
  static async connect(directoryUrl: string, options: DfsClientOptions): Promise<DfsClient> {
    checkUrl(directoryUrl);
    const client = new DfsClient(directoryUrl, options);
    try {
      await client.directory();
    } catch (err) {
      client.close();
      throw err;
    }
    return client;
  }

  // ------------------------------------------------------------ connections and retries

  private async directory(): Promise<RpcConnection> {
    const conn = await this.pool.get(this.directoryUrl, { role: 'directory' });
    if (!this.lockUrl) {
      const info = (await conn.call('info', {})).result as InfoResult;
      this.lockUrl = info.lockUrl;
    }
    return conn;
  }

  private async callDirectory(op: string, args: unknown): Promise<unknown> {
    return this.retrying(`${op}`, async () => (await (await this.directory()).call(op, args)).result);
  }

  /** Runs attempt until it succeeds, fails for good, or the retry budget is spent. */
  private async retrying<T>(what: string, attempt: (tries: number) => Promise<T>, signal?: AbortSignal): Promise<T> {
    if (this.closed) throw new DfsError('CLOSED', 'this client is closed');
    const deadline = Date.now() + this.retryBudgetMs;
    let delay = 25;
    for (let tries = 0; ; tries++) {
      try {
        return await attempt(tries);
      } catch (err) {
        const error = toDfsError(err);
        if (!isTransient(error) || Date.now() + delay > deadline || signal?.aborted || this.closed) {
          if (isTransient(error) && tries > 0) throw new DfsError(error.code, `${error.message} (gave up on ${what} after ${tries + 1} tries)`, error.details);
          throw error;
        }
        this.log.debug('retrying', { what, error: error.message, delayMs: delay });
        await new Promise((resolve) => setTimeout(resolve, delay));
        delay = Math.min(delay * 2, 1000);
      }
    }
  }

  // ------------------------------------------------------------ names

  async create(name: string): Promise<Placement> {
    assertValidName(name);
    const conn = await this.retrying('create', () => this.directory());
    // create is not idempotent, so it is not retried once sent: EXISTS would hide a success.
    const placement = (await conn.call('create', { name })).result as Placement;
    this.writeTargets.set(name, { epoch: placement.epoch, placementEpoch: placement.placementEpoch, primaryUrl: placement.primary.url, primaryId: placement.primary.id });
    this.cache.delete(name);
    return placement;
  }

  async list(prefix?: string): Promise<string[]> {
    return allPages(
      async (after) => {
        const args: Record<string, unknown> = { limit: 10_000 };
        if (prefix) args.prefix = prefix;
        if (after !== undefined) args.after = after;
        const page = (await this.callDirectory('list', args)) as ListResult;
        return { items: page.names, more: page.more };
      },
      (name) => name,
    );
  }

  async status(): Promise<ClusterStatus> {
    const status = (await this.callDirectory('status', {})) as StatusResult;
    let locks: ClusterStatus['locks'] = null;
    try {
      locks = await this.locks.status();
    } catch {
      locks = null; // the lock service is down; say so rather than fail the whole status
    }
    return { ...status, locks };
  }

  /** Operators: drain, undrain or remove a file server (docs/PROTOCOL.md, "Re-replication"). */
  async server(action: 'drain' | 'undrain' | 'remove', id: string): Promise<DrainResult> {
    return (await (await this.directory()).call(action, { id })).result as DrainResult;
  }

  /** Operators: move primaries toward an even spread over the live servers. */
  async rebalance(): Promise<RebalanceResult> {
    return (await (await this.directory()).call('rebalance', {}, { timeoutMs: 600_000 })).result as RebalanceResult;
  }

  async stat(name: string): Promise<StatOutcome> {
    assertValidName(name);
    return this.retrying('stat', async () => {
      const placement = (await (await this.directory()).call('placement', { name })).result as PlacementResult;
      const loc = (await (await this.directory()).call('locate', { name, for: 'read' })).result as LocateResult;
      const meta = (await (await this.pool.get(loc.server.url, { role: 'file-server', id: loc.server.id })).call('stat', { name })).result as FileMeta;
      return { ...meta, primary: placement.primary.id, copies: placement.copies };
    });
  }

  // ------------------------------------------------------------ locks

  /**
   * Waits in line for name's lock and holds it until unlock. Writes under it use its token; once
   * it is lost they fail with LOCK_LOST (see onLockLost) until it is unlocked or locked again.
   */
  async lock(name: string, options: LockOptions = {}): Promise<LockHandle> {
    assertValidName(name);
    const inherited = this.locks.get(name);
    // Nested in a parent that holds it (dfs lock NAME -- dfs lock NAME -- ...), like flock(1).
    if (inherited?.kind === 'inherited' && !inherited.lost) return { name, token: inherited.token, release: async () => {} };
    const held = await this.takeLock(name, 'explicit', options);
    return { name, token: held.token, release: () => this.locks.release(held) };
  }

  /** Releases name's lock. LOCK_LOST, with what ended it, when it had been lost already. */
  async unlock(name: string): Promise<void> {
    assertValidName(name);
    const lock = this.locks.get(name);
    if (!lock) throw new DfsError('NOT_HOLDER', `this client does not hold the lock on ${name}`);
    await this.locks.release(lock);
  }

  /** True while this client holds name's lock and has not learned that it was lost. */
  holds(name: string): boolean {
    return this.lockState(name) === 'held';
  }

  /**
   * `lost`: the caller locked name and the lock has ended; writes under it fail with LOCK_LOST
   * until it is unlocked. A program that writes under its own lock checks this, not `holds`,
   * so that it does not take a fresh lock for a write meant to be under the lost one.
   */
  lockState(name: string): 'held' | 'lost' | 'none' {
    const lock = this.locks.get(name);
    if (lock === undefined || lock.kind === 'implicit') return 'none';
    return lock.lost === null ? 'held' : 'lost';
  }

  /**
   * Writes under name use `token`, the lock a parent process holds and passed down (`dfs lock
   * NAME -- CMD` does), instead of taking the lock; they fail with LOCK_LOST once it is stale.
   */
  adoptLock(name: string, token: number): void {
    assertValidName(name);
    this.locks.adopt(name, token);
  }

  /** Runs fn holding the lock on name, releasing it afterwards whatever happens. */
  async withLock<T>(name: string, fn: (lock: LockHandle) => Promise<T>, options: LockOptions = {}): Promise<T> {
    const lock = await this.lock(name, options);
    try {
      return await fn(lock);
    } finally {
      await lock.release().catch((err: unknown) => this.log.debug('release failed', { name, error: toDfsError(err).message }));
    }
  }

  private async takeLock(name: string, kind: 'explicit' | 'implicit', options: LockOptions): Promise<HeldLock> {
    if (this.closed) throw new DfsError('CLOSED', 'this client is closed');
    return this.locks.acquire(name, { kind, timeoutMs: options.timeoutMs ?? this.lockTimeoutMs, signal: options.signal, onQueued: options.onQueued });
  }

  // ------------------------------------------------------------ reads

  /** Reads a whole file, from the cache when the server confirms it is current. */
  async read(name: string): Promise<ReadOutcome> {
    assertValidName(name);
    let fromPrimary = false;
    return this.retrying('read', async () => {
      const loc = await this.readTarget(name, fromPrimary);
      const cached = this.cache.get(name);
      const args: Record<string, unknown> = { name, ...this.seenArgs(name, loc.epoch) };
      if (cached && cached.epoch === loc.epoch) {
        args.ifEpoch = cached.epoch;
        args.ifVersion = cached.version;
      }
      const conn = await this.pool.get(loc.server.url, { role: 'file-server', id: loc.server.id });
      const res = await conn.call('read', args).catch((err: unknown) => {
        // Every replica may lag what this client saw (the primary died between its replicas'
        // commits): the primary's copy is the file's history, so the next try asks it.
        if (err instanceof DfsError && err.details?.behind === true) fromPrimary = true;
        throw err;
      });
      const meta = res.result as ReadResult;
      if (meta.notModified && cached) return { ...metaOf(cached), content: cached.content, source: 'cache', server: loc.server.id };
      const content = await bodyOf(res, meta.size);
      if (sha256(content) !== meta.sha256) throw new DfsError('UNAVAILABLE', `content of ${name} from ${loc.server.id} failed its checksum; trying another copy`);
      const entry: CachedFile = { ...metaOf(meta), content };
      this.cache.set(entry);
      this.noteSeen(name, meta.epoch, meta.version);
      return { ...metaOf(meta), content, source: 'server', server: loc.server.id };
    });
  }

  /** Where to read `name`: a replica the directory picks, or its primary. */
  private async readTarget(name: string, fromPrimary: boolean): Promise<LocateResult> {
    const conn = await this.directory();
    return (await conn.call('locate', { name, for: fromPrimary ? 'write' : 'read' }).catch((err: unknown) => {
      if (err instanceof DfsError && err.code === 'NOT_FOUND') this.forget(name);
      throw err;
    })).result as LocateResult;
  }

  /** The newest version of `name` this client has seen, for a read to ask no less of a replica. */
  private seenArgs(name: string, epoch: number): Record<string, number> {
    const seen = this.seen.get(name);
    return seen && seen.epoch === epoch ? { minEpoch: seen.epoch, minVersion: seen.version } : {};
  }

  private noteSeen(name: string, epoch: number, version: number): void {
    const seen = this.seen.get(name);
    if (!seen || seen.epoch !== epoch || seen.version < version) this.seen.set(name, { epoch, version });
  }

  /**
   * Streams a file of any size without holding it in memory (and without caching it). The
   * sha256 is checked as the content passes; a mismatch fails the stream at its end.
   */
  async readStream(name: string): Promise<{ meta: FileMeta; server: string; stream: AsyncIterable<Buffer> }> {
    assertValidName(name);
    let fromPrimary = false;
    return this.retrying('read', async () => {
      const loc = await this.readTarget(name, fromPrimary);
      const conn = await this.pool.get(loc.server.url, { role: 'file-server', id: loc.server.id });
      const res = await conn.call('read', { name, ...this.seenArgs(name, loc.epoch) }).catch((err: unknown) => {
        if (err instanceof DfsError && err.details?.behind === true) fromPrimary = true;
        throw err;
      });
      const meta = metaOf(res.result as ReadResult);
      this.noteSeen(name, meta.epoch, meta.version);
      async function* verified(): AsyncIterable<Buffer> {
        const hash = createHash('sha256');
        let size = 0;
        if (res.stream) {
          for await (const chunk of res.stream) {
            hash.update(chunk);
            size += chunk.length;
            yield chunk;
          }
        } else if (res.body) {
          hash.update(res.body);
          size = res.body.length;
          yield res.body;
        }
        if (size !== meta.size || hash.digest('hex') !== meta.sha256) throw new DfsError('CHECKSUM', `content of ${name} from ${loc.server.id} does not match its sha256`);
      }
      return { meta, server: loc.server.id, stream: verified() };
    });
  }

  /** Copies a file to a local path, whatever its size; the local file is replaced only when whole and verified. */
  async readToFile(name: string, path: string, onProgress?: (done: number, total: number) => void): Promise<FileMeta> {
    const temp = `${path}.dfs-${process.pid}.tmp`;
    const { meta, stream } = await this.readStream(name);
    const handle = await open(temp, 'w');
    try {
      let done = 0;
      for await (const chunk of stream) {
        await handle.write(chunk);
        done += chunk.length;
        onProgress?.(done, meta.size);
      }
      await handle.sync();
      await handle.close();
      await rename(temp, path);
      return meta;
    } catch (err) {
      await handle.close().catch(() => {});
      await unlink(temp).catch(() => {});
      throw err;
    }
  }

  // ------------------------------------------------------------ writes

  /** Replaces a file's content. */
  write(name: string, content: Buffer | string, options: WriteOptions = {}): Promise<WriteResult> {
    const buffer = typeof content === 'string' ? Buffer.from(content, 'utf8') : content;
    return this.writeSource(name, 'replace', { kind: 'buffer', content: buffer }, options);
  }

  /** Appends to a file. A retried append is applied once. */
  append(name: string, content: Buffer | string, options: WriteOptions = {}): Promise<WriteResult> {
    const buffer = typeof content === 'string' ? Buffer.from(content, 'utf8') : content;
    return this.writeSource(name, 'append', { kind: 'buffer', content: buffer }, options);
  }

  /** Writes a local file's content (any size, streamed) as the file's new content, or appends it. */
  async writeFromFile(name: string, path: string, options: WriteOptions & { mode?: WriteMode } = {}): Promise<WriteResult> {
    const { size } = await statFile(path);
    const source: ContentSource =
      size <= INLINE_CONTENT_BYTES
        ? { kind: 'buffer', content: await readFile(path) }
        : { kind: 'stream', size, open: () => createReadStream(path, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer> };
    return this.writeSource(name, options.mode ?? 'replace', source, options);
  }

  /** Writes content produced by `open` (called again on a retry), of a known size. */
  writeStream(name: string, size: number, open: () => AsyncIterable<Buffer>, options: WriteOptions & { mode?: WriteMode } = {}): Promise<WriteResult> {
    return this.writeSource(name, options.mode ?? 'replace', { kind: 'stream', size, open }, options);
  }

  async delete(name: string, options: WriteOptions = {}): Promise<void> {
    assertValidName(name);
    await this.underLock(name, options, async (token, attempt) => {
      await this.retrying('delete', async () => {
        const target = await this.writeTarget(name);
        try {
          await (await this.pool.get(target.primaryUrl, { role: 'file-server', id: target.primaryId })).call('delete', { name, epoch: target.epoch, token });
        } catch (err) {
          this.onWriteError(name, err, attempt);
        }
      });
    });
    this.forget(name);
  }

  private async writeSource(name: string, mode: WriteMode, source: ContentSource, options: WriteOptions): Promise<WriteResult> {
    assertValidName(name);
    const requestId = randomUUID();
    return this.underLock(name, options, (token, attempt) => this.writeWithToken(name, mode, source, token, requestId, options, attempt));
  }

  /**
   * Runs fn with the fencing token of name's lock: the one held, or one taken for the call.
   *
   * Under a held lock, a lost lock fails the write with LOCK_LOST (a file server's STALE_TOKEN
   * means just that). Under a lock taken for the call, the caller was promised the write, not a
   * lock: a write that lost its lock is run again under a fresh one, but only when no attempt of
   * it can have been applied (every answer came back); otherwise it is LOCK_LOST, saying so.
   */
  private async underLock<T>(name: string, options: WriteOptions, fn: (token: number, attempt: WriteAttempt) => Promise<T>): Promise<T> {
    const held = this.locks.get(name);
    if (held) return this.underHeldLock(held, fn);
    const lockOptions: LockOptions = { timeoutMs: options.lockTimeoutMs ?? this.lockTimeoutMs, signal: options.signal, onQueued: options.onQueued };
    for (let run = 1; ; run++) {
      const lock = await this.takeLock(name, 'implicit', lockOptions);
      const attempt: WriteAttempt = { uncertain: false };
      try {
        return await fn(lock.token, attempt);
      } catch (err) {
        const lost = this.lossOf(lock, err, attempt);
        if (!lost) throw err;
        if (attempt.uncertain || run >= MAX_IMPLICIT_RUNS) throw lost;
        this.log.info('the lock taken for a write ended before the write was applied; running it again under a new lock', { name, run });
      } finally {
        await this.locks.release(lock).catch((err: unknown) => this.log.debug('release failed', { name, error: toDfsError(err).message }));
      }
    }
  }

  private async underHeldLock<T>(lock: HeldLock, fn: (token: number, attempt: WriteAttempt) => Promise<T>): Promise<T> {
    const attempt: WriteAttempt = { uncertain: false };
    if (lock.lost) throw this.lossOf(lock, lock.lost, attempt)!;
    try {
      return await fn(lock.token, attempt);
    } catch (err) {
      throw this.lossOf(lock, err, attempt) ?? err;
    }
  }

  /**
   * The LOCK_LOST a failed write under `lock` stands for, or null when it failed for another
   * reason. STALE_TOKEN from a file server marks the lock lost.
   */
  private lossOf(lock: HeldLock, err: unknown, attempt: WriteAttempt): DfsError | null {
    const error = toDfsError(err);
    if (error.code === 'STALE_TOKEN') this.locks.lose(lock, `a file server refused its fencing token ${lock.token} (${error.message})`);
    if (!lock.lost || (error.code !== 'STALE_TOKEN' && error.code !== 'LOCK_LOST' && !isTransient(error))) return null;
    const outcome = attempt.uncertain
      ? `an earlier attempt of this write may have been applied before the lock ended; read ${lock.name} to check`
      : `nothing was written to ${lock.name}`;
    return new DfsError('LOCK_LOST', `${lock.lost.message}; ${outcome}`, { name: lock.name, token: lock.token, mayHaveApplied: attempt.uncertain });
  }

  private async writeTarget(name: string): Promise<WriteTarget> {
    const known = this.writeTargets.get(name);
    if (known) return known;
    const loc = (await (await this.directory()).call('locate', { name, for: 'write' })).result as LocateResult;
    const target = { epoch: loc.epoch, placementEpoch: loc.placementEpoch, primaryUrl: loc.server.url, primaryId: loc.server.id };
    this.writeTargets.set(name, target);
    return target;
  }

  /** Drops what a failed write says is out of date, notes an answer that was lost, and rethrows. */
  private onWriteError(name: string, err: unknown, attempt: WriteAttempt): never {
    const error = toDfsError(err);
    if (error.code === 'CLOSED' || error.code === 'TIMEOUT') attempt.uncertain = true;
    if (error.code === 'NOT_PRIMARY' || error.code === 'NOT_FOUND' || isTransient(error)) this.writeTargets.delete(name);
    if (error.code === 'NOT_PRIMARY') throw new DfsError('UNAVAILABLE', error.message); // relocate and retry
    throw error;
  }

  private async writeWithToken(name: string, mode: WriteMode, source: ContentSource, token: number, requestId: string, options: WriteOptions, attempt: WriteAttempt): Promise<WriteResult> {
    const size = source.kind === 'buffer' ? source.content.length : source.size;
    // Hashed once: every attempt sends it, and the cache update compares against it.
    const contentSha = source.kind === 'buffer' ? sha256(source.content) : undefined;
    const result = await this.retrying(
      mode,
      async () => {
        const target = await this.writeTarget(name);
        const args: Record<string, unknown> = { name, epoch: target.epoch, placementEpoch: target.placementEpoch, token, mode, size, requestId };
        try {
          const conn = await this.pool.get(target.primaryUrl, { role: 'file-server', id: target.primaryId });
          if (source.kind === 'buffer') {
            args.sha256 = contentSha;
            if (size <= INLINE_CONTENT_BYTES) return (await conn.call('write', args, { body: source.content, timeoutMs: 60_000 })).result as WriteResult;
            return (await conn.call('write', args, { stream: progress(chunked(source.content), size, options.onProgress), timeoutMs: 120_000 })).result as WriteResult;
          }
          return (await conn.call('write', args, { stream: progress(source.open(), size, options.onProgress), timeoutMs: 120_000 })).result as WriteResult;
        } catch (err) {
          return this.onWriteError(name, err, attempt);
        }
      },
      options.signal,
    );
    this.updateCacheAfterWrite(name, mode, source, contentSha, result);
    this.noteSeen(name, result.epoch, result.version);
    return result;
  }

  /** Write-through: the cache holds what the server now holds, or nothing. */
  private updateCacheAfterWrite(name: string, mode: WriteMode, source: ContentSource, contentSha: string | undefined, result: WriteResult): void {
    if (source.kind !== 'buffer') {
      this.cache.delete(name);
      return;
    }
    let content: Buffer | null = null;
    let contentHash = contentSha;
    if (mode === 'replace') content = source.content;
    else {
      const cached = this.cache.get(name);
      if (cached && cached.epoch === result.epoch && cached.version === result.version - 1) {
        content = Buffer.concat([cached.content, source.content]);
        contentHash = sha256(content);
      }
    }
    if (content && content.length === result.size && contentHash === result.sha256) {
      this.cache.set({ name, epoch: result.epoch, version: result.version, size: result.size, sha256: result.sha256, mtime: Date.now(), content });
    } else {
      this.cache.delete(name);
    }
  }

  private forget(name: string): void {
    this.cache.delete(name);
    this.writeTargets.delete(name);
    this.seen.delete(name);
  }

  /** Closes every connection; the lock service frees any lock still held. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.locks.close();
    this.pool.closeAll();
  }
}

function metaOf(m: FileMeta): FileMeta {
  return { name: m.name, epoch: m.epoch, version: m.version, size: m.size, sha256: m.sha256, mtime: m.mtime };
}

async function bodyOf(res: Response, size: number): Promise<Buffer> {
  if (res.stream) return res.stream.collect(size);
  return res.body ?? Buffer.alloc(0);
}

function* chunked(content: Buffer): Iterable<Buffer> {
  for (let offset = 0; offset < content.length; offset += 1 << 20) yield content.subarray(offset, offset + (1 << 20));
}

async function* progress(source: AsyncIterable<Buffer> | Iterable<Buffer>, total: number, onProgress?: (done: number, total: number) => void): AsyncIterable<Buffer> {
  let done = 0;
  for await (const chunk of source) {
    done += chunk.length;
    onProgress?.(done, total);
    yield chunk;
  }
}
