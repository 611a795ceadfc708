/**
 * The lock service: the lock table, the sessions, the fencing counter and the holder journal,
 * served over the RPC layer.
 *
 * A session belongs to the connection that opened it (`hello`). When the connection closes (the
 * client exits or is killed) or its lease lapses (it stops answering pings: frozen, or cut off),
 * the session ends at once: its locks are freed, its waits dropped, and the next waiters granted.
 *
 * A restart is different: the holders are on disk (holder-store.ts), so the sessions that held
 * locks come back as orphans for a grace period of one lease, their tokens still valid and their
 * names granted to nobody else; their clients reclaim them on a new connection with the session
 * secret. Orphans nobody reclaims end when the grace period does.
 *
 * A grant is told to its client only once its journal record is durable, and grants and `queued`
 * events go out in bounded batches that yield to the event loop (delivery.ts), in FIFO order.
 */
import { randomBytes } from 'node:crypto';
import { DfsError } from '../../shared/errors.js';
import type { ConnectionLimits } from '../../shared/args.js';
import type { Logger } from '../../shared/log.js';
import { RpcServer, op, type CallContext, type RpcConnection } from '../../shared/rpc.js';
import {
  lockOps,
  type AcquireResult,
  type HeldResult,
  type HelloResult,
  type LockStatusResult,
  type QueuedEvent,
  type ReclaimResult,
} from '../../shared/protocol.js';
import type { RunningService } from '../../shared/service.js';
import { BatchedDelivery } from './delivery.js';
import { FencingCounter } from './fencing.js';
import type { SessionEntry } from './holder-state.js';
import { HolderStore, type Restored } from './holder-store.js';
import { DEFAULT_LIMITS, LockTable, NO_HOLDER, describeSession, ordinal, type Changes, type Waiter } from './lock-table.js';
import { SessionRegistry, hashSecret, type Session } from './sessions.js';
import { requireService } from '../../shared/auth/peers.js';
import type { Transport } from '../../shared/tls/transport.js';

export const DEFAULT_LEASE_MS = 3000;
export const MIN_LEASE_MS = 100;
/** A dead client's locks must come free within seconds. */
export const MAX_LEASE_MS = 5000;
export const MAX_GRACE_MS = 60_000;

export interface LockServiceOptions {
  /** TLS with the lock service's certificate (the default), or --insecure. */
  transport: Transport;
  host: string;
  port: number;
  /** Folder for `fencing.json`, `holders.json` and `holders.journal`. */
  dataDir: string;
  /** A session silent this long is dropped and its locks freed. */
  leaseMs?: number;
  /** After a restart, how long restored holders keep their locks for their clients to reclaim (default: the lease). */
  graceMs?: number;
  maxLocksPerSession?: number;
  maxWaitsPerSession?: number;
  log: Logger;
  maxMessageBytes?: number;
  connections?: ConnectionLimits;
  /** Grants can no longer be made durable (the journal's disk failed): the process should exit. */
  onFatal?: (err: Error) => void;
}

/** An acquire request waiting in line. */
interface PendingAcquire {
  readonly ctx: CallContext;
  readonly timeoutMs: number;
  readonly startedAt: number;
  timer: NodeJS.Timeout | undefined;
  onAbort: () => void;
  /** A `queued` event for this waiter is in the delivery queue (it reads the position when sent). */
  eventQueued: boolean;
  resolve(result: AcquireResult): void;
  reject(err: DfsError): void;
}

type Delivery = { readonly kind: 'grant'; readonly waiter: Waiter<PendingAcquire>; readonly token: number } | { readonly kind: 'queued'; readonly waiter: Waiter<PendingAcquire> };

const SESSION_KEY = 'lock.session';
const SECRET_KEY = 'lock.secret';

export class LockService implements RunningService {
  private readonly table: LockTable<PendingAcquire>;
  private readonly sessions: SessionRegistry;
  private readonly deliveries: BatchedDelivery<Delivery>;
  private readonly server: RpcServer;
  private readonly log: Logger;
  private readonly debug: boolean;
  private readonly leaseMs: number;
  private readonly graceMs: number;
  private graceTimer: NodeJS.Timeout | null = null;
  private stopping = false;

  private constructor(
    options: LockServiceOptions,
    private readonly fencing: FencingCounter,
    private readonly store: HolderStore,
    restored: Restored,
  ) {
    this.log = options.log;
    this.debug = options.log.enabled('debug');
    this.leaseMs = options.leaseMs ?? DEFAULT_LEASE_MS;
    this.graceMs = options.graceMs ?? this.leaseMs;
    this.table = new LockTable<PendingAcquire>(() => fencing.issue(), Date.now, {
      maxHeldPerSession: options.maxLocksPerSession ?? DEFAULT_LIMITS.maxHeldPerSession,
      maxWaitsPerSession: options.maxWaitsPerSession ?? DEFAULT_LIMITS.maxWaitsPerSession,
    });
    this.sessions = new SessionRegistry(Date.now, () => randomBytes(6).toString('hex'));
    this.deliveries = new BatchedDelivery<Delivery>(
      (item) => this.deliver(item),
      undefined,
      undefined,
      (err) => this.log.error('delivery failed', { error: err instanceof Error ? err.message : String(err) }),
    );
    this.restore(restored);
    // Grants held up by a token reservation go out as soon as it is durable.
    fencing.onAvailable(() => this.apply(this.table.resume()));
    this.server = new RpcServer({
      transport: options.transport,
      host: options.host,
      port: options.port,
      log: options.log,
      maxMessageBytes: options.maxMessageBytes,
      ...options.connections,
      deadAfterMs: this.leaseMs,
      pingIntervalMs: Math.max(25, Math.floor(this.leaseMs / 4)),
      handlers: {
        hello: op(lockOps.hello, (args, ctx) => this.hello(args.client, ctx.conn)),
        reclaim: op(lockOps.reclaim, (args, ctx) => this.reclaim(args.session, args.secret, args.client, ctx.conn)),
        acquire: op(lockOps.acquire, (args, ctx) => this.acquire(args.name, args.timeoutMs, ctx)),
        release: op(lockOps.release, (args, ctx) => this.release(args.name, args.token, ctx.conn)),
        validate: op(lockOps.validate, (args, ctx) => {
          requireService(ctx.conn, 'validate', 'file-server');
          if (this.table.validate(args.name, args.token)) return { valid: true };
          throw this.staleToken(args.name, args.token);
        }),
        status: op(lockOps.status, (args): LockStatusResult => {
          const page = this.table.statusPage({ name: args.name, after: args.after });
          return { locks: page.items, more: page.more };
        }),
        held: op(lockOps.held, (args, ctx): HeldResult => {
          const session = sessionOf(ctx.conn);
          if (!session) return { locks: [], more: false };
          const page = this.table.heldPage(session, args.after);
          return { locks: page.items, more: page.more };
        }),
      },
    });
  }

  static async start(options: LockServiceOptions): Promise<LockService> {
    const leaseMs = options.leaseMs ?? DEFAULT_LEASE_MS;
    if (!Number.isInteger(leaseMs) || leaseMs < MIN_LEASE_MS || leaseMs > MAX_LEASE_MS) {
      throw new DfsError('BAD_REQUEST', `the lease must be from ${MIN_LEASE_MS} to ${MAX_LEASE_MS} ms, not ${leaseMs}`);
    }
    const graceMs = options.graceMs ?? leaseMs;
    if (!Number.isInteger(graceMs) || graceMs < 0 || graceMs > MAX_GRACE_MS) throw new DfsError('BAD_REQUEST', `the grace period must be from 0 to ${MAX_GRACE_MS} ms, not ${graceMs}`);
    const fencing = await FencingCounter.open(options.dataDir, { log: options.log });
    let service: LockService;
    let restored: Restored;
    try {
      const opened = await HolderStore.open(options.dataDir, { log: options.log, onFailure: (err) => options.onFatal?.(err) });
      const store = opened.store;
      restored = opened.restored;
      const newest = restored.holders.reduce((max, h) => Math.max(max, h.token), 0);
      if (newest > fencing.lastIssued) {
        await store.close();
        throw new DfsError('INTERNAL', `the lock journal holds token ${newest} but fencing.json only reaches ${fencing.lastIssued}: fencing.json is older than the journal; restore it rather than reissue tokens`);
      }
      service = new LockService(options, fencing, store, restored);
    } catch (err) {
      await fencing.close();
      throw err;
    }
    try {
      await service.server.listen();
    } catch (err) {
      await service.store.close().catch(() => {});
      await fencing.close();
      throw err;
    }
    service.startGrace();
    options.log.info('listening', {
      url: service.url,
      data: options.dataDir,
      leaseMs,
      nextToken: fencing.lastIssued + 1,
      locksRestored: restored.holders.length || undefined,
      graceMs: restored.holders.length ? graceMs : undefined,
    });
    return service;
  }

  get url(): string {
    return this.server.url;
  }

  get port(): number {
    return this.server.port;
  }

  /** Closes every connection but keeps every session on disk: a restart gives them back. */
  async close(): Promise<void> {
    this.stopping = true;
    if (this.graceTimer) clearTimeout(this.graceTimer);
    this.graceTimer = null;
    await this.server.close();
    try {
      await this.store.close();
    } finally {
      await this.fencing.close();
    }
  }

  // ------------------------------------------------------------ sessions

  private restore(restored: Restored): void {
    const orphans = new Map(this.sessions.restore(restored.sessions, this.graceMs).map((s) => [s.id, s]));
    for (const holder of restored.holders) this.table.adopt(holder.name, orphans.get(holder.session)!, holder.token, holder.since);
  }

  private startGrace(): void {
    // Nothing restored, nothing to keep.
    if (this.sessions.size === 0) return;
    this.graceTimer = setTimeout(() => this.endGrace(), this.sessions.graceLeftMs);
  }

  private endGrace(): void {
    this.graceTimer = null;
    const expired = this.sessions.expireOrphans();
    // A timer may fire a little early; the registry's clock decides.
    if (expired.length === 0 && this.sessions.graceLeftMs > 0) {
      this.graceTimer = setTimeout(() => this.endGrace(), this.sessions.graceLeftMs);
      return;
    }
    let locksFreed = 0;
    for (const session of expired) {
      const dropped = this.table.dropSession(session);
      locksFreed += dropped.released.length;
      this.store.end(session.id);
      this.apply(dropped.changes);
    }
    this.log.info('grace period over', { sessionsDropped: expired.length, locksFreed });
  }

  private hello(client: string, conn: RpcConnection): HelloResult {
    let session = sessionOf(conn);
    let secret = conn.session.get(SECRET_KEY) as string | undefined;
    if (session && secret === undefined) {
      // A session that acquired before saying hello gets its secret now.
      secret = newSecret();
      session.secretHash = hashSecret(secret);
      conn.session.set(SECRET_KEY, secret);
    }
    if (session) {
      session.label = client;
      conn.label = client;
    } else {
      secret = newSecret();
      session = this.sessions.open(client, hashSecret(secret));
      this.attach(conn, session, secret);
      if (this.debug) this.log.debug('session opened', { session: session.id, client, remote: conn.remote });
    }
    this.store.session(entryOf(session));
    return { session: session.id, secret: secret! };
  }

  private reclaim(id: string, secret: string, client: string, conn: RpcConnection): ReclaimResult {
    const current = sessionOf(conn);
    if (current) throw new DfsError('BAD_REQUEST', `this connection already has session ${current.id}; reclaim on a new connection, before hello`);
    const session = this.sessions.reclaim(id, secret);
    session.label = client;
    this.store.session(entryOf(session));
    this.attach(conn, session, secret);
    const held = this.table.heldCount(session);
    this.log.info('session reclaimed', { session: id, client, locks: held, graceLeftMs: this.sessions.graceLeftMs });
    if (this.sessions.graceLeftMs === 0 && this.graceTimer) {
      clearTimeout(this.graceTimer);
      this.graceTimer = null;
      this.log.info('grace period over: every restored session was reclaimed');
    }
    return { session: id, held };
  }

  /** The connection's session; one without a secret for a client that acquires before hello. */
  private sessionFor(conn: RpcConnection): Session {
    const existing = sessionOf(conn);
    if (existing) return existing;
    const session = this.sessions.open('', null);
    this.attach(conn, session);
    this.store.session(entryOf(session));
    return session;
  }

  private attach(conn: RpcConnection, session: Session, secret?: string): void {
    conn.session.set(SESSION_KEY, session);
    if (secret !== undefined) conn.session.set(SECRET_KEY, secret);
    conn.label = session.label;
    conn.onClose((err) => this.endSession(session, err));
  }

  private endSession(session: Session, err: DfsError): void {
    // A clean stop keeps every session on disk for the restart.
    if (this.stopping) return;
    const dropped = this.table.dropSession(session);
    this.sessions.end(session);
    this.store.end(session.id);
    this.apply(dropped.changes);
    // rpc.ts marks the end of a connection whose peer went silent for the lease.
    const leaseExpired = err.details?.silent === true;
    const fields = {
      session: session.id,
      client: session.label || undefined,
      locksFreed: dropped.released.length,
      waitsDropped: dropped.waitsDropped || undefined,
      names: dropped.released.length ? dropped.released.slice(0, 10).join(',') : undefined,
      reason: err.message,
    };
    if (leaseExpired) this.log.warn('lease expired, session dropped', fields);
    else if (dropped.released.length > 0) this.log.info('session dropped', fields);
    else if (this.debug) this.log.debug('session closed', fields);
  }

  // ------------------------------------------------------------ locks

  private acquire(name: string, timeoutMs: number, ctx: CallContext): AcquireResult | Promise<AcquireResult> {
    const session = this.sessionFor(ctx.conn);
    const outcome = this.table.acquire(name, session, timeoutMs > 0);
    switch (outcome.kind) {
      case 'granted': {
        const { token } = outcome;
        if (this.debug) this.log.debug(outcome.again ? 'granted again' : 'granted', { name, token, session: session.id });
        if (outcome.again) return { name, token };
        return this.store.grant([{ name, session: session.id, token, since: this.table.holder(name)?.since ?? Date.now() }]).then(() => ({ name, token }));
      }
      case 'busy': {
        // Free, but no fencing token can be issued until the next block is on disk: not LOCKED.
        if (outcome.holder === NO_HOLDER && outcome.waiting === 0) throw new DfsError('UNAVAILABLE', `${name} is free, but no fencing token can be issued this instant (the disk is slow to reserve more); try again`);
        const waiting = outcome.waiting > 0 ? `, ${outcome.waiting} waiting` : '';
        throw new DfsError('LOCKED', `${name} is locked by ${outcome.holder}${waiting}`, { holder: outcome.holder, waiting: outcome.waiting });
      }
      case 'queued':
        return this.waitInLine(outcome.waiter, timeoutMs, ctx);
    }
  }

  private release(name: string, token: number | undefined, conn: RpcConnection): { name: string } {
    const session = sessionOf(conn);
    if (!session) throw new DfsError('NOT_HOLDER', `${name}: this connection has no session, so it holds no lock; nothing released`);
    const held = this.table.holder(name);
    const changes = this.table.release(name, session, token);
    this.store.release(name, held!.token);
    if (this.debug) this.log.debug('released', { name, session: session.id });
    this.apply(changes);
    return { name };
  }

  private waitInLine(waiter: Waiter<PendingAcquire>, timeoutMs: number, ctx: CallContext): Promise<AcquireResult> {
    return new Promise<AcquireResult>((resolve, reject) => {
      const pending: PendingAcquire = {
        ctx,
        timeoutMs,
        startedAt: Date.now(),
        timer: undefined,
        onAbort: () => this.leaveLine(waiter, new DfsError('CANCELLED', `acquire of ${waiter.name} cancelled; left the line`)),
        eventQueued: false,
        resolve,
        reject,
      };
      waiter.data = pending;
      if (ctx.signal.aborted) {
        pending.onAbort();
        return;
      }
      ctx.signal.addEventListener('abort', pending.onAbort, { once: true });
      pending.timer = setTimeout(() => this.timeOut(waiter), timeoutMs);
      if (this.debug) this.log.debug('queued', { name: waiter.name, session: waiter.session.id, position: waiter.position });
      this.tellPosition(waiter);
    });
  }

  private timeOut(waiter: Waiter<PendingAcquire>): void {
    const pending = waiter.data;
    if (!pending) return;
    const holder = this.table.holderOf(waiter.name);
    const position = waiter.position;
    this.leaveLine(
      waiter,
      new DfsError('TIMEOUT', `waited ${pending.timeoutMs} ms for ${waiter.name}; held by ${holder}, you were ${ordinal(position)} in line`, { holder, position }),
    );
  }

  /** Takes a waiter out of line (timeout, cancel, closed connection) and fails its request. */
  private leaveLine(waiter: Waiter<PendingAcquire>, err: DfsError): void {
    const changes = this.table.cancel(waiter);
    // Null: already granted; that grant answers the request (once durable).
    if (changes === null) return;
    const pending = waiter.data!;
    this.settle(pending);
    if (this.debug) this.log.debug('left the line', { name: waiter.name, session: waiter.session.id, why: err.code });
    pending.reject(err);
    this.apply(changes);
  }

  /**
   * Grants go out once their journal records are durable, then the moved waiters are told their
   * new places; all through the batched delivery queue, in order.
   */
  private apply(changes: Changes<PendingAcquire>): void {
    const { granted, moved } = changes;
    if (granted.length === 0) {
      for (const waiter of moved) this.queueEvent(waiter);
      return;
    }
    // Granted: no timeout or cancel can take these waiters out of line any more.
    for (const { waiter } of granted) this.settle(waiter.data!);
    const records = granted.map(({ waiter, token }) => ({ name: waiter.name, session: waiter.session.id, token, since: this.table.holder(waiter.name)?.since ?? Date.now() }));
    this.store.grant(records).then(
      () => {
        for (const { waiter, token } of granted) this.deliveries.push({ kind: 'grant', waiter, token });
        for (const waiter of moved) this.queueEvent(waiter);
      },
      (err: unknown) => {
        const error = new DfsError('INTERNAL', `the grant could not be recorded durably: ${err instanceof Error ? err.message : String(err)}`);
        for (const { waiter } of granted) waiter.data!.reject(error);
      },
    );
  }

  private queueEvent(waiter: Waiter<PendingAcquire>): void {
    const pending = waiter.data;
    if (!pending || !waiter.waiting || pending.eventQueued) return;
    pending.eventQueued = true;
    this.deliveries.push({ kind: 'queued', waiter });
  }

  private deliver(item: Delivery): void {
    const pending = item.waiter.data!;
    if (item.kind === 'grant') {
      if (this.debug) this.log.debug('granted', { name: item.waiter.name, token: item.token, session: item.waiter.session.id, waitedMs: Date.now() - pending.startedAt });
      pending.resolve({ name: item.waiter.name, token: item.token });
      return;
    }
    pending.eventQueued = false;
    if (item.waiter.waiting) this.tellPosition(item.waiter);
  }

  private tellPosition(waiter: Waiter<PendingAcquire>): void {
    const event: QueuedEvent = { name: waiter.name, position: waiter.position, holder: this.table.holderOf(waiter.name) };
    waiter.data!.ctx.event('queued', event);
  }

  private settle(pending: PendingAcquire): void {
    if (pending.timer) clearTimeout(pending.timer);
    pending.timer = undefined;
    pending.ctx.signal.removeEventListener('abort', pending.onAbort);
  }

  private staleToken(name: string, token: number): DfsError {
    const holder = this.table.holder(name);
    if (holder === null) return new DfsError('STALE_TOKEN', `token ${token} is not valid for ${name}: nobody holds its lock now; acquire it again`);
    return new DfsError('STALE_TOKEN', `token ${token} is not the current token for ${name}, which is held by ${describeSession(holder.session)} under another token`, {
      holder: describeSession(holder.session),
    });
  }
}

function sessionOf(conn: RpcConnection): Session | undefined {
  return conn.session.get(SESSION_KEY) as Session | undefined;
}

function newSecret(): string {
  return randomBytes(24).toString('base64url');
}

function entryOf(session: Session): SessionEntry {
  return { id: session.id, label: session.label, secretHash: session.secretHash };
}
