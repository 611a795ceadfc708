/**
 * Lock sessions and the grace period after a restart. Pure: the clock and the id source are
 * injected; the service attaches sessions to connections and persists them.
 *
 * - A session is opened by `hello` on a connection and ends with it (closed, or silent for the
 *   lease). Its id is random and public (`status` shows it); its secret is random, given only to
 *   the client, and only its sha256 is kept. Nobody can take over a session by its id.
 * - After a restart the sessions that held locks are restored as orphans: they keep their locks
 *   (and tokens) for the grace period, and their clients reclaim them with id + secret. An orphan
 *   not reclaimed by the end of the grace period is dropped and its locks freed.
 * - Only an orphan can be reclaimed. A session whose connection closed has ended: its locks
 *   may already be someone else's, so its client has to be told LOCK_LOST, not given it back.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { DfsError } from '../../shared/errors.js';
import type { LockSession } from './lock-table.js';
import type { SessionEntry } from './holder-state.js';

export interface Session extends LockSession {
  /** sha256 of the secret; null for a session that acquired before `hello` (until it says hello). */
  secretHash: string | null;
}

export function hashSecret(secret: string): string {
  return createHash('sha256').update(secret).digest('hex');
}

export class SessionRegistry {
  private readonly sessions = new Map<string, Session>();
  private readonly orphans = new Set<Session>();
  private graceEndsAt: number | null = null;

  constructor(
    private readonly now: () => number,
    /** A fresh random id; asked again if it collides with a known one. */
    private readonly newId: () => string,
  ) {}

  /** A new session for a connection; `secretHash` null for one that never said hello. */
  open(label: string, secretHash: string | null): Session {
    let id = this.newId();
    while (this.sessions.has(id)) id = this.newId();
    const session: Session = { id, label, secretHash };
    this.sessions.set(id, session);
    return session;
  }

  /** Restores sessions that held locks before a restart, as orphans until `graceMs` from now. */
  restore(entries: readonly SessionEntry[], graceMs: number): Session[] {
    const restored = entries.map((entry) => {
      const session: Session = { id: entry.id, label: entry.label, secretHash: entry.secretHash, awaitingReclaim: true };
      this.sessions.set(entry.id, session);
      this.orphans.add(session);
      return session;
    });
    this.graceEndsAt = restored.length > 0 ? this.now() + graceMs : null;
    return restored;
  }

  /**
   * Gives an orphan back to the client that proves it is its own. LOCK_LOST, changing nothing,
   * for anything else: one message for an unknown id, a wrong secret and a session still in use,
   * so that the answer tells a stranger nothing.
   */
  reclaim(id: string, secret: string): Session {
    const session = this.sessions.get(id);
    const inGrace = this.graceEndsAt !== null && this.now() < this.graceEndsAt;
    if (!session || !this.orphans.has(session) || !inGrace || !secretMatches(session, secret)) {
      throw new DfsError('LOCK_LOST', `session ${id} cannot be reclaimed: it has ended (connection closed, lease lapsed, or grace period over), or the secret is wrong; its locks are gone`, {
        session: id,
      });
    }
    this.orphans.delete(session);
    session.awaitingReclaim = false;
    if (this.orphans.size === 0) this.graceEndsAt = null;
    return session;
  }

  end(session: Session): void {
    this.sessions.delete(session.id);
    this.orphans.delete(session);
    if (this.orphans.size === 0) this.graceEndsAt = null;
  }

  /** Milliseconds of grace left, or 0 when no orphan is waiting for its client. */
  get graceLeftMs(): number {
    return this.graceEndsAt === null ? 0 : Math.max(0, this.graceEndsAt - this.now());
  }

  /** Once the grace period is over: the orphans nobody reclaimed, now ended. Otherwise none. */
  expireOrphans(): Session[] {
    if (this.graceEndsAt === null || this.now() < this.graceEndsAt) return [];
    const expired = [...this.orphans];
    for (const session of expired) this.end(session);
    this.graceEndsAt = null;
    return expired;
  }

  get size(): number {
    return this.sessions.size;
  }
}

function secretMatches(session: Session, secret: string): boolean {
  if (session.secretHash === null) return false;
  return timingSafeEqual(Buffer.from(hashSecret(secret), 'hex'), Buffer.from(session.secretHash, 'hex'));
}
