/**
 * Password hashes (servers/directory/accounts/password.ts): the stored form, right and wrong
 * passwords, salts, malformed stored forms, what a password may be, and the FIFO semaphore
 * that bounds concurrent scrypt computations. Few hashes: each costs tens of milliseconds.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { DfsError } from '../shared/errors.js';
import { DUMMY_HASH, Semaphore, hashPassword, isPasswordHash, passwordProblem, verifyPassword, verifyUnknownUser } from '../servers/directory/accounts/password.js';

const test = suite('accounts-password');

const FORM = /^scrypt\$32768\$8\$1\$[A-Za-z0-9_-]{22}\$[A-Za-z0-9_-]{43}$/;

test('a hash verifies its own password and no other; two hashes of one password differ (salt)', async () => {
  const first = await hashPassword('correct horse');
  const second = await hashPassword('correct horse');
  assert.match(first, FORM);
  assert.match(second, FORM);
  assert.is.not(first, second);
  assert.is.not(first.split('$')[4], second.split('$')[4]);
  assert.ok(await verifyPassword('correct horse', first));
  assert.ok(await verifyPassword('correct horse', second));
  assert.not.ok(await verifyPassword('correct horsf', first));
  assert.not.ok(await verifyPassword('', first));
});

test('passwords are compared in Unicode normal form C', async () => {
  const decomposed = 'cafe\u0301-latte';
  const stored = await hashPassword(decomposed);
  assert.ok(await verifyPassword('caf\u00e9-latte', stored));
});

test('a malformed stored form is false, never an error', async () => {
  const good = DUMMY_HASH;
  const [, n, r, p, salt, key] = good.split('$') as [string, string, string, string, string, string];
  const bad = [
    '',
    'nonsense',
    'md5$5f4dcc3b5aa765d61d8327deb882cf99',
    `bcrypt$${n}$${r}$${p}$${salt}$${key}`,
    `scrypt$${n}$${r}$${p}$${salt}`,
    `scrypt$${n}$${r}$${p}$${salt}$${key}$`,
    `scrypt$30000$${r}$${p}$${salt}$${key}`, // N not a power of two
    `scrypt$1048576$${r}$${p}$${salt}$${key}`, // needs more memory than allowed
    `scrypt$${n}$${r}$999$${salt}$${key}`,
    `scrypt$0${n}$${r}$${p}$${salt}$${key}`,
    `scrypt$${n}$${r}$${p}$${salt.slice(0, 10)}$${key}`, // salt too short
    `scrypt$${n}$${r}$${p}$${salt}$${key.slice(0, -1)}B`, // non-canonical base64url
    `scrypt$${n}$${r}$${p}$${salt}$${key}=`,
    `scrypt$${n}$${r}$${p}$${salt}$${key.replace(/.$/, '+')}`,
    ` ${good}`,
  ];
  for (const stored of bad) {
    assert.not.ok(isPasswordHash(stored), stored);
    assert.is(await verifyPassword('whatever-password', stored), false, stored);
  }
  assert.is(await verifyPassword('whatever-password', undefined as unknown as string), false);
  assert.is(await verifyPassword(undefined as unknown as string, good), false);
  assert.is(await verifyPassword('x\ud800yyyyyyyy', good), false);
});

test('a well-formed hash with a changed key is false; the dummy hash is well-formed and never matches', async () => {
  assert.ok(isPasswordHash(DUMMY_HASH));
  const stored = await hashPassword('some password');
  const parts = stored.split('$');
  const key = Buffer.from(parts[5]!, 'base64url');
  key[0] = key[0]! ^ 1;
  parts[5] = key.toString('base64url');
  assert.not.ok(await verifyPassword('some password', parts.join('$')));
  assert.is(await verifyUnknownUser('some password'), false);
});

test('passwordProblem says what is wrong', async () => {
  assert.is(passwordProblem('12345678'), null);
  assert.is(passwordProblem('pässwörd'), null);
  assert.is(passwordProblem('x'.repeat(1024)), null);
  assert.is(passwordProblem('😀'.repeat(8)), null); // characters, not UTF-16 units
  assert.match(passwordProblem('1234567')!, /at least 8/);
  assert.match(passwordProblem('😀'.repeat(7))!, /at least 8/);
  assert.match(passwordProblem('x'.repeat(1025))!, /at most 1024/);
  assert.match(passwordProblem('password\n')!, /control/);
  assert.match(passwordProblem('pass\tword')!, /control/);
  assert.match(passwordProblem('pass\u0085word')!, /control/);
  assert.match(passwordProblem('password\ud800')!, /well-formed/);
  assert.match(passwordProblem(42)!, /string/);
  try {
    await hashPassword('short');
    assert.unreachable();
  } catch (err) {
    assert.instance(err, DfsError);
    assert.is((err as DfsError).code, 'BAD_REQUEST');
  }
});

test('the semaphore runs at most max at once, first come first served, and refuses a full queue', async () => {
  const slots = new Semaphore(2, 2);
  const order: number[] = [];
  const release: (() => void)[] = [];
  const task = (i: number) => () =>
    new Promise<number>((resolve) => {
      order.push(i);
      release[i] = () => resolve(i);
    });
  const runs = [0, 1, 2, 3].map((i) => slots.run(task(i)));
  await Promise.resolve();
  assert.equal(order, [0, 1]);
  assert.is(slots.running, 2);
  assert.is(slots.queued, 2);
  try {
    await slots.run(task(9));
    assert.unreachable();
  } catch (err) {
    assert.is((err as DfsError).code, 'UNAVAILABLE');
  }
  release[1]!();
  await runs[1];
  await new Promise((r) => setImmediate(r));
  assert.equal(order, [0, 1, 2]);
  release[0]!();
  release[2]!();
  await new Promise((r) => setImmediate(r));
  assert.equal(order, [0, 1, 2, 3]);
  release[3]!();
  assert.equal(await Promise.all(runs), [0, 1, 2, 3]);
  assert.is(slots.running, 0);
  assert.is(slots.queued, 0);
  // A task that throws gives its slot back.
  await slots.run(async () => { throw new Error('boom'); }).catch(() => {});
  assert.is(slots.running, 0);
});

test.run();
