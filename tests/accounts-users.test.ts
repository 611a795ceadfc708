/**
 * User accounts on disk (servers/directory/accounts/user-store.ts): add, remove and the last
 * admin, the first admin made once (given or random password), a reopen that keeps everything,
 * damaged rows and files, and the file's mode.
 */
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { DfsError, type ErrorCode } from '../shared/errors.js';
import { createLogger } from '../shared/log.js';
import { hashPassword, verifyPassword } from '../servers/directory/accounts/password.js';
import { USERS_FILE, UserStore, userName, userNameProblem } from '../servers/directory/accounts/user-store.js';
import { removeDir, tempDir } from './helpers/process.js';

const test = suite('accounts-users');

const HASH = await hashPassword('the shared test password');
const OTHER_HASH = await hashPassword('another test password');
const HEADER = 'name,admin,password_hash,created,password_changed';

async function rejects(promise: Promise<unknown>, code: ErrorCode, pattern?: RegExp): Promise<DfsError> {
  try {
    await promise;
  } catch (err) {
    assert.instance(err, DfsError);
    assert.is((err as DfsError).code, code, (err as Error).message);
    if (pattern) assert.match((err as Error).message, pattern);
    return err as DfsError;
  }
  assert.unreachable(`expected ${code}`);
  throw new Error('unreachable');
}

async function withDir(body: (dir: string) => Promise<void>): Promise<void> {
  const dir = await tempDir();
  try {
    await body(dir);
  } finally {
    await removeDir(dir);
  }
}

test('user names', () => {
  for (const good of ['admin', '_svc', 'a', 'bob.smith-2', 'x'.repeat(32)]) {
    assert.is(userNameProblem(good), null, good);
    assert.ok(userName.safeParse(good).success, good);
  }
  for (const bad of ['', 'Admin', '1bob', '.x', '-x', 'bob smith', 'bob,smith', 'bøb', 'x'.repeat(33), 'a/b']) {
    assert.type(userNameProblem(bad), 'string', bad);
    assert.not.ok(userName.safeParse(bad).success, bad);
  }
  assert.match(userNameProblem('x'.repeat(33))!, /at most 32/);
  assert.match(userNameProblem('Bob')!, /start with/);
});

test('ensureAdmin makes admin once, with a random password it returns; the file is mode 0600', async () => {
  await withDir(async (dir) => {
    const store = await UserStore.open(dir);
    const first = await store.ensureAdmin(undefined);
    assert.is(first.created, true);
    assert.match(first.password!, /^[A-Za-z0-9_-]{20}$/);
    const admin = store.get('admin')!;
    assert.is(admin.admin, true);
    assert.ok(await verifyPassword(first.password!, admin.passwordHash));
    assert.equal(await store.ensureAdmin(undefined), { created: false, password: null });
    assert.equal(await store.ensureAdmin('some other password'), { created: false, password: null });
    assert.is(store.get('admin')!.passwordHash, admin.passwordHash);
    assert.is((await stat(join(dir, USERS_FILE))).mode & 0o777, 0o600);
    const reopened = await UserStore.open(dir);
    assert.equal(await reopened.ensureAdmin(undefined), { created: false, password: null });
    assert.equal(reopened.list(), [admin]);
  });
});

test('ensureAdmin with a given password uses it (and returns none); a bad one is refused', async () => {
  await withDir(async (dir) => {
    const store = await UserStore.open(dir);
    await rejects(store.ensureAdmin('short'), 'BAD_REQUEST', /at least 8/);
    assert.is(store.size, 0);
    assert.equal(await store.ensureAdmin('from the environment'), { created: true, password: null });
    assert.ok(await verifyPassword('from the environment', store.get('admin')!.passwordHash));
  });
});

test('add, remove, setAdmin and setPassword; the last admin stays', async () => {
  await withDir(async (dir) => {
    const store = await UserStore.open(dir);
    const alice = await store.add('alice', HASH, true);
    assert.is(alice.name, 'alice');
    assert.match(alice.created, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    await store.add('bob', HASH, false);
    await store.add('_carol', HASH, false);
    await rejects(store.add('bob', HASH, true), 'EXISTS');
    await rejects(store.add('Bad Name', HASH, false), 'BAD_REQUEST');
    await rejects(store.add('dave', 'not a hash', false), 'BAD_REQUEST');
    assert.equal(store.list().map((u) => u.name), ['_carol', 'alice', 'bob']);

    await rejects(store.remove('alice'), 'FORBIDDEN', /last admin/);
    await rejects(store.setAdmin('alice', false), 'FORBIDDEN', /last admin/);
    await rejects(store.remove('nobody'), 'NOT_FOUND');
    await rejects(store.setPassword('nobody', HASH), 'NOT_FOUND');
    await rejects(store.setAdmin('nobody', true), 'NOT_FOUND');
    await store.setAdmin('alice', true); // no change
    await store.setAdmin('bob', true);
    await store.setAdmin('alice', false);
    await store.remove('alice');
    assert.is(store.get('alice'), undefined);
    await rejects(store.remove('bob'), 'FORBIDDEN');
    await store.remove('_carol');

    const before = store.get('bob')!;
    await new Promise((r) => setTimeout(r, 2));
    await store.setPassword('bob', OTHER_HASH);
    const after = store.get('bob')!;
    assert.is(after.passwordHash, OTHER_HASH);
    assert.is(after.created, before.created);
    assert.ok(after.passwordChanged > before.passwordChanged);
    assert.equal(store.list().map((u) => [u.name, u.admin]), [['bob', true]]);
  });
});

test('changes are made one at a time: concurrent adds all land', async () => {
  await withDir(async (dir) => {
    const store = await UserStore.open(dir);
    const names = Array.from({ length: 20 }, (_, i) => `user${i}`);
    const results = await Promise.allSettled([...names.map((n) => store.add(n, HASH, n === 'user0')), store.add('user3', HASH, false)]);
    assert.is(results.filter((r) => r.status === 'rejected').length, 1);
    const reopened = await UserStore.open(dir);
    assert.is(reopened.size, 20);
  });
});

test('a reopen keeps everything', async () => {
  await withDir(async (dir) => {
    const store = await UserStore.open(dir);
    await store.add('alice', HASH, true);
    await store.add('bob', OTHER_HASH, false);
    await store.setPassword('alice', OTHER_HASH);
    const reopened = await UserStore.open(dir);
    assert.equal(reopened.list(), store.list());
    const text = await readFile(join(dir, USERS_FILE), 'utf8');
    assert.is(text.split('\n')[0], HEADER);
    assert.is(text.split('\n').length, 4);
  });
});

test('a damaged row is logged and skipped; the rest load', async () => {
  await withDir(async (dir) => {
    const date = '2024-05-01T10:00:00.000Z';
    const rows = [
      HEADER,
      `alice,true,${HASH},${date},${date}`,
      `bob,maybe,${HASH},${date},${date}`,
      `carol,false,not-a-hash,${date},${date}`,
      `dave,false,${HASH},yesterday,${date}`,
      `Eve,false,${HASH},${date},${date}`,
      `frank,false,${HASH},${date}`,
      `alice,false,${HASH},${date},${date}`,
      `gina,false,${HASH},${date},${date}`,
    ];
    await writeFile(join(dir, USERS_FILE), rows.join('\n') + '\n');
    const lines: string[] = [];
    const store = await UserStore.open(dir, createLogger('test', 'debug', (line) => lines.push(line)));
    assert.equal(store.list().map((u) => [u.name, u.admin]), [['alice', true], ['gina', false]]);
    assert.is(lines.length, 1);
    assert.match(lines[0]!, /rows="3,4,5,6,7,8" count=6/);
    assert.equal(await store.ensureAdmin(undefined), { created: false, password: null });
  });
});

test('a file that cannot be read at all is an error naming it, not an empty store', async () => {
  const date = '2024-05-01T10:00:00.000Z';
  const cases: [string, RegExp][] = [
    ['', /empty/],
    ['name,admin\nalice,true\n', /first line/],
    [`${HEADER}\n"alice,true,${HASH},${date},${date}\n`, /not CSV/],
    [`${HEADER}\nalice,yes,${HASH},${date},${date}\nbob\n`, /none of its 2 rows/],
  ];
  for (const [text, why] of cases) {
    await withDir(async (dir) => {
      await writeFile(join(dir, USERS_FILE), text);
      const err = await rejects(UserStore.open(dir), 'INTERNAL', why);
      assert.ok(err.message.includes(join(dir, USERS_FILE)), err.message);
    });
  }
  // A header alone is a store with no users (so far).
  await withDir(async (dir) => {
    await writeFile(join(dir, USERS_FILE), HEADER + '\n');
    assert.is((await UserStore.open(dir)).size, 0);
  });
});

test.run();
