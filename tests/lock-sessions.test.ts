/**
 * The session registry and the grace period after a restart: time and ids injected, no sockets.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { SessionRegistry, hashSecret } from '../servers/lock/sessions.js';
import { DfsError } from '../shared/errors.js';

const test = suite('lock-sessions');

function ids(...values: string[]): () => string {
  let i = 0;
  return () => values[i++ % values.length]!;
}

function failure(fn: () => unknown): DfsError {
  try {
    fn();
  } catch (err) {
    if (err instanceof DfsError) return err;
    throw err;
  }
  throw new Error('expected a DfsError');
}

test('ids come from the random source, never repeating a known one', () => {
  const registry = new SessionRegistry(() => 0, ids('aaaaaaaa', 'aaaaaaaa', 'bbbbbbbb'));
  assert.is(registry.open('alice', hashSecret('s1')).id, 'aaaaaaaa');
  assert.is(registry.open('bob', hashSecret('s2')).id, 'bbbbbbbb', 'a colliding id is drawn again');
  assert.is(registry.size, 2);
});

test('an orphan is reclaimed only with its secret, within the grace period', () => {
  let now = 1000;
  const registry = new SessionRegistry(() => now, ids('cccccccc'));
  const [alice, bob] = registry.restore(
    [
      { id: 'a1a1a1a1', label: 'alice', secretHash: hashSecret('alice-secret-0123') },
      { id: 'b2b2b2b2', label: 'bob', secretHash: hashSecret('bob-secret-456789') },
    ],
    3000,
  );
  assert.is(alice!.awaitingReclaim, true);
  assert.is(registry.graceLeftMs, 3000);

  const wrong = failure(() => registry.reclaim('a1a1a1a1', 'bob-secret-456789'));
  const unknown = failure(() => registry.reclaim('deadbeef', 'alice-secret-0123'));
  assert.is(wrong.code, 'LOCK_LOST');
  assert.is(unknown.code, 'LOCK_LOST');
  // The same words whether the id is unknown or the secret wrong: nothing to learn from them.
  assert.is(wrong.message.replace('a1a1a1a1', 'ID'), unknown.message.replace('deadbeef', 'ID'));

  now = 2500;
  assert.is(registry.reclaim('a1a1a1a1', 'alice-secret-0123'), alice);
  assert.is(alice!.awaitingReclaim, false);
  assert.is(failure(() => registry.reclaim('a1a1a1a1', 'alice-secret-0123')).code, 'LOCK_LOST', 'reclaimed once: now attached, not an orphan');
  assert.equal(registry.expireOrphans(), [], 'nothing expires before the grace period ends');

  now = 4000;
  assert.is(failure(() => registry.reclaim('b2b2b2b2', 'bob-secret-456789')).code, 'LOCK_LOST', 'too late');
  assert.equal(registry.expireOrphans(), [bob]);
  assert.is(registry.graceLeftMs, 0);
  assert.is(registry.size, 1, 'alice stays');
});

test('a live session cannot be reclaimed, even with its secret; one without a secret never', () => {
  const registry = new SessionRegistry(() => 0, ids('11111111', '22222222'));
  const live = registry.open('alice', hashSecret('alice-secret-0123'));
  registry.restore([{ id: '33333333', label: '', secretHash: null }], 1000);
  assert.is(failure(() => registry.reclaim(live.id, 'alice-secret-0123')).code, 'LOCK_LOST');
  assert.is(failure(() => registry.reclaim('33333333', 'anything-at-all-00')).code, 'LOCK_LOST');
});

test('the grace period ends early once every orphan is reclaimed', () => {
  const registry = new SessionRegistry(() => 0, ids('99999999'));
  registry.restore([{ id: 'a1a1a1a1', label: 'alice', secretHash: hashSecret('alice-secret-0123') }], 3000);
  registry.reclaim('a1a1a1a1', 'alice-secret-0123');
  assert.is(registry.graceLeftMs, 0);
  assert.equal(registry.expireOrphans(), []);
});

test('restoring nothing starts no grace period', () => {
  const registry = new SessionRegistry(() => 0, ids('99999999'));
  registry.restore([], 3000);
  assert.is(registry.graceLeftMs, 0);
});

test.run();
