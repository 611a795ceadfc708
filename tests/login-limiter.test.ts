/**
 * The failed-login limiter (servers/directory/accounts/login-limiter.ts), on a made-up clock:
 * lockout after 5 failures, per address across user names, doubling, success, bounded memory.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { FAILURE_WINDOW_MS, LoginLimiter, MAX_LOCKOUT_MS } from '../servers/directory/accounts/login-limiter.js';

const test = suite('login-limiter');

const T0 = 1_700_000_000_000;
const SEC = 1000;
const MIN = 60 * SEC;

test('5 failures lock the user out for 30 s', () => {
  const limiter = new LoginLimiter();
  for (let i = 0; i < 4; i++) {
    assert.equal(limiter.check('alice', '10.0.0.1', T0 + i), { allowed: true });
    limiter.failed('alice', `10.0.0.${i + 1}`, T0 + i);
  }
  assert.equal(limiter.check('alice', '10.0.0.9', T0 + 4), { allowed: true });
  limiter.failed('alice', '10.0.0.5', T0 + 4);
  assert.equal(limiter.check('alice', '10.0.0.9', T0 + 4), { allowed: false, retryAfterMs: 30 * SEC });
  assert.equal(limiter.check('alice', '10.0.0.9', T0 + 4 + 29 * SEC), { allowed: false, retryAfterMs: SEC });
  assert.equal(limiter.check('alice', '10.0.0.9', T0 + 4 + 30 * SEC), { allowed: true });
  // Other users are not affected (each address failed once only).
  assert.equal(limiter.check('bob', '10.0.0.1', T0 + 5), { allowed: true });
});

test('failures spread wider than 15 minutes do not lock', () => {
  const limiter = new LoginLimiter();
  for (let i = 0; i < 20; i++) {
    limiter.failed('alice', '10.0.0.1', T0 + i * 4 * MIN);
    assert.equal(limiter.check('alice', '10.0.0.1', T0 + i * 4 * MIN), { allowed: true }, `failure ${i}`);
  }
});

test('one address failing for many user names is locked out, whatever the name; unknown names count alike', () => {
  const limiter = new LoginLimiter();
  for (let i = 0; i < 5; i++) limiter.failed(`no-such-user-${i}`, '192.0.2.7', T0 + i);
  const refused = limiter.check('alice', '192.0.2.7', T0 + 10);
  assert.equal(refused, { allowed: false, retryAfterMs: 30 * SEC - 6 });
  assert.equal(limiter.check('alice', '192.0.2.8', T0 + 10), { allowed: true });
  // IPv4 through an IPv6 socket is the same address.
  assert.is(limiter.check('alice', '::ffff:192.0.2.7', T0 + 10).allowed, false);
});

test('each further failure of a streak doubles the lockout, up to 15 minutes; a quiet spell ends the streak', () => {
  const limiter = new LoginLimiter();
  let t = T0;
  for (let i = 0; i < 5; i++) limiter.failed('alice', `10.0.${i}.1`, t++);
  const expected = [60, 120, 240, 480, 900, 900].map((s) => s * SEC);
  let wait = 30 * SEC;
  for (const next of expected) {
    const check = limiter.check('alice', '10.9.9.9', t - 1);
    assert.equal(check, { allowed: false, retryAfterMs: wait });
    t += wait - 1; // the lockout has passed
    assert.equal(limiter.check('alice', '10.9.9.9', t), { allowed: true });
    limiter.failed('alice', `10.1.${next}.1`, t);
    t++;
    wait = next;
  }
  assert.is(wait, MAX_LOCKOUT_MS);
  // 15 minutes without a failure after the lockout ended: 5 failures again before a lockout.
  t += MAX_LOCKOUT_MS + FAILURE_WINDOW_MS + 1;
  for (let i = 0; i < 4; i++) {
    limiter.failed('alice', `10.2.${i}.1`, t + i);
    assert.equal(limiter.check('alice', '10.9.9.9', t + i), { allowed: true });
  }
  limiter.failed('alice', '10.2.9.1', t + 4);
  assert.equal(limiter.check('alice', '10.9.9.9', t + 4), { allowed: false, retryAfterMs: 30 * SEC });
});

test('a success clears the user name, not the address', () => {
  const limiter = new LoginLimiter();
  for (let i = 0; i < 4; i++) limiter.failed('alice', '10.0.0.1', T0 + i);
  limiter.succeeded('alice', '10.0.0.1', T0 + 10);
  // The user name starts again from nothing...
  for (let i = 0; i < 4; i++) limiter.failed('alice', `10.0.1.${i}`, T0 + 20 + i);
  assert.equal(limiter.check('alice', '10.0.2.1', T0 + 30), { allowed: true });
  // ...while the address still has its 4 failures: one more locks it.
  limiter.failed('bob', '10.0.0.1', T0 + 40);
  assert.is(limiter.check('carol', '10.0.0.1', T0 + 41).allowed, false);
  // A success also ends a user name's lockout.
  limiter.failed('alice', '10.0.3.1', T0 + 50);
  assert.is(limiter.check('alice', '10.0.4.1', T0 + 51).allowed, false);
  limiter.succeeded('alice', '10.0.4.1', T0 + 52);
  assert.equal(limiter.check('alice', '10.0.4.1', T0 + 53), { allowed: true });
});

test('memory is bounded', () => {
  const limiter = new LoginLimiter({ maxKeys: 50 });
  for (let i = 0; i < 1000; i++) limiter.failed(`user${i}`, `10.0.${i >> 8}.${i & 255}`, T0 + i);
  assert.ok(limiter.size <= 50);
  // Default bound.
  const big = new LoginLimiter();
  for (let i = 0; i < 60_000; i++) big.failed(`u${i}`, `a${i}`, T0);
  assert.is(big.size, 100_000);
});

test.run();
