/**
 * The client's session with the lock service, and the locks it holds.
 *
 * One connection, opened with `hello`, which gives a session id and a secret. When that
 * connection drops while locks are held, the client reconnects by itself (backoff, for at most
 * `reclaimBudgetMs`) and reclaims the session with its secret: after a lock-service restart the
 * service kept the session's locks for a grace period, and they come back with their tokens.
 *
 * A lock is never re-acquired silently. When the service says the session has ended (it did not
 * restart, so the closed connection ended the session; or the grace period ran out), or it
 * cannot be reached in time, every lock the session held is marked lost, and stays so: each
 * write under it fails with LOCK_LOST until the caller unlocks it or locks the name again.
 */
import { DfsError, isTransient, toDfsError } from '../shared/errors.js';
import type { Transport } from '../shared/tls/transport.js';
import type { Logger } from '../shared/log.js';
import { allPages } from '../shared/pages.js';
import type { AcquireResult, HeldResult, HelloResult, LockStatus, LockStatusResult, QueuedEvent } from '../shared/protocol.js';
import { connect, type RpcConnection } from '../shared/rpc.js';

/**
 * `explicit`: taken by the caller (lock, withLock). `implicit`: taken by the library for one
 * write. `inherited`: held by a parent process (`dfs lock NAME -- CMD`), which passed its token
 * down; used for writes, never released here.
 */
export type LockKind = 'explicit' | 'implicit' | 'inherited';

export interface HeldLock {
  readonly name: string;
  readonly token: number;
  readonly kind: LockKind;
  /** Set once the lock is known to have ended. */
  lost: DfsError | null;
}

export interface LockClientOptions {
  /** Where the lock service is (asked of the directory). */
  lockUrl: () => Promise<string>;
  clientName: string;
  transport: Transport;
  log: Logger;
  /** How long to keep trying to reach the lock service again to reclaim held locks (default 30 s). */
  reclaimBudgetMs?: number;
  /** How long to keep trying to reach it otherwise, to take a lock (default 15 s). */
  connectBudgetMs?: number;
  /** Told as soon as an explicit or inherited lock is known to be lost. */
  onLockLost?: (name: string, error: DfsError) => void;
}

export interface AcquireOptions {
  timeoutMs: number;
  kind: 'explicit' | 'implicit';
  signal?: AbortSignal | undefined;
  onQueued?: ((event: QueuedEvent) => void) | undefined;
}

export const DEFAULT_RECLAIM_BUDGET_MS = 30_000;
export const DEFAULT_CONNECT_BUDGET_MS = 15_000;
const CONNECT_TIMEOUT_MS = 2000;
const FIRST_RETRY_MS = 50;
/** Well inside the service's grace period (one lease, 3 s by default). */
const MAX_RETRY_MS = 500;
/** An acquire's call timeout is its wait plus this, so that the service's TIMEOUT, with its explanation, arrives first. */
const ANSWER_MARGIN_MS = 5000;

export function lockLost(name: string, reason: string): DfsError {
  return new DfsError('LOCK_LOST', `the lock on ${name} was lost: ${reason}`, { name });
}

export class LockClient {
  private readonly held = new Map<string, HeldLock>();
  /** Names being acquired: a reclaimed lock one of them is about to be granted is not given back. */
  private readonly acquiring = new Map<string, number>();
  private conn: RpcConnection | null = null;
  private session: { id: string; secret: string } | null = null;
  private connecting: Promise<RpcConnection> | null = null;
  private closed = false;

  constructor(private readonly options: LockClientOptions) {}

  get(name: string): HeldLock | undefined {
    return this.held.get(name);
  }

  /**
   * The open connection, with a session; reconnects (and reclaims) when there is none, retrying
   * for a while, or (`once`) trying just once, for a look that had better fail fast.
   */
  connection(once = false): Promise<RpcConnection> {
    if (this.closed) return Promise.reject(new DfsError('CLOSED', 'this client is closed'));
    if (this.conn && !this.conn.closed) return Promise.resolve(this.conn);
    this.connecting ??= (once ? this.establish() : this.connectWithRetry()).finally(() => (this.connecting = null));
    return this.connecting;
  }

  /**
   * Waits in line for `name` and holds it. If the lock service goes away meanwhile (a restart),
   * joins the line of the new one, within the same timeout; the place in line is not kept.
   */
  async acquire(name: string, options: AcquireOptions): Promise<HeldLock> {
    const deadline = Date.now() + options.timeoutMs;
    this.acquiring.set(name, (this.acquiring.get(name) ?? 0) + 1);
    try {
      for (let attempt = 1; ; attempt++) {
        const conn = await this.connection();
        const timeoutMs = Math.max(0, deadline - Date.now());
        try {
          const res = await conn.call('acquire', { name, timeoutMs }, {
            timeoutMs: timeoutMs + ANSWER_MARGIN_MS,
            signal: options.signal,
            onEvent: (ev, data) => {
              if (ev === 'queued') options.onQueued?.(data as QueuedEvent);
            },
            // A grant that crosses our cancel in flight is handed back at once.
            onLateResult: (result) => void conn.call('release', { name, token: (result as AcquireResult).token }).catch(() => {}),
          });
          const lock: HeldLock = { name, token: (res.result as AcquireResult).token, kind: options.kind, lost: null };
          this.held.set(name, lock);
          return lock;
        } catch (err) {
          const error = toDfsError(err);
          const serviceWentAway = conn.closed && error.code === 'CLOSED';
          if (!serviceWentAway || options.signal?.aborted || this.closed || (attempt > 1 && Date.now() >= deadline)) throw error;
          this.options.log.info('the lock service connection dropped while waiting; joining the line again', { name });
        }
      }
    } finally {
      const left = (this.acquiring.get(name) ?? 1) - 1;
      if (left > 0) this.acquiring.set(name, left);
      else this.acquiring.delete(name);
    }
  }

  /** Releases `lock`. LOCK_LOST when it had ended already, or the service says it has. */
  async release(lock: HeldLock): Promise<void> {
    if (lock.kind === 'inherited' || lock.lost) {
      this.forget(lock);
      if (lock.lost) throw lock.lost;
      return;
    }
    let conn: RpcConnection;
    try {
      conn = await this.connection();
    } catch (err) {
      if (lock.lost) this.forget(lock);
      throw lock.lost ?? err;
    }
    // Reconnecting may have found it lost.
    this.forget(lock);
    if (lock.lost) throw lock.lost;
    try {
      await conn.call('release', { name: lock.name, token: lock.token });
    } catch (err) {
      const error = toDfsError(err);
      if (error.code !== 'NOT_HOLDER') throw error;
      throw this.lose(lock, `the lock service says this client no longer holds it (${error.message})`);
    }
  }

  /** Registers a lock a parent process holds and passed down (its name and token). */
  adopt(name: string, token: number): HeldLock {
    const lock: HeldLock = { name, token, kind: 'inherited', lost: null };
    this.held.set(name, lock);
    return lock;
  }

  /** Marks `lock` lost (once), tells onLockLost about a lock the caller took, and returns the error. */
  lose(lock: HeldLock, reason: string): DfsError {
    if (lock.lost) return lock.lost;
    lock.lost = lockLost(lock.name, reason);
    this.options.log.info('lock lost', { name: lock.name, token: lock.token, reason });
    if (lock.kind !== 'implicit') this.options.onLockLost?.(lock.name, lock.lost);
    return lock.lost;
  }

  /** Every lock held or waited for, paged through. */
  async status(): Promise<LockStatus[]> {
    const conn = await this.connection(true);
    return allPages(
      async (after) => {
        const page = (await conn.call('status', after === undefined ? {} : { after })).result as LockStatusResult;
        return { items: page.locks, more: page.more };
      },
      (lock) => lock.name,
    );
  }

  close(): void {
    this.closed = true;
    this.conn?.close();
    this.conn = null;
  }

  private forget(lock: HeldLock): void {
    if (this.held.get(lock.name) === lock) this.held.delete(lock.name);
  }

  /** Locks this session holds (or believes it does) at the service. */
  private sessionLocks(): HeldLock[] {
    return [...this.held.values()].filter((lock) => lock.kind !== 'inherited' && lock.lost === null);
  }

  private async connectWithRetry(): Promise<RpcConnection> {
    const reclaiming = this.sessionLocks().length > 0;
    const budget = reclaiming ? (this.options.reclaimBudgetMs ?? DEFAULT_RECLAIM_BUDGET_MS) : (this.options.connectBudgetMs ?? DEFAULT_CONNECT_BUDGET_MS);
    const deadline = Date.now() + budget;
    let delay = FIRST_RETRY_MS;
    for (;;) {
      try {
        return await this.establish();
      } catch (err) {
        const error = toDfsError(err);
        if (!isTransient(error) || this.closed || Date.now() + delay > deadline) {
          if (isTransient(error)) for (const lock of this.sessionLocks()) this.lose(lock, `the lock service could not be reached to reclaim it (${error.message})`);
          throw error;
        }
        await new Promise((resolve) => setTimeout(resolve, delay));
        delay = Math.min(delay * 2, MAX_RETRY_MS);
      }
    }
  }

  private async establish(): Promise<RpcConnection> {
    const conn = await connect(await this.options.lockUrl(), { transport: this.options.transport, connectTimeoutMs: CONNECT_TIMEOUT_MS, log: this.options.log }, { role: 'lock' });
    const client = labelFor(this.options.clientName);
    try {
      if (this.session) await this.reclaim(conn, this.session, client);
      if (!this.session) {
        const hello = (await conn.call('hello', { client })).result as HelloResult;
        this.session = { id: hello.session, secret: hello.secret };
      }
    } catch (err) {
      conn.close();
      throw err;
    }
    if (this.closed) {
      conn.close();
      throw new DfsError('CLOSED', 'this client is closed');
    }
    this.conn = conn;
    conn.onClose((err) => this.onConnectionLost(conn, err));
    return conn;
  }

  /**
   * Takes the session back on a new connection. Only a session the service restored after a
   * restart can be; any other answer means the session, and every lock in it, has ended.
   */
  private async reclaim(conn: RpcConnection, session: { id: string; secret: string }, client: string): Promise<void> {
    try {
      await conn.call('reclaim', { session: session.id, secret: session.secret, client });
    } catch (err) {
      const error = toDfsError(err);
      if (error.code !== 'LOCK_LOST') throw error;
      this.session = null;
      this.options.log.info('the lock service refused to give the session back', { session: session.id, error: error.message });
      for (const lock of this.sessionLocks()) this.lose(lock, 'the lock service ended this client\'s session (its lease lapsed or its connection dropped, or a restart\'s grace period ran out)');
      return;
    }
    const back = new Map<string, number>();
    for (const { name, token } of await allPages(
      async (after) => {
        const page = (await conn.call('held', after === undefined ? {} : { after })).result as HeldResult;
        return { items: page.locks, more: page.more };
      },
      (lock) => lock.name,
    )) {
      back.set(name, token);
    }
    const kept: string[] = [];
    for (const lock of this.sessionLocks()) {
      if (back.get(lock.name) === lock.token) {
        kept.push(lock.name);
        back.delete(lock.name);
      } else {
        this.lose(lock, 'the lock service restarted without it');
      }
    }
    // Locks the service kept that this client had released (a release a crash lost) go back,
    // unless an acquire in progress is about to be told it holds them.
    for (const [name, token] of back) if (!this.acquiring.has(name)) void conn.call('release', { name, token }).catch(() => {});
    this.options.log.info('reclaimed the lock session after a lock-service restart', { session: session.id, locks: kept.length });
  }

  private onConnectionLost(conn: RpcConnection, err: DfsError): void {
    if (this.conn === conn) this.conn = null;
    if (this.closed) return;
    const holding = this.sessionLocks().length;
    this.options.log.debug('lock service connection lost', { error: err.message, holding });
    // Held locks are reclaimed at once, before the grace period runs out; otherwise on next use.
    if (holding > 0) this.connection().catch(() => {});
  }
}

/** The service takes 1-64 characters of printable, well-formed text as a label; make one so. */
function labelFor(name: string): string {
  const label = name.replace(/[\u0000-\u001f\u007f-\u009f]/g, '?').slice(0, 64).toWellFormed();
  return label === '' ? 'client' : label;
}
