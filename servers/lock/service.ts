/**
 * The lock service: the lock table and the fencing counter, served over the RPC layer.
 *
 * A session is a connection. When it closes (the client exits or is killed, so its TCP
 * connection drops) or its lease lapses (it stops answering pings: frozen, or cut off), its
 * locks are freed and its waits dropped, and the next waiters are granted.
 *
 * A waiter's acquire request stays open until it is granted (the grant is its response), it
 * times out, or the client cancels it; meanwhile `queued` events tell it its place in line.
 * Once a waiter has left the line the table never grants it, so a grant cannot race a timeout
 * or a cancel into a lock held by nobody.
 */
import { DfsError } from '../../shared/errors.js';
import type { ConnectionLimits } from '../../shared/args.js';
import type { Logger } from '../../shared/log.js';
import { RpcServer, op, type CallContext, type RpcConnection } from '../../shared/rpc.js';
import { lockOps, type AcquireResult, type HelloResult, type LockStatusResult, type QueuedEvent } from '../../shared/protocol.js';
import type { RunningService } from '../../shared/service.js';
import { FencingCounter } from './fencing.js';
import { LockTable, describeSession, ordinal, type Changes, type LockSession, type Waiter } from './lock-table.js';

export const DEFAULT_LEASE_MS = 3000;
export const MIN_LEASE_MS = 100;
/** A dead client's locks must come free within seconds. */
export const MAX_LEASE_MS = 5000;

export interface LockServiceOptions {
  host: string;
  port: number;
  /** Folder for `fencing.json`. */
  dataDir: string;
  /** A session silent this long is dropped and its locks freed. */
  leaseMs?: number;
  log: Logger;
  maxMessageBytes?: number;
  connections?: ConnectionLimits;
}

/** An acquire request waiting in line. */
interface PendingAcquire {
  readonly ctx: CallContext;
  readonly timeoutMs: number;
  readonly startedAt: number;
  timer: NodeJS.Timeout | undefined;
  onAbort: () => void;
  resolve(result: AcquireResult): void;
  reject(err: DfsError): void;
}

const SESSION_KEY = 'lock.session';

export class LockService implements RunningService {
  private readonly table: LockTable<PendingAcquire>;
  private readonly server: RpcServer;
  private readonly log: Logger;
  private readonly debug: boolean;
  private readonly leaseMs: number;

  private constructor(
    options: LockServiceOptions,
    private readonly fencing: FencingCounter,
  ) {
    this.log = options.log;
    this.debug = options.log.enabled('debug');
    this.leaseMs = options.leaseMs ?? DEFAULT_LEASE_MS;
    this.table = new LockTable<PendingAcquire>(() => fencing.issue());
    // Grants held up by a token reservation go out as soon as it is durable.
    fencing.onAvailable(() => this.apply(this.table.resume()));
    this.server = new RpcServer({
      host: options.host,
      port: options.port,
      log: options.log,
      maxMessageBytes: options.maxMessageBytes,
      ...options.connections,
      deadAfterMs: this.leaseMs,
      pingIntervalMs: Math.max(25, Math.floor(this.leaseMs / 4)),
      onConnection: (conn) => this.openSession(conn),
      handlers: {
        hello: op(lockOps.hello, (args, ctx): HelloResult => {
          ctx.conn.label = args.client;
          sessionOf(ctx.conn).label = args.client;
          return { session: ctx.conn.id };
        }),
        acquire: op(lockOps.acquire, (args, ctx) => this.acquire(args.name, args.timeoutMs, ctx)),
        release: op(lockOps.release, (args, ctx) => {
          const changes = this.table.release(args.name, sessionOf(ctx.conn), args.token);
          if (this.debug) this.log.debug('released', { name: args.name, session: ctx.conn.id });
          this.apply(changes);
          return { name: args.name };
        }),
        validate: op(lockOps.validate, (args) => {
          if (this.table.validate(args.name, args.token)) return { valid: true };
          throw this.staleToken(args.name, args.token);
        }),
        status: op(lockOps.status, (args): LockStatusResult => ({ locks: this.table.status(args.name) })),
      },
    });
  }

  static async start(options: LockServiceOptions): Promise<LockService> {
    const leaseMs = options.leaseMs ?? DEFAULT_LEASE_MS;
    if (!Number.isInteger(leaseMs) || leaseMs < MIN_LEASE_MS || leaseMs > MAX_LEASE_MS) {
      throw new DfsError('BAD_REQUEST', `the lease must be from ${MIN_LEASE_MS} to ${MAX_LEASE_MS} ms, not ${leaseMs}`);
    }
    const fencing = await FencingCounter.open(options.dataDir, { log: options.log });
    const service = new LockService(options, fencing);
    try {
      await service.server.listen();
    } catch (err) {
      await fencing.close();
      throw err;
    }
    options.log.info('listening', { url: service.url, data: options.dataDir, leaseMs, nextToken: fencing.lastIssued + 1 });
    return service;
  }

  get url(): string {
    return this.server.url;
  }

  get port(): number {
    return this.server.port;
  }

  async close(): Promise<void> {
    await this.server.close();
    await this.fencing.close();
  }

  private openSession(conn: RpcConnection): void {
    const session: LockSession = { id: conn.id, label: '' };
    conn.session.set(SESSION_KEY, session);
    if (this.debug) this.log.debug('session opened', { session: conn.id, remote: conn.remote });
    conn.onClose((err) => {
      const dropped = this.table.dropSession(session);
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
    });
  }

  private acquire(name: string, timeoutMs: number, ctx: CallContext): AcquireResult | Promise<AcquireResult> {
    const session = sessionOf(ctx.conn);
    const outcome = this.table.acquire(name, session, timeoutMs > 0);
    switch (outcome.kind) {
      case 'granted':
        if (this.debug) this.log.debug(outcome.again ? 'granted again' : 'granted', { name, token: outcome.token, session: session.id });
        return { name, token: outcome.token };
      case 'busy': {
        const waiting = outcome.waiting > 0 ? `, ${outcome.waiting} waiting` : '';
        throw new DfsError('LOCKED', `${name} is locked by ${outcome.holder}${waiting}`, { holder: outcome.holder, waiting: outcome.waiting });
      }
      case 'queued':
        return this.waitInLine(outcome.waiter, timeoutMs, ctx);
    }
  }

  private waitInLine(waiter: Waiter<PendingAcquire>, timeoutMs: number, ctx: CallContext): Promise<AcquireResult> {
    return new Promise<AcquireResult>((resolve, reject) => {
      const pending: PendingAcquire = {
        ctx,
        timeoutMs,
        startedAt: Date.now(),
        timer: undefined,
        onAbort: () => this.leaveLine(waiter, new DfsError('CANCELLED', `acquire of ${waiter.name} cancelled; left the line`)),
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
      if (this.debug) this.log.debug('queued', { name: waiter.name, session: ctx.conn.id, position: waiter.position });
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
    // Null: already granted; that grant has answered the request and cleared this wait.
    if (changes === null) return;
    const pending = waiter.data!;
    this.settle(pending);
    if (this.debug) this.log.debug('left the line', { name: waiter.name, session: pending.ctx.conn.id, why: err.code });
    pending.reject(err);
    this.apply(changes);
  }

  /** Delivers grants and tells moved waiters their new place in line. */
  private apply(changes: Changes<PendingAcquire>): void {
    for (const { waiter, token } of changes.granted) {
      const pending = waiter.data!;
      this.settle(pending);
      if (this.debug) this.log.debug('granted', { name: waiter.name, token, session: pending.ctx.conn.id, waitedMs: Date.now() - pending.startedAt });
      pending.resolve({ name: waiter.name, token });
    }
    for (const waiter of changes.moved) if (waiter.waiting) this.tellPosition(waiter);
  }

  private tellPosition(waiter: Waiter<PendingAcquire>): void {
    const event: QueuedEvent = { name: waiter.name, position: waiter.position, holder: this.table.holderOf(waiter.name) };
    waiter.data!.ctx.event('queued', event);
  }

  private settle(pending: PendingAcquire): void {
    if (pending.timer) clearTimeout(pending.timer);
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

function sessionOf(conn: RpcConnection): LockSession {
  return conn.session.get(SESSION_KEY) as LockSession;
}
