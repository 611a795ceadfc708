/**
 * The directory's user accounts, in `users.csv` in its data folder:
 * `name,admin,password_hash,created,password_changed` (admin is `true` or `false`, dates are
 * ISO 8601). Users are few, so every change rewrites the whole file durably (temp file, fsync,
 * rename, fsync the folder; mode 0600, it holds password hashes), one change at a time, and the
 * change is made in memory only once it is on disk.
 *
 * A row that cannot be read is logged and skipped; the others load. A file that cannot be read
 * at all (not CSV, a wrong header, empty, or not one readable row) stops the directory with an
 * INTERNAL error naming the file: loading it as an empty store would make `ensureAdmin` create
 * a fresh admin with a new password, handing the cluster to whoever reads the log.
 *
 * The store always keeps at least one admin once it has one: removing or demoting the last is
 * FORBIDDEN.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { parse } from 'csv-parse/sync';
import { stringify } from 'csv-stringify/sync';
import { z } from 'zod';
import { readIfExists } from '../../../shared/durable.js';
import { DfsError } from '../../../shared/errors.js';
import { silentLogger, type Logger } from '../../../shared/log.js';
import { hashPassword, isPasswordHash, passwordProblem } from './password.js';
import { PRIVATE_FILE_MODE, writeFileDurably } from '../../../shared/durable.js';

export const USERS_FILE = 'users.csv';
const COLUMNS = ['name', 'admin', 'password_hash', 'created', 'password_changed'] as const;
const HEADER = COLUMNS.join(',');
export const ADMIN_USER = 'admin';
/** Length of the password made for the first admin when none is given. */
export const RANDOM_PASSWORD_CHARS = 20;

const USER_NAME = /^[a-z_][a-z0-9_.-]{0,31}$/;

/** Why `name` cannot be a user name, or null when it can. */
export function userNameProblem(name: unknown): string | null {
  if (typeof name !== 'string') return 'a user name must be a string';
  if (name.length === 0) return 'a user name must not be empty';
  if (name.length > 32) return `a user name must be at most 32 characters long (this one has ${name.length})`;
  if (!/^[a-z_]/.test(name)) return 'a user name must start with a lowercase letter (a-z) or "_"';
  if (!USER_NAME.test(name)) return 'a user name may contain only lowercase letters (a-z), digits, "_", "." and "-"';
  return null;
}

export const userName = z.string().regex(USER_NAME, 'a user name is 1 to 32 of a-z 0-9 _ . - and starts with a-z or _');

export interface UserRecord {
  readonly name: string;
  readonly admin: boolean;
  readonly passwordHash: string;
  /** ISO 8601. */
  readonly created: string;
  /** ISO 8601. */
  readonly passwordChanged: string;
}

function isIsoDate(text: string): boolean {
  const ms = Date.parse(text);
  return Number.isFinite(ms) && new Date(ms).toISOString() === text;
}

/** The users in a users.csv text; throws INTERNAL when the text as a whole cannot be read. */
export function parseUsers(text: string, path = USERS_FILE): { users: UserRecord[]; badRows: number[] } {
  const unreadable = (why: string) =>
    new DfsError('INTERNAL', `cannot read the user accounts in ${path}: ${why}. Fix or restore that file; only if the accounts are to be given up, move it away (a new "${ADMIN_USER}" is then made at the next start)`, { file: path });
  let records: string[][];
  try {
    records = parse(text, { relax_column_count: true, skip_empty_lines: true }) as string[][];
  } catch (err) {
    throw unreadable(`not CSV (${(err as Error).message})`);
  }
  if (records.length === 0) throw unreadable('the file is empty');
  if (records[0]!.join(',') !== HEADER) throw unreadable(`the first line is not "${HEADER}"`);
  const users = new Map<string, UserRecord>();
  const badRows: number[] = [];
  for (let i = 1; i < records.length; i++) {
    const fields = records[i]!;
    const [name, admin, passwordHash, created, passwordChanged] = fields as [string, string, string, string, string];
    if (
      fields.length !== COLUMNS.length ||
      userNameProblem(name) !== null ||
      users.has(name) ||
      (admin !== 'true' && admin !== 'false') ||
      !isPasswordHash(passwordHash) ||
      !isIsoDate(created) ||
      !isIsoDate(passwordChanged)
    ) {
      badRows.push(i + 1);
      continue;
    }
    users.set(name, Object.freeze({ name, admin: admin === 'true', passwordHash, created, passwordChanged }));
  }
  if (users.size === 0 && badRows.length > 0) throw unreadable(`none of its ${badRows.length} rows can be read`);
  return { users: [...users.values()], badRows };
}

export function formatUsers(users: Iterable<UserRecord>): string {
  const sorted = [...users].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return HEADER + '\n' + stringify(sorted.map((u) => [u.name, u.admin ? 'true' : 'false', u.passwordHash, u.created, u.passwordChanged]));
}

export class UserStore {
  private chain: Promise<unknown> = Promise.resolve();

  private constructor(
    readonly path: string,
    private users: ReadonlyMap<string, UserRecord>,
    private readonly log: Logger,
  ) {}

  /** Loads `users.csv` from `dir` (none yet is an empty store). See the top for what is thrown. */
  static async open(dir: string, log: Logger = silentLogger): Promise<UserStore> {
    await mkdir(dir, { recursive: true });
    const path = join(dir, USERS_FILE);
    const content = await readIfExists(path);
    const users = new Map<string, UserRecord>();
    if (content !== null) {
      const parsed = parseUsers(content.toString('utf8'), path);
      for (const user of parsed.users) users.set(user.name, user);
      if (parsed.badRows.length > 0) log.error('users: rows that cannot be read were skipped; those accounts cannot log in until the file is fixed', { file: path, rows: parsed.badRows.slice(0, 20).join(','), count: parsed.badRows.length });
      if (![...users.values()].some((u) => u.admin)) log.error('users: no admin can be read; nobody can manage accounts until the file is fixed', { file: path });
    }
    return new UserStore(path, users, log);
  }

  get(name: string): UserRecord | undefined {
    return this.users.get(name);
  }

  /** Every user, sorted by name. */
  list(): UserRecord[] {
    return [...this.users.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  get size(): number {
    return this.users.size;
  }

  async add(name: string, passwordHash: string, admin: boolean): Promise<UserRecord> {
    const problem = userNameProblem(name);
    if (problem !== null) throw new DfsError('BAD_REQUEST', `bad user name ${JSON.stringify(name)}: ${problem}`);
    assertHash(passwordHash);
    return this.change((users) => {
      if (users.has(name)) throw new DfsError('EXISTS', `user ${name} already exists`, { user: name });
      const now = new Date().toISOString();
      const user = Object.freeze({ name, admin, passwordHash, created: now, passwordChanged: now });
      users.set(name, user);
      return user;
    });
  }

  async remove(name: string): Promise<void> {
    await this.change((users) => {
      const user = existing(users, name);
      if (user.admin && adminCount(users) === 1) throw new DfsError('FORBIDDEN', `${name} is the last admin; make another user admin first`, { user: name });
      users.delete(name);
    });
  }

  async setPassword(name: string, passwordHash: string): Promise<void> {
    assertHash(passwordHash);
    await this.change((users) => {
      const user = existing(users, name);
      users.set(name, Object.freeze({ ...user, passwordHash, passwordChanged: new Date().toISOString() }));
    });
  }

  async setAdmin(name: string, admin: boolean): Promise<void> {
    await this.change((users) => {
      const user = existing(users, name);
      if (user.admin === admin) return false;
      if (!admin && adminCount(users) === 1) throw new DfsError('FORBIDDEN', `${name} is the last admin; make another user admin first`, { user: name });
      users.set(name, Object.freeze({ ...user, admin }));
      return true;
    });
  }

  /**
   * Makes user `admin` when the store has no user at all, with `envPassword` if given (which must
   * be an acceptable password) or else a random one, returned so that the caller can show it once.
   * `password` is null unless it was made here.
   */
  async ensureAdmin(envPassword: string | undefined): Promise<{ created: boolean; password: string | null }> {
    if (envPassword !== undefined) {
      const problem = passwordProblem(envPassword);
      if (problem !== null) throw new DfsError('BAD_REQUEST', `the initial admin password is not acceptable: ${problem}`);
    }
    return this.exclusive(async () => {
      if (this.users.size > 0) return { created: false, password: null };
      const password = envPassword ?? randomBytes((RANDOM_PASSWORD_CHARS * 3) / 4).toString('base64url');
      const passwordHash = await hashPassword(password);
      const now = new Date().toISOString();
      const next = new Map<string, UserRecord>([[ADMIN_USER, Object.freeze({ name: ADMIN_USER, admin: true, passwordHash, created: now, passwordChanged: now })]]);
      await writeFileDurably(this.path, formatUsers(next.values()), { mode: PRIVATE_FILE_MODE });
      this.users = next;
      this.log.info('users: created the first admin', { user: ADMIN_USER, password: envPassword === undefined ? 'random' : 'given' });
      return { created: true, password: envPassword === undefined ? password : null };
    });
  }

  /** Applies `edit` to a copy of the users; writes and adopts the copy unless `edit` returns false. */
  private change<T>(edit: (users: Map<string, UserRecord>) => T): Promise<T> {
    return this.exclusive(async () => {
      const next = new Map(this.users);
      const result = edit(next);
      if (result === false) return result;
      await writeFileDurably(this.path, formatUsers(next.values()), { mode: PRIVATE_FILE_MODE });
      this.users = next;
      return result;
    });
  }

  private exclusive<T>(task: () => Promise<T>): Promise<T> {
    const run = this.chain.then(task);
    this.chain = run.catch(() => {});
    return run;
  }
}

function existing(users: ReadonlyMap<string, UserRecord>, name: string): UserRecord {
  const user = users.get(name);
  if (!user) throw new DfsError('NOT_FOUND', `no user ${JSON.stringify(name)}`, { user: name });
  return user;
}

function adminCount(users: ReadonlyMap<string, UserRecord>): number {
  let count = 0;
  for (const user of users.values()) if (user.admin) count++;
  return count;
}

function assertHash(passwordHash: string): void {
  if (!isPasswordHash(passwordHash)) throw new DfsError('BAD_REQUEST', 'not a password hash (make one with hashPassword)');
}
