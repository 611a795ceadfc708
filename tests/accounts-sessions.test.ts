/**
 * Login sessions on disk (servers/directory/accounts/session-store.ts): tokens, expiry,
 * revocation, a reopen that keeps them, tampered tokens, grouped rewrites, pruning and caps.
 */
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { DfsError } from '../shared/errors.js';
import { createLogger } from '../shared/log.js';
import { SESSIONS_FILE, SessionStore } from '../servers/directory/accounts/session-store.js';
import { readIfExists } from '../shared/durable.js';
import { removeDir, tempDir } from './helpers/process.js';

const test = suite('accounts-sessions');

const HOUR = 60 * 60 * 1000;
const DAY = 24 * HOUR;
const T0 = Date.parse('2025-01-01T00:00:00.000Z');

async function withDir(body: (dir: string) => Promise<void>): Promise<void> {
  const dir = await tempDir();
  try {
    await body(dir);
  } finally {
    await removeDir(dir);
  }
}

function clock(start = T0) {
  let t = start;
  return { now: () => t, advance: (ms: number) => (t += ms) };
}

test('create and check; a session expires', async () => {
  await withDir(async (dir) => {
    const c = clock();
    const store = await SessionStore.open(dir, undefined, c.now);
    const s = await store.create('alice', HOUR);
    assert.match(s.token, /^s1\.[0-9a-f]{16}\.[A-Za-z0-9_-]{43}$/);
    assert.is(s.token.split('.')[1], s.id);
    assert.is(s.expiresAt, T0 + HOUR);
    assert.equal(store.check(s.token), { id: s.id, user: 'alice', expiresAt: T0 + HOUR });
    assert.equal(store.list(), [{ id: s.id, user: 'alice', createdAt: T0, expiresAt: T0 + HOUR }]);
    assert.is(store.check(s.token, T0 + HOUR - 1)?.user, 'alice');
    assert.is(store.check(s.token, T0 + HOUR), null);
    c.advance(HOUR);
    assert.is(store.check(s.token), null);
    assert.equal(store.list(), []);
    try {
      await store.create('Not A User', HOUR);
      assert.unreachable();
    } catch (err) {
      assert.is((err as DfsError).code, 'BAD_REQUEST');
    }
  });
});

test('revoke and revokeUser', async () => {
  await withDir(async (dir) => {
    const store = await SessionStore.open(dir);
    const a1 = await store.create('alice', HOUR);
    const a2 = await store.create('alice', HOUR);
    const a3 = await store.create('alice', HOUR);
    const b1 = await store.create('bob', HOUR);
    assert.is(await store.revoke(a1.id), true);
    assert.is(await store.revoke(a1.id), false);
    assert.is(await store.revoke('0123456789abcdef'), false);
    assert.is(store.check(a1.token), null);
    assert.is(await store.revokeUser('alice', a3.id), 1);
    assert.is(store.check(a2.token), null);
    assert.is(store.check(a3.token)?.id, a3.id);
    assert.is(store.check(b1.token)?.id, b1.id);
    assert.equal(store.list('alice').map((s) => s.id), [a3.id]);
    assert.is(await store.revokeUser('alice'), 1);
    assert.is(await store.revokeUser('nobody'), 0);
    assert.equal(store.list().map((s) => s.user), ['bob']);
  });
});

test('a reopen keeps sessions and revocations; the file holds no secret and is mode 0600', async () => {
  await withDir(async (dir) => {
    const c = clock();
    const store = await SessionStore.open(dir, undefined, c.now);
    const a = await store.create('alice', HOUR);
    c.advance(1000);
    const b = await store.create('bob', 2 * HOUR);
    const gone = await store.create('bob', HOUR);
    await store.revoke(gone.id);
    // No close(): each answer came once its change was durable.
    const reopened = await SessionStore.open(dir, undefined, c.now);
    assert.equal(reopened.check(a.token), store.check(a.token));
    assert.equal(reopened.check(b.token), { id: b.id, user: 'bob', expiresAt: T0 + 1000 + 2 * HOUR });
    assert.is(reopened.check(gone.token), null);
    assert.equal(reopened.list(), store.list());
    const text = await readFile(join(dir, SESSIONS_FILE), 'utf8');
    assert.is(text.split('\n')[0], 'id,user,secret_sha256,created,expires,revoked');
    for (const s of [a, b, gone]) assert.not.ok(text.includes(s.token.split('.')[2]!));
    assert.ok(text.includes(`${gone.id},bob,`));
    assert.match(text, new RegExp(`${a.id},alice,[0-9a-f]{64},2025-01-01T00:00:00.000Z,2025-01-01T01:00:00.000Z,\n`));
    assert.is((await stat(join(dir, SESSIONS_FILE))).mode & 0o777, 0o600);
  });
});

test('a tampered token is refused', async () => {
  await withDir(async (dir) => {
    const store = await SessionStore.open(dir);
    const s = await store.create('alice', HOUR);
    const other = await store.create('alice', HOUR);
    const [, id, secret] = s.token.split('.') as [string, string, string];
    const flip = (text: string, at: number) => text.slice(0, at) + (text[at] === 'A' ? 'B' : 'A') + text.slice(at + 1);
    // The last character holds 2 bits that are not part of the secret: any other value is not the token.
    const lastBits = secret.slice(0, -1) + 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'.split('').find((ch) => ch !== secret.at(-1) && Buffer.from(secret.slice(0, -1) + ch, 'base64url').equals(Buffer.from(secret, 'base64url')))!;
    const tampered = [
      `s2.${id}.${secret}`,
      `s1.${flip(id, 3)}.${secret}`,
      `s1.${id}.${flip(secret, 0)}`,
      `s1.${id}.${flip(secret, 42)}`,
      `s1.${id}.${lastBits}`,
      `s1.${id}.${other.token.split('.')[2]}`,
      `s1.${other.id}.${secret}`,
      `s1.${id.toUpperCase()}.${secret}`,
      `s1.${id}.${secret}=`,
      `s1.${id}.${secret.slice(0, -1)}`,
      ` ${s.token}`,
      `${s.token}\n`,
      `s1.${id}`,
      '',
    ];
    for (const token of tampered) assert.is(store.check(token), null, JSON.stringify(token));
    assert.is(store.check(undefined as unknown as string), null);
    assert.is(store.check(s.token)?.id, s.id);
  });
});

test('concurrent changes are written together; each is durable when it resolves', async () => {
  await withDir(async (dir) => {
    const store = await SessionStore.open(dir);
    const created = await Promise.all(Array.from({ length: 50 }, (_, i) => store.create(`user${i % 7}`, HOUR)));
    assert.ok(store.rewriteCount <= 3, `rewrites: ${store.rewriteCount}`);
    const reopened = await SessionStore.open(dir);
    for (const s of created) assert.ok(reopened.check(s.token), s.id);
    const before = store.rewriteCount;
    await Promise.all([store.revoke(created[0]!.id), store.revoke(created[1]!.id), store.revokeUser('user6')]);
    assert.ok(store.rewriteCount - before <= 2);
    const again = await SessionStore.open(dir);
    assert.is(again.check(created[0]!.token), null);
    assert.is(again.check(created[6]!.token), null);
    assert.is(again.list().length, 50 - 2 - 7);
  });
});

test('expired and revoked rows are dropped a day later', async () => {
  await withDir(async (dir) => {
    const c = clock();
    const store = await SessionStore.open(dir, undefined, c.now);
    const revoked = await store.create('alice', 10 * DAY);
    const expiring = await store.create('alice', HOUR);
    const live = await store.create('alice', 10 * DAY);
    await store.revoke(revoked.id);
    c.advance(DAY - 60_000);
    await store.create('bob', HOUR); // a rewrite: both ended less than a day ago
    let text = await readFile(join(dir, SESSIONS_FILE), 'utf8');
    assert.ok(text.includes(revoked.id) && text.includes(expiring.id));
    c.advance(2 * HOUR);
    await store.create('bob', HOUR);
    text = await readFile(join(dir, SESSIONS_FILE), 'utf8');
    assert.not.ok(text.includes(revoked.id));
    assert.not.ok(text.includes(expiring.id));
    assert.ok(text.includes(live.id));
    assert.is(store.check(live.token)?.user, 'alice');
  });
});

test('caps: a user past its cap loses its oldest session; past the overall cap logins are refused', async () => {
  await withDir(async (dir) => {
    const c = clock();
    const store = await SessionStore.open(dir, undefined, c.now, { maxPerUser: 3, maxSessions: 5 });
    const alice = [];
    for (let i = 0; i < 4; i++) {
      alice.push(await store.create('alice', HOUR));
      c.advance(1);
    }
    assert.is(store.check(alice[0]!.token), null);
    assert.equal(store.list('alice').map((s) => s.id), alice.slice(1).map((s) => s.id));
    await store.create('bob', 10 * HOUR);
    await store.create('bob', 10 * HOUR);
    try {
      await store.create('carol', HOUR);
      assert.unreachable();
    } catch (err) {
      assert.is((err as DfsError).code, 'LIMIT');
    }
    // A user at its own cap can still log in (its oldest goes).
    const a5 = await store.create('alice', HOUR);
    assert.is(store.check(alice[1]!.token), null);
    assert.is(store.check(a5.token)?.user, 'alice');
    // Expired sessions do not count.
    c.advance(2 * HOUR);
    const carol = await store.create('carol', HOUR);
    assert.is(store.check(carol.token)?.user, 'carol');
    assert.is(store.list().length, 3);
  });
});

test('a damaged row is skipped; an unreadable file is moved aside and the store starts empty', async () => {
  await withDir(async (dir) => {
    const store = await SessionStore.open(dir);
    const s = await store.create('alice', HOUR);
    const path = join(dir, SESSIONS_FILE);
    await writeFile(path, (await readFile(path, 'utf8')) + 'zzzz,alice,00,bad,bad,\n');
    const lines: string[] = [];
    const log = createLogger('test', 'debug', (line) => lines.push(line));
    const reopened = await SessionStore.open(dir, log);
    assert.is(reopened.check(s.token)?.id, s.id);
    assert.is(lines.length, 1);
    assert.match(lines[0]!, /rows=3 count=1/);

    await writeFile(path, 'what is this\n"unclosed\n');
    const fresh = await SessionStore.open(dir, log);
    assert.equal(fresh.list(), []);
    assert.is(await readIfExists(path), null);
    assert.ok(await readIfExists(path + '.damaged'));
    assert.match(lines[1]!, /cannot be read/);
  });
});

test.run();
