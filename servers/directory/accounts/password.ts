/**
 * Password hashes: salted scrypt (node:crypto), memory-hard so that a stolen users.csv costs an
 * attacker ~32 MiB and tens of milliseconds per guess. Stored form:
 * `scrypt$<N>$<r>$<p>$<salt base64url>$<hash base64url>`, so the parameters can be raised later
 * without invalidating older hashes.
 *
 * Passwords are normalized to Unicode NFC before hashing, so that the same password typed on
 * systems that compose accents differently is the same password.
 *
 * Each computation takes ~32 MiB, so at most 4 run at once in the process (FIFO); when more than
 * 256 wait, further requests are refused as UNAVAILABLE rather than queued without bound.
 * `verifyUnknownUser` spends the time of a real check on a user that does not exist, so that the
 * answer time does not say which user names exist.
 */
import { randomBytes, scrypt, timingSafeEqual, type ScryptOptions } from 'node:crypto';
import { DfsError } from '../../../shared/errors.js';

export const SCRYPT_N = 2 ** 15;
export const SCRYPT_R = 8;
export const SCRYPT_P = 1;
export const SALT_BYTES = 16;
export const KEY_BYTES = 32;
/** 128·N·r = 32 MiB for the defaults; node's default maxmem (32 MiB) is just too small. */
const MAXMEM = 64 * 1024 * 1024;

export const MIN_PASSWORD_CHARS = 8;
export const MAX_PASSWORD_CHARS = 1024;

export const MAX_CONCURRENT_SCRYPT = 4;
export const MAX_QUEUED_SCRYPT = 256;

/** A hash, in the stored form and with the default parameters, of a random password nobody knows. */
export const DUMMY_HASH = 'scrypt$32768$8$1$QOprscjGjTRiFJnQPIqLwg$RAMaDqh_u-m_A1PJ_khEKvbmPjI4Ct-kB9aIlUl9d7A';

/** Why `pw` cannot be a password, or null when it can. Lengths count Unicode characters. */
export function passwordProblem(pw: unknown): string | null {
  if (typeof pw !== 'string') return 'a password must be a string';
  if (!pw.isWellFormed()) return 'a password must be well-formed Unicode (it has an unpaired UTF-16 surrogate)';
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/u.test(pw)) return 'a password must not contain control characters (tabs, newlines and the like)';
  const chars = [...pw].length;
  if (chars < MIN_PASSWORD_CHARS) return `a password must be at least ${MIN_PASSWORD_CHARS} characters long (this one has ${chars})`;
  if (chars > MAX_PASSWORD_CHARS) return `a password must be at most ${MAX_PASSWORD_CHARS} characters long (this one has ${chars})`;
  return null;
}

/** A FIFO counting semaphore with a bounded queue. */
export class Semaphore {
  private active = 0;
  private readonly waiting: (() => void)[] = [];

  constructor(
    readonly max: number,
    readonly maxQueued: number,
  ) {}

  get running(): number {
    return this.active;
  }

  get queued(): number {
    return this.waiting.length;
  }

  /** Runs `task` when a slot is free; refuses with UNAVAILABLE when `maxQueued` already wait. */
  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.active < this.max) {
      this.active++;
    } else {
      if (this.waiting.length >= this.maxQueued) {
        throw new DfsError('UNAVAILABLE', 'busy: too many password checks are waiting; try again shortly');
      }
      // The slot is handed over by the task that releases it (active stays the same).
      await new Promise<void>((resolve) => this.waiting.push(resolve));
    }
    try {
      return await task();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.active--;
    }
  }
}

const scryptSlots = new Semaphore(MAX_CONCURRENT_SCRYPT, MAX_QUEUED_SCRYPT);

function scryptKey(pw: string, salt: Buffer, keyBytes: number, options: ScryptOptions): Promise<Buffer> {
  return scryptSlots.run(
    () =>
      new Promise<Buffer>((resolve, reject) => {
        scrypt(Buffer.from(pw.normalize('NFC'), 'utf8'), salt, keyBytes, { ...options, maxmem: MAXMEM }, (err, key) => (err ? reject(err) : resolve(key)));
      }),
  );
}

export async function hashPassword(pw: string): Promise<string> {
  const problem = passwordProblem(pw);
  if (problem !== null) throw new DfsError('BAD_REQUEST', problem);
  const salt = randomBytes(SALT_BYTES);
  const key = await scryptKey(pw, salt, KEY_BYTES, { N: SCRYPT_N, r: SCRYPT_R, p: SCRYPT_P });
  return `scrypt$${SCRYPT_N}$${SCRYPT_R}$${SCRYPT_P}$${salt.toString('base64url')}$${key.toString('base64url')}`;
}

interface ParsedHash {
  N: number;
  r: number;
  p: number;
  salt: Buffer;
  key: Buffer;
}

const STORED_FORM = /^scrypt\$([1-9][0-9]{0,7})\$([1-9][0-9]{0,2})\$([1-9][0-9]{0,2})\$([A-Za-z0-9_-]{16,172})\$([A-Za-z0-9_-]{16,172})$/;

function decodeBase64url(text: string): Buffer | null {
  const bytes = Buffer.from(text, 'base64url');
  // Node ignores what it cannot decode; only the canonical spelling of some bytes is accepted.
  return bytes.toString('base64url') === text ? bytes : null;
}

function parseHash(stored: unknown): ParsedHash | null {
  if (typeof stored !== 'string') return null;
  const m = STORED_FORM.exec(stored);
  if (!m) return null;
  const [N, r, p] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const salt = decodeBase64url(m[4]!);
  const key = decodeBase64url(m[5]!);
  // Bounds keep a doctored file from making one check take minutes or gigabytes.
  if ((N & (N - 1)) !== 0 || N < 2 ** 10 || N > 2 ** 20 || r > 32 || p > 16 || 128 * N * r > MAXMEM / 2) return null;
  if (!salt || salt.length < SALT_BYTES || !key || key.length < 16 || key.length > 64) return null;
  return { N, r, p, salt, key };
}

/** Whether `stored` is a password hash in the stored form (with acceptable parameters). */
export function isPasswordHash(stored: unknown): stored is string {
  return parseHash(stored) !== null;
}

/**
 * Whether `pw` is the password `stored` was made from. A malformed stored form, or a `pw` that
 * could never have been set, is false; the only error is UNAVAILABLE when too many checks wait.
 */
export async function verifyPassword(pw: string, stored: string): Promise<boolean> {
  const parsed = parseHash(stored);
  if (parsed === null || typeof pw !== 'string' || !pw.isWellFormed() || pw.length > 4 * MAX_PASSWORD_CHARS) return false;
  let key: Buffer;
  try {
    key = await scryptKey(pw, parsed.salt, parsed.key.length, { N: parsed.N, r: parsed.r, p: parsed.p });
  } catch (err) {
    if (err instanceof DfsError) throw err;
    return false;
  }
  return timingSafeEqual(key, parsed.key);
}

/** Spends the time of a real check, for a login as a user that does not exist. Always false. */
export async function verifyUnknownUser(pw: string): Promise<false> {
  await verifyPassword(pw, DUMMY_HASH);
  return false;
}
