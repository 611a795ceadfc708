/**
 * Login sessions, in `sessions.csv` in the directory's data folder, so that a restart of the
 * directory does not log everybody out: `id,user,secret_sha256,created,expires,revoked` (dates
 * ISO 8601, `revoked` empty while the session is not). The client holds the token
 * `s1.<id>.<secret>` (id: 16 hex digits; secret: 32 random bytes, base64url); the file holds only
 * the hex sha256 of the secret's 32 bytes, so a copy of it lets nobody in.
 *
 * Every change rewrites the whole file durably (mode 0600). Logins can be many at once, so
 * changes are grouped: those made while a rewrite runs are all written by the next one, and each
 * caller is answered once a rewrite that includes its change is durable. A revocation takes
 * effect in memory at once (before it is durable); a new session is handed out only once durable.
 *
 * Expired and revoked rows are kept a day (so `revoked` can be seen), then dropped at a rewrite;
 * at most 10,000 of them are kept. Live sessions are bounded: 1,000 per user (a new one revokes
 * that user's oldest) and 100,000 in all (past that, logins are refused with LIMIT).
 *
 * A row that cannot be read is logged and skipped. A file that cannot be read at all is logged,
 * renamed to `sessions.csv.damaged`, and the store starts empty: everybody logs in again.
 */
import { mkdir, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { parse } from 'csv-parse/sync';
import { stringify } from 'csv-stringify/sync';
import { readIfExists } from '../../../shared/durable.js';
import { DfsError } from '../../../shared/errors.js';
import { silentLogger, type Logger } from '../../../shared/log.js';
import { PRIVATE_FILE_MODE, writeFileDurably } from '../../../shared/durable.js';
import { userNameProblem } from './user-store.js';

export const SESSIONS_FILE = 'sessions.csv';
const COLUMNS = ['id', 'user', 'secret_sha256', 'created', 'expires', 'revoked'] as const;
const HEADER = COLUMNS.join(',');
const DAY_MS = 24 * 60 * 60 * 1000;

export const TOKEN_PREFIX = 's1';
const SECRET_BYTES = 32;
const TOKEN = /^s1\.([0-9a-f]{16})\.([A-Za-z0-9_-]{43})$/;
const ID = /^[0-9a-f]{16}$/;
const SHA256_HEX = /^[0-9a-f]{64}$/;

export interface SessionLimits {
  /** Live sessions in all; past it, create() is refused with LIMIT. */
  maxSessions: number;
  /** Live sessions per user; past it, create() revokes the user's oldest. */
  maxPerUser: number;
  /** Expired or revoked rows kept (for at most a day); the oldest go first. */
  maxDead: number;
}

export const DEFAULT_SESSION_LIMITS: SessionLimits = { maxSessions: 100_000, maxPerUser: 1_000, maxDead: 10_000 };

export interface SessionInfo {
  id: string;
  user: string;
  /** Milliseconds since the epoch. */
  createdAt: number;
  expiresAt: number;
}

interface Row {
  readonly id: string;
  readonly user: string;
  readonly secretSha256: Buffer;
  readonly created: number;
  readonly expires: number;
  revoked: number | null;
}

interface Waiter {
  resolve: () => void;
  reject: (err: Error) => void;
}

function isoMs(text: string): number | null {
  const ms = Date.parse(text);
  return Number.isFinite(ms) && new Date(ms).toISOString() === text ? ms : null;
}

function sha256(bytes: Buffer): Buffer {
  return createHash('sha256').update(bytes).digest();
}

/** The session rows of a sessions.csv text; throws when the text as a whole is not CSV or has a wrong header. */
function parseSessions(text: string): { rows: Row[]; badRows: number[] } {
  const records = parse(text, { relax_column_count: true, skip_empty_lines: true }) as string[][];
  if (records.length === 0 || records[0]!.join(',') !== HEADER) throw new Error(`the first line is not "${HEADER}"`);
  const rows: Row[] = [];
  const seen = new Set<string>();
  const badRows: number[] = [];
  for (let i = 1; i < records.length; i++) {
    const fields = records[i]!;
    const [id, user, hash, createdText, expiresText, revokedText] = fields as [string, string, string, string, string, string];
    const created = isoMs(createdText);
    const expires = isoMs(expiresText);
    const revoked = revokedText === '' ? null : isoMs(revokedText);
    if (fields.length !== COLUMNS.length || !ID.test(id) || seen.has(id) || userNameProblem(user) !== null || !SHA256_HEX.test(hash) || created === null || expires === null || (revokedText !== '' && revoked === null)) {
      badRows.push(i + 1);
      continue;
    }
    seen.add(id);
    rows.push({ id, user, secretSha256: Buffer.from(hash, 'hex'), created, expires, revoked });
  }
  rows.sort((a, b) => a.created - b.created);
  return { rows, badRows };
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

export class SessionStore {
  /** Every row, in order of creation. */
  private readonly rows = new Map<string, Row>();
  /** Per user, the ids of sessions not revoked (some perhaps expired), oldest first. */
  private readonly unrevoked = new Map<string, Set<string>>();
  private unrevokedCount = 0;
  private waiters: Waiter[] = [];
  private writing: Promise<void> | null = null;
  private rewrites = 0;

  private constructor(
    readonly path: string,
    private readonly log: Logger,
    private readonly now: () => number,
    private readonly limits: SessionLimits,
  ) {}

  static async open(dir: string, log: Logger = silentLogger, now: () => number = Date.now, limits: Partial<SessionLimits> = {}): Promise<SessionStore> {
    await mkdir(dir, { recursive: true });
    const store = new SessionStore(join(dir, SESSIONS_FILE), log, now, { ...DEFAULT_SESSION_LIMITS, ...limits });
    const content = await readIfExists(store.path);
    if (content === null) return store;
    let parsed: { rows: Row[]; badRows: number[] };
    try {
      parsed = parseSessions(content.toString('utf8'));
    } catch (err) {
      const aside = `${store.path}.damaged`;
      log.error('sessions: the file cannot be read; every session is lost and users must log in again', { file: store.path, movedTo: aside, error: (err as Error).message });
      await rename(store.path, aside);
      return store;
    }
    if (parsed.badRows.length > 0) log.error('sessions: rows that cannot be read were skipped; those sessions must log in again', { file: store.path, rows: parsed.badRows.slice(0, 20).join(','), count: parsed.badRows.length });
    for (const row of parsed.rows) store.insert(row);
    return store;
  }

  /** How many rewrites of the file have completed (for tests and metrics). */
  get rewriteCount(): number {
    return this.rewrites;
  }

  /** Starts a session for `user`, lasting `ttlMs`; resolves once it is durable. */
  async create(user: string, ttlMs: number): Promise<{ token: string; id: string; expiresAt: number }> {
    const problem = userNameProblem(user);
    if (problem !== null) throw new DfsError('BAD_REQUEST', `bad user name ${JSON.stringify(user)}: ${problem}`);
    if (!Number.isFinite(ttlMs) || ttlMs <= 0) throw new DfsError('BAD_REQUEST', `a session must last a positive time (not ${ttlMs} ms)`);
    const now = this.now();
    const mine = this.sweepExpired(user, now);
    const full = mine !== undefined && mine.size >= this.limits.maxPerUser;
    if (!full && this.unrevokedCount >= this.limits.maxSessions) {
      for (const name of [...this.unrevoked.keys()]) this.sweepExpired(name, now);
      if (this.unrevokedCount >= this.limits.maxSessions) throw new DfsError('LIMIT', `too many sessions (${this.limits.maxSessions}); try again later`);
    }
    if (mine !== undefined) {
      // Oldest first: a set iterates in insertion order, which is creation order.
      for (const id of mine) {
        if (mine.size < this.limits.maxPerUser) break;
        this.markRevoked(this.rows.get(id)!, now);
      }
    }
    let id: string;
    do id = randomBytes(8).toString('hex');
    while (this.rows.has(id));
    const secret = randomBytes(SECRET_BYTES);
    const row: Row = { id, user, secretSha256: sha256(secret), created: now, expires: now + ttlMs, revoked: null };
    this.insert(row);
    try {
      await this.flush();
    } catch (err) {
      // Nobody has the token: forget the session rather than write it later.
      if (this.rows.get(id) === row) {
        if (row.revoked === null) this.markRevoked(row, now);
        this.rows.delete(id);
      }
      throw err;
    }
    return { token: `${TOKEN_PREFIX}.${id}.${secret.toString('base64url')}`, id, expiresAt: row.expires };
  }

  /** The session a token stands for, or null when it is malformed, unknown, expired or revoked. */
  check(token: string, now: number = this.now()): { id: string; user: string; expiresAt: number } | null {
    if (typeof token !== 'string' || token.length > 64) return null;
    const m = TOKEN.exec(token);
    if (!m) return null;
    const [, id, secretText] = m as unknown as [string, string, string];
    const secret = Buffer.from(secretText, 'base64url');
    // 43 characters carry 258 bits: only the canonical spelling of the 32 bytes is the token.
    if (secret.length !== SECRET_BYTES || secret.toString('base64url') !== secretText) return null;
    const row = this.rows.get(id);
    if (!row) return null;
    if (!timingSafeEqual(sha256(secret), row.secretSha256)) return null;
    if (row.revoked !== null || row.expires <= now) return null;
    return { id: row.id, user: row.user, expiresAt: row.expires };
  }

  /** Ends a session; resolves (true) once that is durable, or false when it was not live. */
  async revoke(id: string): Promise<boolean> {
    const row = this.rows.get(id);
    if (!row || row.revoked !== null) return false;
    const now = this.now();
    const wasLive = row.expires > now;
    this.markRevoked(row, now);
    await this.flush();
    return wasLive;
  }

  /** Ends every session of `user` but `exceptId`; resolves with how many live ones it ended, once durable. */
  async revokeUser(user: string, exceptId?: string): Promise<number> {
    const mine = this.unrevoked.get(user);
    if (!mine) return 0;
    const now = this.now();
    let live = 0;
    let changed = false;
    for (const id of [...mine]) {
      if (id === exceptId) continue;
      const row = this.rows.get(id)!;
      if (row.expires > now) live++;
      this.markRevoked(row, now);
      changed = true;
    }
    if (changed) await this.flush();
    return live;
  }

  /** The live sessions (of `user`, or of everybody), oldest first. */
  list(user?: string): SessionInfo[] {
    const now = this.now();
    const users = user === undefined ? [...this.unrevoked.keys()] : [user];
    const out: SessionInfo[] = [];
    for (const name of users) {
      for (const id of this.unrevoked.get(name) ?? []) {
        const row = this.rows.get(id)!;
        if (row.expires > now) out.push({ id: row.id, user: row.user, createdAt: row.created, expiresAt: row.expires });
      }
    }
    return out.sort((a, b) => a.createdAt - b.createdAt || (a.id < b.id ? -1 : 1));
  }

  /** Resolves once every change made so far is durable. */
  async close(): Promise<void> {
    await this.writing?.catch(() => {});
  }

  private insert(row: Row): void {
    this.rows.set(row.id, row);
    if (row.revoked !== null) return;
    let mine = this.unrevoked.get(row.user);
    if (!mine) this.unrevoked.set(row.user, (mine = new Set()));
    mine.add(row.id);
    this.unrevokedCount++;
  }

  private markRevoked(row: Row, now: number): void {
    row.revoked = now;
    this.forgetUnrevoked(row);
  }

  private forgetUnrevoked(row: Row): void {
    const mine = this.unrevoked.get(row.user);
    if (!mine?.delete(row.id)) return;
    this.unrevokedCount--;
    if (mine.size === 0) this.unrevoked.delete(row.user);
  }

  /** Drops `user`'s expired sessions from the live index (their rows stay until pruned); returns what is left. */
  private sweepExpired(user: string, now: number): Set<string> | undefined {
    const mine = this.unrevoked.get(user);
    if (!mine) return undefined;
    for (const id of [...mine]) {
      const row = this.rows.get(id)!;
      if (row.expires <= now) this.forgetUnrevoked(row);
    }
    return this.unrevoked.get(user);
  }

  /** Resolves once a rewrite that started after this call is durable. */
  private flush(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.waiters.push({ resolve, reject });
      if (!this.writing) this.writing = this.writeLoop();
    });
  }

  private async writeLoop(): Promise<void> {
    while (this.waiters.length > 0) {
      const batch = this.waiters;
      this.waiters = [];
      try {
        await writeFileDurably(this.path, this.snapshot(), { mode: PRIVATE_FILE_MODE });
        this.rewrites++;
        for (const waiter of batch) waiter.resolve();
      } catch (err) {
        this.log.error('sessions: cannot write the file', { file: this.path, error: (err as Error).message });
        for (const waiter of batch) waiter.reject(err as Error);
      }
    }
    this.writing = null;
  }

  /** The file's content now, after pruning old expired and revoked rows. */
  private snapshot(): string {
    const now = this.now();
    const dead: Row[] = [];
    for (const row of this.rows.values()) {
      const endedAt = row.revoked ?? (row.expires <= now ? row.expires : null);
      if (endedAt === null) continue;
      if (endedAt <= now - DAY_MS) this.drop(row);
      else dead.push(row);
    }
    if (dead.length > this.limits.maxDead) {
      dead.sort((a, b) => (a.revoked ?? a.expires) - (b.revoked ?? b.expires));
      for (const row of dead.slice(0, dead.length - this.limits.maxDead)) this.drop(row);
    }
    const records = [...this.rows.values()].map((r) => [r.id, r.user, r.secretSha256.toString('hex'), iso(r.created), iso(r.expires), r.revoked === null ? '' : iso(r.revoked)]);
    return HEADER + '\n' + stringify(records);
  }

  private drop(row: Row): void {
    this.forgetUnrevoked(row);
    this.rows.delete(row.id);
  }
}
