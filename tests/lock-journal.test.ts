/**
 * The lock holders' journal replay (servers/lock/holder-state.ts): pure, no disk.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { HolderState, formatRecord, parseJournal, parseSnapshot, type JournalRecord } from '../servers/lock/holder-state.js';
import { DfsError } from '../shared/errors.js';

const test = suite('lock-journal');

const HASH = 'a'.repeat(64);

function replay(records: JournalRecord[], from = new HolderState()): HolderState {
  for (const record of records) from.apply(record);
  return from;
}

/** The state as plain sorted data, to compare two states. */
function view(state: HolderState) {
  return {
    sessions: [...state.sessions.values()].sort((a, b) => (a.id < b.id ? -1 : 1)),
    holders: [...state.holders.values()].sort((a, b) => (a.name < b.name ? -1 : 1)),
  };
}

test('grants, releases and ends build who holds what', () => {
  const state = replay([
    { t: 'session', id: 'aaaaaaaa', label: 'alice', secretHash: HASH },
    { t: 'session', id: 'bbbbbbbb', label: 'bob', secretHash: null },
    { t: 'grant', name: 'x.txt', session: 'aaaaaaaa', token: 1, since: 10 },
    { t: 'grant', name: 'y.txt', session: 'aaaaaaaa', token: 2, since: 11 },
    { t: 'release', name: 'x.txt', token: 1 },
    { t: 'grant', name: 'x.txt', session: 'bbbbbbbb', token: 3, since: 12 },
    { t: 'session', id: 'aaaaaaaa', label: 'alice2', secretHash: HASH },
  ]);
  assert.equal(view(state).holders, [
    { name: 'x.txt', session: 'bbbbbbbb', token: 3, since: 12 },
    { name: 'y.txt', session: 'aaaaaaaa', token: 2, since: 11 },
  ]);
  assert.is(state.sessions.get('aaaaaaaa')!.label, 'alice2');
  state.apply({ t: 'end', session: 'aaaaaaaa' });
  assert.equal([...state.holders.keys()], ['x.txt']);
  assert.not.ok(state.sessions.has('aaaaaaaa'));
  assert.equal(state.sessionsHolding().map((s) => s.id), ['bbbbbbbb']);
});

test('a release under another token and a grant older than the holder change nothing', () => {
  const state = replay([
    { t: 'session', id: 'aaaaaaaa', label: '', secretHash: null },
    { t: 'grant', name: 'x.txt', session: 'aaaaaaaa', token: 5, since: 1 },
    { t: 'release', name: 'x.txt', token: 4 },
    { t: 'grant', name: 'x.txt', session: 'bbbbbbbb', token: 3, since: 2 },
  ]);
  assert.equal(view(state).holders, [{ name: 'x.txt', session: 'aaaaaaaa', token: 5, since: 1 }]);
  assert.not.ok(state.sessions.has('bbbbbbbb'));
});

test('a grant to a session with no record keeps the lock, without a secret to reclaim it by', () => {
  const state = replay([{ t: 'grant', name: 'x.txt', session: 'cccccccc', token: 1, since: 1 }]);
  assert.equal(state.sessions.get('cccccccc'), { id: 'cccccccc', label: '', secretHash: null });
});

/** A seeded history of sessions coming and going, taking and releasing locks. */
function history(seed: number, length: number): JournalRecord[] {
  let x = seed;
  const random = () => ((x = (x * 1103515245 + 12345) % 2147483648) / 2147483648);
  const names = ['a', 'b', 'c', 'd', 'e'].map((n) => `${n}.txt`);
  const live: string[] = [];
  const holders = new Map<string, { session: string; token: number }>();
  const records: JournalRecord[] = [];
  let token = 0;
  let sessionCount = 0;
  while (records.length < length) {
    const roll = random();
    if (roll < 0.15 || live.length === 0) {
      const id = (0x10000000 + sessionCount++).toString(16);
      live.push(id);
      records.push({ t: 'session', id, label: `s${sessionCount}`, secretHash: HASH });
    } else if (roll < 0.55) {
      const name = names[Math.floor(random() * names.length)]!;
      if (holders.has(name)) continue;
      const session = live[Math.floor(random() * live.length)]!;
      holders.set(name, { session, token: ++token });
      records.push({ t: 'grant', name, session, token, since: token });
    } else if (roll < 0.85) {
      const held = [...holders.entries()];
      if (held.length === 0) continue;
      const [name, holder] = held[Math.floor(random() * held.length)]!;
      holders.delete(name);
      records.push({ t: 'release', name, token: holder.token });
    } else if (roll < 0.93) {
      const session = live[Math.floor(random() * live.length)]!;
      records.push({ t: 'session', id: session, label: `renamed-${records.length}`, secretHash: HASH });
    } else {
      const [session] = live.splice(Math.floor(random() * live.length), 1);
      for (const [name, holder] of holders) if (holder.session === session) holders.delete(name);
      records.push({ t: 'end', session: session! });
    }
  }
  return records;
}

test('replaying records a snapshot already holds changes nothing (a crash mid-compaction)', () => {
  for (const seed of [1, 7, 42, 1234]) {
    const records = history(seed, 300);
    const final = view(replay(records));
    for (let k = 0; k <= records.length; k += 13) {
      const snapshot = replay(records.slice(0, k)).snapshot();
      // The journal a crash leaves starts at the previous compaction, anywhere up to k.
      for (let j = 0; j <= k; j += 29) {
        const restored = replay(records.slice(j), HolderState.fromSnapshot(snapshot));
        assert.equal(view(restored), final, `seed ${seed}: snapshot after ${k} records, journal from record ${j}`);
      }
    }
  }
});

test('journal lines: a torn last write and damaged lines are skipped and reported', () => {
  const good: JournalRecord[] = [
    { t: 'session', id: 'aaaaaaaa', label: 'alice', secretHash: HASH },
    { t: 'grant', name: 'x.txt', session: 'aaaaaaaa', token: 1, since: 1 },
  ];
  const text = formatRecord(good[0]!) + '{"t":"grant","name":"../bad","session":"aaaaaaaa","token":2,"since":1}\n' + formatRecord(good[1]!) + '{"t":"release","na';
  const parsed = parseJournal(text);
  assert.equal(parsed.records, good);
  assert.equal(parsed.damaged, [2, 4]);
  assert.equal(parseJournal(''), { records: [], damaged: [] });
});

test('a snapshot that is not one stops the start with a clear error', () => {
  for (const text of ['{', '{"format":2,"sessions":[],"holders":[]}', '{"format":1,"sessions":[],"holders":[{"name":"x","session":"zz","token":1,"since":1}]}']) {
    try {
      parseSnapshot(text, '/data/holders.json');
      assert.unreachable(text);
    } catch (err) {
      assert.instance(err, DfsError);
      assert.is((err as DfsError).code, 'INTERNAL');
      assert.match((err as DfsError).message, '/data/holders.json');
    }
  }
  const snapshot = replay(history(3, 50)).snapshot();
  assert.equal(parseSnapshot(JSON.stringify(snapshot), 'x'), snapshot);
});

test.run();
