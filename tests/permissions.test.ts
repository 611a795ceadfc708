/**
 * Owners and modes (shared/permissions.ts): every form parseMode accepts, what it refuses and
 * why, and who may read and write.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { DfsError } from '../shared/errors.js';
import { DEFAULT_MODE, PRIVATE_MODE, explainDenied, formatMode, may, modeProblem, modeSchema, ownerProblem, parseMode } from '../shared/permissions.js';

const test = suite('permissions');

function refused(text: string, current: number, pattern: RegExp): void {
  try {
    parseMode(text, current);
  } catch (err) {
    assert.instance(err, DfsError);
    assert.is((err as DfsError).code, 'BAD_REQUEST');
    assert.match((err as DfsError).message, pattern);
    return;
  }
  assert.unreachable(`${text} was accepted`);
}

test('formatMode', () => {
  assert.is(formatMode(DEFAULT_MODE), 'rw-r--r--');
  assert.is(formatMode(PRIVATE_MODE), 'rw-------');
  assert.is(formatMode(0), '---------');
  assert.is(formatMode(0o666), 'rw-rw-rw-');
  assert.is(formatMode(0o240), '-w-r-----');
  assert.throws(() => formatMode(0o1000));
});

test('parseMode: octal', () => {
  assert.is(parseMode('644', 0), 0o644);
  assert.is(parseMode('0600', 0o644), 0o600);
  assert.is(parseMode('000', 0o644), 0);
  assert.is(parseMode('666', 0), 0o666);
  refused('755', 0, /execute.*644 is probably meant/);
  refused('0700', 0, /execute.*600 is probably meant/);
  refused('4644', 0, /setuid/);
  refused('1777', 0, /sticky.*666 is probably meant/);
  refused('64', 0, /3 digits/);
  refused('00644', 0, /3 digits/);
  refused('648', 0, /0 to 7/);
});

test('parseMode: the 9-character form', () => {
  assert.is(parseMode('rw-r-----', 0o644), 0o640);
  assert.is(parseMode('---------', 0o644), 0);
  assert.is(parseMode('rw-rw-rw-', 0), 0o666);
  assert.is(parseMode('r--------', 0), 0o400);
  refused('rwxr-xr-x', 0, /rw-r--r-- is probably meant/);
  refused('rwsr--r--', 0, /setuid/);
  refused('rw-r--r-T', 0, /sticky/);
  refused('wr-------', 0, /not a clause/);
});

test('parseMode: chmod clauses', () => {
  assert.is(parseMode('u+w', 0o444), 0o644);
  assert.is(parseMode('go-rw', 0o666), 0o600);
  assert.is(parseMode('a=r', 0o666), 0o444);
  assert.is(parseMode('o=', 0o646), 0o640);
  assert.is(parseMode('+r', 0o200), 0o644); // no letter is a
  assert.is(parseMode('-w', 0o666), 0o444);
  assert.is(parseMode('=', 0o666), 0);
  assert.is(parseMode('u=rw,go=r', 0), 0o644);
  assert.is(parseMode('g+r,o-r', 0o604), 0o640);
  assert.is(parseMode('ug+rw', 0), 0o660);
  assert.is(parseMode('u=r+w', 0o044), 0o644); // several operations in one clause
  assert.is(parseMode('a+', 0o600), 0o600);
  assert.is(parseMode('u+rw', PRIVATE_MODE), PRIVATE_MODE);
});

test('parseMode: refusals', () => {
  refused('u+x', 0o644, /x is not supported.*not programs/);
  refused('a+X', 0o644, /x is not supported/);
  refused('u+s', 0o644, /setuid/);
  refused('+t', 0o644, /sticky/);
  refused('g=u', 0o644, /copying another class/);
  refused('u+q', 0o644, /"q" is not a permission/);
  refused('z+r', 0o644, /not a clause/);
  refused('u', 0o644, /not a clause/);
  refused('u+r,', 0o644, /not a clause/);
  refused('u+r, g+r', 0o644, /not a clause/);
  refused('', 0o644, /expected octal/);
  refused('rw-r--r', 0o644, /not a clause/);
});

test('modeSchema and modeProblem', () => {
  assert.ok(modeSchema.safeParse(0o644).success);
  assert.ok(modeSchema.safeParse(0).success);
  assert.ok(modeSchema.safeParse(0o666).success);
  for (const bad of [0o755, 0o100, 0o1000, -1, 6.4, '644', null]) assert.not.ok(modeSchema.safeParse(bad).success, String(bad));
  assert.is(modeProblem(0o640), null);
  assert.match(modeProblem(0o755)!, /644 is probably meant/);
  assert.match(modeProblem(512)!, /0 to 0o777/);
});

test('ownerProblem', () => {
  assert.is(ownerProblem('alice'), null);
  assert.is(ownerProblem('Zoë Smith'), null);
  for (const bad of ['', ' alice', 'al\nice', 'x'.repeat(129), '\ud800', 42]) assert.ok(ownerProblem(bad), JSON.stringify(bad));
});

const alice = { name: 'alice', admin: false };
const bob = { name: 'bob', admin: false };
const admin = { name: 'admin', admin: true };

test('may: the owner gets the user bits, everyone else the other bits, admins everything', () => {
  const shared = { owner: 'alice', mode: DEFAULT_MODE };
  assert.ok(may(alice, shared, 'read'));
  assert.ok(may(alice, shared, 'write'));
  assert.ok(may(bob, shared, 'read'));
  assert.not.ok(may(bob, shared, 'write'));

  const secret = { owner: 'alice', mode: PRIVATE_MODE };
  assert.ok(may(alice, secret, 'read'));
  assert.not.ok(may(bob, secret, 'read'));
  assert.not.ok(may(bob, secret, 'write'));
  assert.ok(may(admin, secret, 'read'));
  assert.ok(may(admin, secret, 'write'));
  assert.ok(may(admin, { owner: 'alice', mode: 0 }, 'write'));

  // The owner's own bits count for the owner, even when others get more.
  const readOnlyForOwner = { owner: 'alice', mode: 0o466 };
  assert.ok(may(alice, readOnlyForOwner, 'read'));
  assert.not.ok(may(alice, readOnlyForOwner, 'write'));
  assert.ok(may(bob, readOnlyForOwner, 'write'));
  assert.not.ok(may(alice, { owner: 'alice', mode: 0 }, 'read'));
});

test('may: group bits apply to nobody', () => {
  const groupOnly = { owner: 'alice', mode: 0o060 };
  assert.not.ok(may(alice, groupOnly, 'read'));
  assert.not.ok(may(alice, groupOnly, 'write'));
  assert.not.ok(may(bob, groupOnly, 'read'));
  assert.not.ok(may(bob, groupOnly, 'write'));
  assert.is(formatMode(groupOnly.mode), '---rw----'); // kept and shown all the same
});

test('explainDenied', () => {
  assert.is(explainDenied(bob, { owner: 'alice', mode: DEFAULT_MODE }, 'notes.txt', 'write'), "bob may not write alice's notes.txt (rw-r--r--)");
  assert.is(explainDenied(bob, { owner: 'alice', mode: PRIVATE_MODE }, 'a/b.txt', 'read'), "bob may not read alice's a/b.txt (rw-------)");
  assert.is(explainDenied(alice, { owner: 'alice', mode: 0o444 }, 'x', 'write'), 'alice may not write their own x (r--r--r--)');
});

test.run();
