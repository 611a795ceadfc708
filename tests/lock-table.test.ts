import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { LockTable, NO_HOLDER, PAGE_BYTES, WAITER_LIST_BYTES, ordinal, type LockSession, type Waiter, type AcquireOutcome, type Changes } from '../servers/lock/lock-table.js';
import { DfsError } from '../shared/errors.js';

const test = suite('lock-table');

function counter(start = 1): () => number {
  let next = start;
  return () => next++;
}

function session(id: string, label = ''): LockSession {
  return { id, label };
}

function queued<T>(outcome: AcquireOutcome<T>): Waiter<T> {
  if (outcome.kind !== 'queued') throw new Error(`expected queued, got ${outcome.kind}`);
  return outcome.waiter;
}

function granted<T>(outcome: AcquireOutcome<T>): number {
  if (outcome.kind !== 'granted') throw new Error(`expected granted, got ${outcome.kind}`);
  return outcome.token;
}

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    return (err as DfsError).code;
  }
  return 'ok';
}

const statusOf = <T>(table: LockTable<T>, name?: string) => table.statusPage(name === undefined ? {} : { name }).items;

const sessionsOf = <T>(changes: Changes<T>) => changes.granted.map((g) => g.waiter.session.id);

test('a free lock is granted at once; others wait in arrival order', () => {
  const table = new LockTable<string>(counter(), () => 1000);
  const [a, b, c, d] = ['a', 'b', 'c', 'd'].map((id) => session(id, `user-${id}`)) as [LockSession, LockSession, LockSession, LockSession];
  assert.is(granted(table.acquire('x', a)), 1);
  const wb = queued(table.acquire('x', b));
  const wc = queued(table.acquire('x', c));
  const wd = queued(table.acquire('x', d));
  assert.equal([wb.position, wc.position, wd.position], [1, 2, 3]);
  assert.is(table.holderOf('x'), 'client user-a (a)');

  let changes = table.release('x', a);
  assert.equal(sessionsOf(changes), ['b']);
  assert.is(changes.granted[0]!.token, 2);
  assert.equal(changes.moved, [wc, wd]);
  assert.equal([wc.position, wd.position], [1, 2]);
  assert.is(wb.waiting, false);

  changes = table.release('x', b);
  assert.equal(sessionsOf(changes), ['c']);
  changes = table.release('x', c);
  assert.equal(sessionsOf(changes), ['d']);
  assert.is(changes.moved.length, 0);
  changes = table.release('x', d);
  assert.is(changes.granted.length, 0);
  assert.is(table.size, 0, 'a free lock with no waiters is forgotten');
});

test('locks on different names are independent', () => {
  const table = new LockTable(counter());
  const a = session('a');
  const b = session('b');
  assert.is(granted(table.acquire('x', a)), 1);
  assert.is(granted(table.acquire('y', b)), 2);
  assert.is(granted(table.acquire('z', a)), 3);
  assert.ok(table.validate('x', 1) && table.validate('y', 2) && table.validate('z', 3));
});

test('re-acquire by the holder returns its token; a second wait by one session is refused', () => {
  const table = new LockTable(counter(7));
  const a = session('a');
  const b = session('b');
  assert.is(granted(table.acquire('x', a)), 7);
  const again = table.acquire('x', a);
  assert.equal(again, { kind: 'granted', token: 7, again: true });
  const wb = queued(table.acquire('x', b));
  assert.is(codeOf(() => table.acquire('x', b)), 'BAD_REQUEST');
  assert.is(wb.position, 1);
  assert.is(statusOf(table, 'x')[0]!.waiters.length, 1, 'the refused second wait changed nothing');
});

test('not waiting: busy with the holder described, nothing queued', () => {
  const table = new LockTable(counter());
  table.acquire('x', session('a', 'alice'));
  const outcome = table.acquire('x', session('b'), false);
  assert.equal(outcome, { kind: 'busy', holder: 'client alice (a)', waiting: 0 });
  assert.equal(statusOf(table, 'x')[0]!.waiters, []);
});

test('release by a non-holder, or with another token, is NOT_HOLDER and changes nothing', () => {
  const table = new LockTable(counter());
  const a = session('a');
  const b = session('b');
  const c = session('c');
  const token = granted(table.acquire('x', a));
  const wb = queued(table.acquire('x', b));
  const before = JSON.stringify(statusOf(table));
  assert.is(codeOf(() => table.release('x', c)), 'NOT_HOLDER');
  assert.is(codeOf(() => table.release('x', c, token)), 'NOT_HOLDER');
  assert.is(codeOf(() => table.release('x', b)), 'NOT_HOLDER', 'a waiter is not the holder');
  assert.is(codeOf(() => table.release('x', a, token + 1)), 'NOT_HOLDER', 'wrong token');
  assert.is(codeOf(() => table.release('free', a)), 'NOT_HOLDER');
  assert.is(JSON.stringify(statusOf(table)), before);
  assert.ok(table.validate('x', token));
  assert.ok(wb.waiting);
  assert.equal(sessionsOf(table.release('x', a, token)), ['b']);
});

test('the NOT_HOLDER message says who holds it', () => {
  const table = new LockTable(counter());
  table.acquire('notes.txt', session('7f3a', 'alice'));
  try {
    table.release('notes.txt', session('b'));
    assert.unreachable();
  } catch (err) {
    assert.match((err as Error).message, 'notes.txt is held by client alice (7f3a)');
  }
});

test('cancel takes a waiter out; those behind move up; it is never granted', () => {
  const table = new LockTable(counter());
  const [a, b, c, d] = ['a', 'b', 'c', 'd'].map((id) => session(id)) as [LockSession, LockSession, LockSession, LockSession];
  table.acquire('x', a);
  const wb = queued(table.acquire('x', b));
  const wc = queued(table.acquire('x', c));
  const wd = queued(table.acquire('x', d));
  const changes = table.cancel(wc)!;
  assert.equal(changes.moved, [wd]);
  assert.is(wd.position, 2);
  assert.is(wb.position, 1);
  assert.is(table.cancel(wc), null, 'a second cancel changes nothing');
  assert.equal(sessionsOf(table.release('x', a)), ['b']);
  assert.is(table.cancel(wb), null, 'a granted waiter cannot be cancelled');
  assert.equal(sessionsOf(table.release('x', b)), ['d']);
  // c may ask again: its earlier wait is gone
  assert.is(queued(table.acquire('x', c)).position, 1);
});

test('cancelling the only waiter of a free-able lock leaves nothing behind', () => {
  const table = new LockTable(counter());
  table.acquire('x', session('a'));
  const w = queued(table.acquire('x', session('b')));
  table.cancel(w);
  table.release('x', session('a'));
  assert.is(table.size, 0);
});

test('dropSession frees its locks, drops its waits, and grants the next waiters', () => {
  const table = new LockTable(counter());
  const [a, b, c] = ['a', 'b', 'c'].map((id) => session(id)) as [LockSession, LockSession, LockSession];
  table.acquire('x', a);
  table.acquire('y', a);
  table.acquire('z', b);
  const wbx = queued(table.acquire('x', b));
  const wcx = queued(table.acquire('x', c));
  const waz = queued(table.acquire('z', a));
  const wcz = queued(table.acquire('z', c));
  assert.equal([wcx.position, wcz.position], [2, 2]);

  const dropped = table.dropSession(a);
  assert.equal(dropped.released.sort(), ['x', 'y']);
  assert.is(dropped.waitsDropped, 1);
  assert.equal(sessionsOf(dropped.changes), ['b']);
  assert.is(dropped.changes.granted[0]!.waiter, wbx);
  assert.is(waz.waiting, false);
  assert.equal(new Set(dropped.changes.moved), new Set([wcx, wcz]));
  assert.is(dropped.changes.moved.length, 2, 'each moved waiter reported once');
  assert.equal([wcx.position, wcz.position], [1, 1]);
  assert.is(table.holderOf('y'), 'nobody');
  assert.is(statusOf(table, 'y').length, 0);
  // dropping again, or an unknown session, does nothing
  assert.is(table.dropSession(a).changes.granted.length, 0);
  assert.is(table.dropSession(session('nobody')).released.length, 0);
});

test('a session dropped while waiting behind its own hold is not granted its own lock', () => {
  const table = new LockTable(counter());
  const a = session('a');
  const b = session('b');
  table.acquire('x', b);
  const wa = queued(table.acquire('x', a));
  table.acquire('y', a);
  const dropped = table.dropSession(a);
  assert.equal(dropped.released, ['y']);
  assert.is(wa.waiting, false);
  assert.is(dropped.changes.granted.length, 0);
  assert.equal(sessionsOf(table.release('x', b)), []);
  assert.is(table.size, 0);
});

test('validate accepts only the token of the grant in force', () => {
  const table = new LockTable(counter(100));
  const a = session('a');
  const b = session('b');
  const first = granted(table.acquire('x', a));
  queued(table.acquire('x', b));
  assert.ok(table.validate('x', first));
  assert.not.ok(table.validate('x', first + 1), 'forged');
  assert.not.ok(table.validate('y', first), 'other name');
  const second = table.release('x', a).granted[0]!.token;
  assert.ok(second > first);
  assert.not.ok(table.validate('x', first), 'stale');
  assert.ok(table.validate('x', second));
  table.release('x', b);
  assert.not.ok(table.validate('x', second), 'released');
});

test('status describes holders, tokens, grant times and waiters in order', () => {
  let now = 5000;
  const table = new LockTable(counter(), () => now);
  table.acquire('b.txt', session('s1', 'alice'));
  now = 6000;
  table.acquire('a.txt', session('s2'));
  table.acquire('b.txt', session('s3', 'carol'));
  table.acquire('b.txt', session('s4'));
  assert.equal(statusOf(table), [
    { name: 'a.txt', holder: 'client s2', token: 2, since: 6000, waiters: [], waiting: 0 },
    { name: 'b.txt', holder: 'client alice (s1)', token: 1, since: 5000, waiters: ['client carol (s3)', 'client s4'], waiting: 2 },
  ]);
  assert.equal(statusOf(table, 'nothing.txt'), []);
});

test('without a token the first waiter stays in line until resume, keeping FIFO order', () => {
  let next = 1;
  let available = 1;
  const issue = () => (next <= available ? next++ : null);
  const table = new LockTable(issue);
  const [a, b, c] = ['a', 'b', 'c'].map((id) => session(id)) as [LockSession, LockSession, LockSession];
  assert.is(granted(table.acquire('x', a)), 1);
  const wb = queued(table.acquire('x', b));
  const changes = table.release('x', a);
  assert.is(changes.granted.length, 0);
  assert.equal(changes.moved, [wb], 'told that the holder changed');
  assert.is(table.holderOf('x'), NO_HOLDER);
  // a newcomer on a free-but-stalled name queues behind, and a fresh name queues too
  const wc = queued(table.acquire('x', c));
  assert.is(wc.position, 2);
  const wy = queued(table.acquire('y', c));
  assert.is(wy.position, 1);
  assert.equal(table.acquire('z', c, false), { kind: 'busy', holder: NO_HOLDER, waiting: 0 });
  assert.is(statusOf(table, 'z').length, 0);
  assert.is(table.resume().granted.length, 0, 'still no tokens: nothing granted, nobody told');
  available = 10;
  const resumed = table.resume();
  assert.equal(new Set(resumed.granted.map((g) => g.waiter)), new Set([wb, wy]));
  assert.equal(resumed.moved, [wc]);
  assert.is(wc.position, 1);
});

test('ordinals', () => {
  assert.equal([1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111].map(ordinal), ['1st', '2nd', '3rd', '4th', '11th', '12th', '13th', '21st', '22nd', '23rd', '101st', '111th']);
});

test('long lines: many waiters granted in order', () => {
  const table = new LockTable<number>(counter());
  const holder = session('h');
  table.acquire('x', holder);
  const waiters: Array<Waiter<number>> = [];
  for (let i = 0; i < 2000; i++) {
    const w = queued(table.acquire('x', session(`s${i}`)));
    w.data = i;
    waiters.push(w);
  }
  let current = holder;
  const order: number[] = [];
  for (let i = 0; i < 2000; i++) {
    const g = table.release('x', current).granted[0]!;
    order.push(g.waiter.data!);
    current = g.waiter.session;
  }
  assert.equal(order, waiters.map((w) => w.data));
});


test('per-session caps: past them acquire is LIMIT and changes nothing', () => {
  const table = new LockTable<string>(counter(), () => 0, { maxHeldPerSession: 3, maxWaitsPerSession: 2 });
  const [a, b] = [session('a'), session('b')];
  for (const name of ['1', '2', '3']) granted(table.acquire(name, a));
  const before = JSON.stringify(statusOf(table));
  const held = (() => {
    try {
      table.acquire('4', a);
    } catch (err) {
      return err as DfsError;
    }
    throw new Error('expected LIMIT');
  })();
  assert.is(held.code, 'LIMIT');
  assert.match(held.message, 'at most 3');
  assert.is(JSON.stringify(statusOf(table)), before, 'the refused acquire changed nothing');
  assert.is(granted(table.acquire('1', a)), 1, 'asking again for a lock it holds is no new lock');

  queued(table.acquire('1', b));
  queued(table.acquire('2', b));
  assert.is(codeOf(() => table.acquire('3', b)), 'LIMIT', 'a third wait');
  assert.is(codeOf(() => table.acquire('3', b, false)), 'ok', 'not waiting is not a wait: LOCKED, not LIMIT');
  granted(table.acquire('free', b));
  assert.is(codeOf(() => table.acquire('free2', b)), 'LIMIT', 'a hold plus two waits fill the cap of 3');
  assert.equal(statusOf(table, '3')[0]!.waiters, []);
});

test('status pages by bytes: 10,000 locks, long names, a long line of waiters', () => {
  const table = new LockTable<string>(counter(), () => 0, { maxHeldPerSession: 10_000, maxWaitsPerSession: 10 });
  const holder = session('h0h0h0h0', 'x'.repeat(64));
  const names: string[] = [];
  for (let i = 0; i < 10_000; i++) {
    const name = `${'d'.repeat(100)}/${'f'.repeat(120)}-${String(i).padStart(5, '0')}.txt`;
    names.push(name);
    granted(table.acquire(name, holder));
  }
  for (let i = 0; i < 500; i++) queued(table.acquire(names[42]!, session(`w${i}`, `waiter-${i}-${'y'.repeat(50)}`)));
  const seen: string[] = [];
  let after: string | undefined;
  let pages = 0;
  for (;;) {
    const page = table.statusPage(after === undefined ? {} : { after });
    pages++;
    const bytes = Buffer.byteLength(JSON.stringify({ locks: page.items, more: page.more }));
    assert.ok(bytes < PAGE_BYTES, `page ${pages} is ${bytes} bytes`);
    for (const lock of page.items) {
      seen.push(lock.name);
      if (lock.name === names[42]) {
        assert.is(lock.waiting, 500);
        assert.ok(lock.waiters.length > 10 && lock.waiters.length < 500, `${lock.waiters.length} waiters listed`);
        assert.ok(Buffer.byteLength(JSON.stringify(lock.waiters)) <= WAITER_LIST_BYTES + 2);
        assert.is(lock.waiters[0], 'client waiter-0-' + 'y'.repeat(50) + ' (w0)', 'line order');
      }
    }
    if (!page.more) break;
    after = page.items.at(-1)!.name;
  }
  assert.equal(seen, names, 'every lock once, in name order');
  assert.ok(pages > 10, `${pages} pages`);

  const held: string[] = [];
  after = undefined;
  for (;;) {
    const page = table.heldPage(holder, after);
    assert.ok(Buffer.byteLength(JSON.stringify(page)) < PAGE_BYTES);
    held.push(...page.items.map((l) => l.name));
    if (!page.more) break;
    after = page.items.at(-1)!.name;
  }
  assert.equal(held, names);
  assert.is(table.heldCount(holder), 10_000);
});

test('a restored holder keeps its token valid; others wait behind it; dropping it grants the next', () => {
  const table = new LockTable<string>(counter(500), () => 0);
  const orphan: LockSession = { id: 'o1', label: 'alice', awaitingReclaim: true };
  table.adopt('x', orphan, 41, 7);
  assert.ok(table.validate('x', 41));
  assert.match(table.holderOf('x'), /client alice \(o1\), kept for it after a lock-service restart/);
  assert.is(table.acquire('x', session('b'), false).kind, 'busy');
  const wb = queued(table.acquire('x', session('b')));
  assert.is(codeOf(() => table.adopt('x', orphan, 42, 7)), 'INTERNAL');
  const dropped = table.dropSession(orphan);
  assert.equal(dropped.released, ['x']);
  assert.equal(sessionsOf(dropped.changes), ['b']);
  assert.is(dropped.changes.granted[0]!.token, 500);
  assert.is(wb.waiting, false);
});

test.run();
