/**
 * The lock table: for each file name, the session holding its write lock and a FIFO line of
 * sessions waiting for it. Pure bookkeeping: no sockets, no timers, no disk. The service feeds
 * it requests and session ends, and delivers what it reports (grants, changed places in line).
 *
 * Rules enforced here:
 * - At most one holder per name; waiters are granted strictly in arrival order.
 * - A waiter that has left the line (cancelled, timed out, its session dropped) is never granted.
 * - Every grant carries a fresh fencing token from the injected source, so a token identifies
 *   one grant; `validate` accepts only the token of the grant currently in force.
 * - A release or cancel that does not apply throws or reports nothing, and changes nothing.
 *
 * - A session holds at most `maxHeldPerSession` locks and waits for at most
 *   `maxWaitsPerSession`; past either cap `acquire` is LIMIT and changes nothing. A wait counts
 *   against the held cap too, since it may become a hold at any moment.
 *
 * Names are taken as already validated (the service checks them against the protocol schema).
 * Each operation is O(1) except for the waiters it has to report as moved, which have to be
 * told anyway. Listings (`statusPage`, `heldPage`) are paged by bytes of JSON, so that no page
 * can outgrow a frame header.
 */
import { DfsError } from '../../shared/errors.js';
import { ordinal } from '../../shared/text.js';

/** One client session. `label` is the name the client gave itself, shown to other clients. */
export interface LockSession {
  readonly id: string;
  label: string;
  /** Restored from disk after a restart and not yet reclaimed by its client. */
  awaitingReclaim?: boolean;
}

export interface TableLimits {
  maxHeldPerSession: number;
  maxWaitsPerSession: number;
}

export const DEFAULT_LIMITS: TableLimits = { maxHeldPerSession: 10_000, maxWaitsPerSession: 1000 };

/** A status or held page stays under this many bytes of JSON (frame headers are at most 64 KiB). */
export const PAGE_BYTES = 48 * 1024;
/** Each lock's waiter list in `status` is cut to this many bytes; `waiting` still counts them all. */
export const WAITER_LIST_BYTES = 4 * 1024;

export interface Holder {
  readonly session: LockSession;
  readonly token: number;
  /** Milliseconds since the epoch when the lock was granted. */
  readonly since: number;
}

/**
 * Hands out fencing tokens, each larger than the last. Returns null when none can be issued
 * right now (the next block of tokens is not yet durable); the table then keeps the lock's
 * first waiter in line until `resume()` is called.
 */
export type TokenSource = () => number | null;

export function describeSession(session: LockSession): string {
  const who = session.label ? `client ${session.label} (${session.id})` : `client ${session.id}`;
  return session.awaitingReclaim ? `${who}, kept for it after a lock-service restart until it reclaims or the grace period ends` : who;
}

export { ordinal };

/** What a lock with no holder but a waiter is shown as: its grant waits for a fencing token. */
export const NO_HOLDER = 'nobody yet (the grant is waiting for a fencing token)';

/** One name's lock: the holder and a doubly linked line of waiters (O(1) append and removal). */
class LockState<T> {
  holder: Holder | null = null;
  head: Waiter<T> | null = null;
  tail: Waiter<T> | null = null;
  length = 0;

  constructor(readonly name: string) {}
}

export class Waiter<T = unknown> {
  /** The service's handle on the request waiting here (set right after `acquire` returns it). */
  data: T | undefined = undefined;
  /** Place in line, 1 = next. Kept current by the table. */
  position = 0;
  /** False once the waiter has been granted or has left the line. */
  waiting = true;
  /** @internal */ prev: Waiter<T> | null = null;
  /** @internal */ next: Waiter<T> | null = null;

  constructor(
    readonly name: string,
    readonly session: LockSession,
    /** @internal */ readonly lock: LockState<T>,
  ) {}
}

export interface Grant<T> {
  /** The waiter that now holds the lock: answer its acquire request with the token. */
  readonly waiter: Waiter<T>;
  readonly token: number;
}

export interface Changes<T> {
  readonly granted: ReadonlyArray<Grant<T>>;
  /** Waiters whose place in line or whose lock's holder changed, each once: tell them. */
  readonly moved: ReadonlyArray<Waiter<T>>;
}

export type AcquireOutcome<T> =
  /** `again`: the session already held the lock; the token is the one it was granted then. */
  | { readonly kind: 'granted'; readonly token: number; readonly again: boolean }
  | { readonly kind: 'queued'; readonly waiter: Waiter<T> }
  /** Only when the caller asked not to wait. */
  | { readonly kind: 'busy'; readonly holder: string; readonly waiting: number };

export interface DropResult<T> {
  /** Names whose locks the session held and that are now released. */
  readonly released: string[];
  readonly waitsDropped: number;
  readonly changes: Changes<T>;
}

export interface LockStatusEntry {
  name: string;
  holder: string;
  token: number;
  since: number;
  waiters: string[];
  waiting: number;
}

export interface Page<T> {
  items: T[];
  more: boolean;
}

/** What one session holds and waits for, so that dropping it is proportional to that. */
interface SessionLocks<T> {
  readonly held: Set<string>;
  readonly waiting: Map<string, Waiter<T>>;
}

const NO_CHANGES: Changes<never> = Object.freeze({ granted: Object.freeze([]), moved: Object.freeze([]) });

function noChanges<T>(): Changes<T> {
  return NO_CHANGES as Changes<T>;
}

class ChangeSet<T> implements Changes<T> {
  readonly granted: Array<Grant<T>> = [];
  readonly moved: Array<Waiter<T>> = [];
}

export class LockTable<T = unknown> {
  private readonly locks = new Map<string, LockState<T>>();
  private readonly sessions = new Map<string, SessionLocks<T>>();
  /** Locks whose first waiter could not be granted for want of a token. */
  private readonly stalled = new Set<LockState<T>>();
  /** Names in code-unit order, rebuilt when a name is added or dropped and a listing needs it. */
  private sortedNames: string[] | null = null;

  constructor(
    private readonly issueToken: TokenSource,
    private readonly now: () => number = Date.now,
    private readonly limits: TableLimits = DEFAULT_LIMITS,
  ) {}

  /**
   * Grants the lock at once when it is free, or when the session already holds it. Otherwise
   * puts the session at the end of the line (or, with `wait` false, reports who holds it).
   */
  acquire(name: string, session: LockSession, wait = true): AcquireOutcome<T> {
    let lock = this.locks.get(name);
    if (lock?.holder && lock.holder.session.id === session.id) return { kind: 'granted', token: lock.holder.token, again: true };
    const mine = this.sessions.get(session.id);
    const already = mine?.waiting.get(name);
    if (already) {
      throw new DfsError('BAD_REQUEST', `you are already waiting for ${name} (${ordinal(already.position)} in line); cancel that acquire before asking again`, {
        position: already.position,
      });
    }
    const free = lock === undefined || (lock.holder === null && lock.length === 0);
    this.checkLimits(mine, wait && !free);
    if (lock === undefined) lock = this.newLock(name);
    if (free) {
      const token = this.issueToken();
      if (token !== null) {
        lock.holder = { session, token, since: this.now() };
        this.sessionLocks(session).held.add(name);
        return { kind: 'granted', token, again: false };
      }
    }
    if (!wait) {
      const outcome = { kind: 'busy', holder: free ? NO_HOLDER : this.describeHolder(lock), waiting: lock.length } as const;
      if (free) this.forget(lock);
      return outcome;
    }
    const waiter = new Waiter<T>(name, session, lock);
    this.append(lock, waiter);
    // A free lock that could not be granted for want of a token: `resume` grants it later.
    if (free) this.stalled.add(lock);
    this.sessionLocks(session).waiting.set(name, waiter);
    return { kind: 'queued', waiter };
  }

  /**
   * Makes `session` the holder of `name` under `token`, as it was before a restart (the journal
   * says so). The name must not be held or waited for yet.
   */
  adopt(name: string, session: LockSession, token: number, since: number): void {
    if (this.locks.has(name)) throw new DfsError('INTERNAL', `${name} is already in the lock table; cannot restore its holder`);
    const lock = this.newLock(name);
    lock.holder = { session, token, since };
    this.sessionLocks(session).held.add(name);
  }

  /**
   * Releases the session's lock on `name` and hands it to the next waiter. NOT_HOLDER, changing
   * nothing, when the session does not hold it or `token` is not the token of its grant.
   */
  release(name: string, session: LockSession, token?: number): Changes<T> {
    const lock = this.locks.get(name);
    const holder = lock?.holder;
    if (!lock || !holder) {
      const waiter = this.sessions.get(session.id)?.waiting.get(name);
      if (waiter) throw this.notHolderWhileWaiting(waiter);
      throw new DfsError('NOT_HOLDER', `${name} is not locked; nothing to release`);
    }
    if (holder.session.id !== session.id) {
      const waiter = this.sessions.get(session.id)?.waiting.get(name);
      if (waiter) throw this.notHolderWhileWaiting(waiter);
      throw new DfsError('NOT_HOLDER', `${name} is held by ${describeSession(holder.session)}, not by you; nothing released`, {
        holder: describeSession(holder.session),
      });
    }
    if (token !== undefined && token !== holder.token) {
      throw new DfsError('NOT_HOLDER', `token ${token} is not the token of your current lock on ${name} (an older grant?); nothing released`);
    }
    this.sessions.get(session.id)?.held.delete(name);
    lock.holder = null;
    if (lock.length === 0) {
      this.forget(lock);
      return noChanges();
    }
    const changes = new ChangeSet<T>();
    this.handOff(lock, changes);
    return changes;
  }

  /**
   * Takes a waiter out of line. Returns the waiters behind it, whose places changed, or null
   * when it had already left the line (granted or removed): then nothing changes.
   */
  cancel(waiter: Waiter<T>): Changes<T> | null {
    if (!waiter.waiting) return null;
    const lock = waiter.lock;
    const changes = new ChangeSet<T>();
    const behind = waiter.next;
    this.unlink(lock, waiter);
    this.sessions.get(waiter.session.id)?.waiting.delete(waiter.name);
    for (let w = behind; w !== null; w = w.next) changes.moved.push(w);
    if (lock.holder === null && lock.length === 0) this.forget(lock);
    return changes;
  }

  /**
   * Ends a session (its connection closed or its lease lapsed): takes all its waiters out of
   * line, releases everything it holds and hands each lock to its next waiter.
   */
  dropSession(session: LockSession): DropResult<T> {
    const mine = this.sessions.get(session.id);
    if (!mine) return { released: [], waitsDropped: 0, changes: noChanges() };
    this.sessions.delete(session.id);
    const touched = new Set<LockState<T>>();
    // Waits go first, so that none of the session's own waiters is handed a lock it frees.
    for (const waiter of mine.waiting.values()) {
      this.unlink(waiter.lock, waiter);
      if (waiter.lock.holder === null && waiter.lock.length === 0) this.forget(waiter.lock);
      else touched.add(waiter.lock);
    }
    const changes = new ChangeSet<T>();
    const released: string[] = [];
    for (const name of mine.held) {
      const lock = this.locks.get(name);
      if (!lock || lock.holder?.session.id !== session.id) continue;
      released.push(name);
      lock.holder = null;
      if (lock.length === 0) {
        this.forget(lock);
        continue;
      }
      this.grantFirst(lock, changes);
      touched.add(lock);
    }
    for (const lock of touched) for (let w = lock.head; w !== null; w = w.next) changes.moved.push(w);
    return { released, waitsDropped: mine.waiting.size, changes };
  }

  /** Grants the locks that were waiting for a fencing token; call when tokens are available. */
  resume(): Changes<T> {
    if (this.stalled.size === 0) return noChanges();
    const changes = new ChangeSet<T>();
    for (const lock of [...this.stalled]) {
      this.stalled.delete(lock);
      if (lock.holder !== null) continue;
      // Still no token: the lock goes back on the stalled list and nobody needs telling.
      if (this.grantFirst(lock, changes)) for (let w = lock.head; w !== null; w = w.next) changes.moved.push(w);
    }
    return changes;
  }

  /** True only for the token of the grant currently in force on `name`. */
  validate(name: string, token: number): boolean {
    const holder = this.locks.get(name)?.holder;
    return holder !== undefined && holder !== null && holder.token === token;
  }

  holder(name: string): Holder | null {
    return this.locks.get(name)?.holder ?? null;
  }

  /** "client alice (7f3a)", or NO_HOLDER; for messages and queue events. */
  holderOf(name: string): string {
    const lock = this.locks.get(name);
    return lock ? this.describeHolder(lock) : 'nobody';
  }

  /**
   * Locks held or waited for, in name order after `after`, as many as fit `pageBytes` of JSON
   * (always at least one); or just `name`'s (none when it is free).
   */
  statusPage(options: { name?: string; after?: string; pageBytes?: number; waiterBytes?: number } = {}): Page<LockStatusEntry> {
    const waiterBytes = options.waiterBytes ?? WAITER_LIST_BYTES;
    if (options.name !== undefined) {
      const lock = this.locks.get(options.name);
      return { items: lock ? [this.statusEntry(lock, waiterBytes)] : [], more: false };
    }
    const names = (this.sortedNames ??= [...this.locks.keys()].sort());
    return fillPage(names, firstAfter(names, options.after), options.pageBytes ?? PAGE_BYTES, (name) => this.statusEntry(this.locks.get(name)!, waiterBytes));
  }

  /** The locks `session` holds, with their tokens, in name order after `after`, paged by bytes. */
  heldPage(session: LockSession, after?: string, pageBytes = PAGE_BYTES): Page<{ name: string; token: number }> {
    const held = [...(this.sessions.get(session.id)?.held ?? [])].sort();
    return fillPage(held, firstAfter(held, after), pageBytes, (name) => ({ name, token: this.locks.get(name)!.holder!.token }));
  }

  /** How many locks the session holds. */
  heldCount(session: LockSession): number {
    return this.sessions.get(session.id)?.held.size ?? 0;
  }

  /** How many names are held or waited for. */
  get size(): number {
    return this.locks.size;
  }

  private statusEntry(lock: LockState<T>, waiterBytes: number): LockStatusEntry {
    const waiters: string[] = [];
    let bytes = 0;
    for (let w = lock.head; w !== null; w = w.next) {
      const description = describeSession(w.session);
      bytes += jsonBytes(description) + 1;
      if (bytes > waiterBytes) break;
      waiters.push(description);
    }
    return { name: lock.name, holder: this.describeHolder(lock), token: lock.holder?.token ?? 0, since: lock.holder?.since ?? 0, waiters, waiting: lock.length };
  }

  /** LIMIT when one more lock (and, if `joinsLine`, one more wait) would pass a session cap. */
  private checkLimits(mine: SessionLocks<T> | undefined, joinsLine: boolean): void {
    const held = mine?.held.size ?? 0;
    const waits = mine?.waiting.size ?? 0;
    const { maxHeldPerSession, maxWaitsPerSession } = this.limits;
    if (held + waits >= maxHeldPerSession) {
      throw new DfsError('LIMIT', `this session holds ${held} locks and waits for ${waits}; a session may hold at most ${maxHeldPerSession}. Release some first; nothing changed`, {
        limit: maxHeldPerSession,
        held,
        waiting: waits,
      });
    }
    if (joinsLine && waits >= maxWaitsPerSession) {
      throw new DfsError('LIMIT', `this session already waits for ${waits} locks, the most one session may wait for; nothing changed`, { limit: maxWaitsPerSession, waiting: waits });
    }
  }

  private newLock(name: string): LockState<T> {
    const lock = new LockState<T>(name);
    this.locks.set(name, lock);
    this.sortedNames = null;
    return lock;
  }

  private describeHolder(lock: LockState<T>): string {
    return lock.holder ? describeSession(lock.holder.session) : lock.length > 0 ? NO_HOLDER : 'nobody';
  }

  private notHolderWhileWaiting(waiter: Waiter<T>): DfsError {
    return new DfsError(
      'NOT_HOLDER',
      `you are waiting for ${waiter.name} (${ordinal(waiter.position)} in line), not holding it; cancel the acquire to leave the line. Nothing released`,
      { position: waiter.position },
    );
  }

  /**
   * Grants the free lock to its first waiter and reports everyone behind as moved. When no
   * token can be issued the line stays as it is, but its holder changed (to nobody), which is
   * worth telling too.
   */
  private handOff(lock: LockState<T>, changes: ChangeSet<T>): void {
    this.grantFirst(lock, changes);
    for (let w = lock.head; w !== null; w = w.next) changes.moved.push(w);
  }

  /** Makes the first waiter of a free lock its holder; false when no token can be issued yet. */
  private grantFirst(lock: LockState<T>, changes: ChangeSet<T>): boolean {
    const waiter = lock.head;
    if (waiter === null) return false;
    const token = this.issueToken();
    if (token === null) {
      this.stalled.add(lock);
      return false;
    }
    this.unlink(lock, waiter);
    const mine = this.sessionLocks(waiter.session);
    mine.waiting.delete(lock.name);
    mine.held.add(lock.name);
    lock.holder = { session: waiter.session, token, since: this.now() };
    changes.granted.push({ waiter, token });
    return true;
  }

  private append(lock: LockState<T>, waiter: Waiter<T>): void {
    waiter.prev = lock.tail;
    if (lock.tail) lock.tail.next = waiter;
    else lock.head = waiter;
    lock.tail = waiter;
    lock.length++;
    waiter.position = lock.length;
  }

  /** Removes a waiter from its line; everyone behind it moves up one place. */
  private unlink(lock: LockState<T>, waiter: Waiter<T>): void {
    for (let w = waiter.next; w !== null; w = w.next) w.position--;
    if (waiter.prev) waiter.prev.next = waiter.next;
    else lock.head = waiter.next;
    if (waiter.next) waiter.next.prev = waiter.prev;
    else lock.tail = waiter.prev;
    waiter.prev = waiter.next = null;
    waiter.waiting = false;
    lock.length--;
  }

  private forget(lock: LockState<T>): void {
    this.locks.delete(lock.name);
    this.stalled.delete(lock);
    this.sortedNames = null;
  }

  private sessionLocks(session: LockSession): SessionLocks<T> {
    let mine = this.sessions.get(session.id);
    if (mine === undefined) {
      mine = { held: new Set(), waiting: new Map() };
      this.sessions.set(session.id, mine);
    }
    return mine;
  }
}

function jsonBytes(value: unknown): number {
  return Buffer.byteLength(JSON.stringify(value));
}

/** Index of the first name after `after` in sorted `names` (0 without `after`). */
function firstAfter(names: readonly string[], after: string | undefined): number {
  if (after === undefined) return 0;
  let lo = 0;
  let hi = names.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (names[mid]! <= after) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Items made from names[from...] while their JSON fits `pageBytes` (at least one item). */
function fillPage<T>(names: readonly string[], from: number, pageBytes: number, make: (name: string) => T): Page<T> {
  const items: T[] = [];
  // `{"locks":[...],"more":false}` and the frame around it.
  let bytes = 64;
  let i = from;
  for (; i < names.length; i++) {
    const item = make(names[i]!);
    const size = jsonBytes(item) + 1;
    if (items.length > 0 && bytes + size > pageBytes) break;
    bytes += size;
    items.push(item);
  }
  return { items, more: i < names.length };
}
