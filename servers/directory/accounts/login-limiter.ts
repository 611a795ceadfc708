/**
 * Slows password guessing. Failed logins are counted per user name (guessing one account from
 * many addresses) and per remote address (one address trying many accounts). 5 failures of a
 * key within 15 minutes lock it out for 30 s; each further failure while the streak lasts locks
 * it again for twice as long as the last time, up to 15 minutes. A streak ends after 15 minutes
 * without a failure past the end of the last lockout. A login is refused while either of its keys
 * is locked. A success clears the user name's count, not the address's (or an attacker could
 * clear its address by logging in to an account of its own now and then).
 *
 * The limiter knows nothing of which users exist: names that exist and names that do not are
 * counted alike, so its answers do not tell them apart. Pure, with the clock passed in; memory is
 * bounded by an LRU of at most 100,000 keys.
 *
 * Call `failed` only for a login whose password was checked and wrong, not for one `check`
 * refused (a refused attempt is not a guess, and counting it would extend lockouts without end).
 */
import { LRUCache } from 'lru-cache';

export const MAX_FAILURES = 5;
export const FAILURE_WINDOW_MS = 15 * 60 * 1000;
export const FIRST_LOCKOUT_MS = 30 * 1000;
export const MAX_LOCKOUT_MS = 15 * 60 * 1000;
export const MAX_KEYS = 100_000;
/** Longer user names cannot exist; their keys are cut short so that each entry stays small. */
const MAX_KEY_CHARS = 64;

interface KeyState {
  /** Times of the failures within the window, oldest first; at most MAX_FAILURES. */
  failures: number[];
  /** Lockouts in the current streak. */
  lockouts: number;
  lockedUntil: number;
  lastFailure: number;
}

export type LoginCheck = { allowed: true } | { allowed: false; retryAfterMs: number };

export interface LoginLimiterOptions {
  maxKeys?: number;
}

export class LoginLimiter {
  private readonly keys: LRUCache<string, KeyState>;

  constructor(options: LoginLimiterOptions = {}) {
    this.keys = new LRUCache<string, KeyState>({ max: options.maxKeys ?? MAX_KEYS });
  }

  /** Whether a login as `user` from `address` may be tried now. */
  check(user: string, address: string, now: number): LoginCheck {
    const wait = Math.max(this.lockedFor(userKey(user), now), this.lockedFor(addressKey(address), now));
    return wait > 0 ? { allowed: false, retryAfterMs: wait } : { allowed: true };
  }

  /** A login whose password was checked and wrong (or whose user does not exist). */
  failed(user: string, address: string, now: number): void {
    this.fail(userKey(user), now);
    this.fail(addressKey(address), now);
  }

  succeeded(user: string, _address: string, _now: number): void {
    this.keys.delete(userKey(user));
  }

  /** Keys tracked now (for tests and metrics). */
  get size(): number {
    return this.keys.size;
  }

  private lockedFor(key: string, now: number): number {
    const state = this.keys.peek(key);
    return state && state.lockedUntil > now ? state.lockedUntil - now : 0;
  }

  private fail(key: string, now: number): void {
    let state = this.keys.get(key);
    if (state && now - Math.max(state.lastFailure, state.lockedUntil) > FAILURE_WINDOW_MS) state = undefined;
    if (!state) state = { failures: [], lockouts: 0, lockedUntil: 0, lastFailure: now };
    state.failures = state.failures.filter((t) => t > now - FAILURE_WINDOW_MS);
    state.failures.push(now);
    if (state.failures.length > MAX_FAILURES) state.failures.shift();
    state.lastFailure = now;
    if (state.lockouts > 0 || state.failures.length >= MAX_FAILURES) {
      state.lockouts++;
      const lockout = Math.min(FIRST_LOCKOUT_MS * 2 ** Math.min(state.lockouts - 1, 30), MAX_LOCKOUT_MS);
      state.lockedUntil = Math.max(state.lockedUntil, now + lockout);
    }
    this.keys.set(key, state);
  }
}

function userKey(user: string): string {
  return 'u:' + String(user).slice(0, MAX_KEY_CHARS);
}

/** IPv4 seen through an IPv6 socket (`::ffff:1.2.3.4`) is the same address as `1.2.3.4`. */
function addressKey(address: string): string {
  const text = String(address).toLowerCase();
  return 'a:' + (text.startsWith('::ffff:') && text.includes('.') ? text.slice(7) : text).slice(0, MAX_KEY_CHARS);
}
