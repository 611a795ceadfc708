import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { Cluster, type CopySet, type ServerLoad } from '../servers/directory/cluster.js';
import { DfsError } from '../shared/errors.js';

const test = suite('directory-cluster');

/** A clock the test moves by hand. */
function clock(start = 1_000_000) {
  let now = start;
  return { now: () => now, advance: (ms: number) => (now += ms) };
}

function errorOf(fn: () => unknown): DfsError {
  try {
    fn();
  } catch (err) {
    if (err instanceof DfsError) return err;
    throw err;
  }
  throw new Error('expected an error');
}

function readyCluster(ids: string[], options: { replication?: number } = {}) {
  const time = clock();
  const cluster = new Cluster({ replication: options.replication ?? 3, downAfterMs: 3000, now: time.now });
  for (const id of ids) {
    cluster.register(id, `ws://127.0.0.1:${12000 + ids.indexOf(id)}`);
    cluster.synced(id, cluster.currentMarkSeq);
  }
  return { cluster, time };
}

test('a silent server goes down, a heartbeat cannot revive it, registering again does', () => {
  const { cluster, time } = readyCluster(['fs1', 'fs2']);
  time.advance(2000);
  cluster.heartbeat('fs1');
  time.advance(1500);
  assert.is(cluster.isUp('fs1'), true);
  assert.is(cluster.isUp('fs2'), false, 'down as soon as it is silent past the limit');
  assert.equal(cluster.sweep(), [{ id: 'fs2', silentMs: 3500 }]);
  assert.equal(cluster.sweep(), [], 'reported once');
  const err = errorOf(() => cluster.heartbeat('fs2'));
  assert.is(err.code, 'NOT_FOUND');
  assert.is(err.message, 'server fs2 is not registered; register again');
  assert.is(errorOf(() => cluster.heartbeat('nobody')).code, 'NOT_FOUND');
  const again = cluster.register('fs2', 'ws://127.0.0.1:12001');
  assert.is(again.before, 'down');
  assert.is(cluster.isUp('fs2'), true);
  assert.is(cluster.isSyncing('fs2'), true);
  assert.is(cluster.view('fs2')?.lastHeartbeat, null);
});

test('another up server cannot take a registered URL', () => {
  const { cluster, time } = readyCluster(['fs1']);
  assert.is(errorOf(() => cluster.register('fs9', 'ws://127.0.0.1:12000')).code, 'EXISTS');
  time.advance(5000);
  assert.is(cluster.register('fs9', 'ws://127.0.0.1:12000').before, 'new', 'fine once the old one is down');
});

test('placement: primaries and files spread evenly over 6 servers with R=3', () => {
  const ids = ['fs1', 'fs2', 'fs3', 'fs4', 'fs5', 'fs6'];
  const { cluster } = readyCluster(ids);
  const loads = new Map<string, ServerLoad>(ids.map((id) => [id, { files: 0, primaries: 0 }]));
  for (let i = 0; i < 60; i++) {
    const { primary, replicas } = cluster.place(ids, (id) => loads.get(id)!);
    assert.is(replicas.length, 2);
    assert.is(new Set([primary, ...replicas]).size, 3);
    loads.get(primary)!.primaries++;
    for (const id of [primary, ...replicas]) loads.get(id)!.files++;
  }
  for (const id of ids) assert.equal(loads.get(id), { files: 30, primaries: 10 }, id);
});

test('placement: fewer servers than R, down replicas last, syncing never primary, none up', () => {
  const { cluster, time } = readyCluster(['fs1', 'fs2']);
  const zero = () => ({ files: 0, primaries: 0 });
  const two = cluster.place(['fs1', 'fs2'], zero);
  assert.equal([two.primary, ...two.replicas].sort(), ['fs1', 'fs2']);
  // fs3 is known (from the table) but not registered: down, so only a replica, and after up ones.
  cluster.register('fs4', 'ws://127.0.0.1:12004'); // up but syncing
  const loads: Record<string, ServerLoad> = { fs1: { files: 5, primaries: 5 }, fs2: { files: 5, primaries: 0 }, fs3: { files: 0, primaries: 0 }, fs4: { files: 9, primaries: 0 } };
  const placed = cluster.place(['fs1', 'fs2', 'fs3', 'fs4'], (id) => loads[id]!);
  assert.is(placed.primary, 'fs2');
  assert.equal(placed.replicas, ['fs1', 'fs4']);
  time.advance(10_000);
  cluster.register('fs4', 'ws://127.0.0.1:12004');
  const catching = errorOf(() => cluster.place(['fs1', 'fs4'], zero));
  assert.is(catching.code, 'UNAVAILABLE');
  assert.match(catching.message, /fs4 still catching up/);
  time.advance(10_000);
  const none = errorOf(() => cluster.place(['fs1', 'fs2', 'fs3'], zero));
  assert.is(none.code, 'UNAVAILABLE');
  assert.is(none.message, 'no file servers are up');
});

test('reads go round-robin over usable replicas, then to the primary', () => {
  const { cluster, time } = readyCluster(['p', 'r1', 'r2']);
  const copies: CopySet = { primary: 'p', replicas: ['r1', 'r2'] };
  const reads = (n: number) => Array.from({ length: n }, () => cluster.reader('f', copies).id);
  assert.equal(reads(4), ['r1', 'r2', 'r1', 'r2']);
  cluster.markBehind('f', 'r1');
  assert.equal(reads(3), ['r2', 'r2', 'r2']);
  assert.equal(cluster.reader('other', { primary: 'p', replicas: ['r1', 'r2'] }).id, 'r1', 'marks are per file');
  cluster.register('r2', 'ws://127.0.0.1:12002'); // syncing again
  assert.equal(cluster.reader('f', copies), { id: 'p', role: 'primary' });
  assert.is(cluster.writer('f', copies), 'p');
  time.advance(3001);
  const err = errorOf(() => cluster.reader('f', copies));
  assert.is(err.code, 'UNAVAILABLE');
  assert.match(err.message, /p \(down\), r1 \(down\), r2 \(down\)/);
  const writeErr = errorOf(() => cluster.writer('f', copies));
  assert.is(writeErr.code, 'UNAVAILABLE');
  assert.match(writeErr.message, /primary of f, server p, is down/);
});

test('behind marks: synced clears marks up to upTo and keeps later ones; caughtUp does it for named copies', () => {
  const { cluster } = readyCluster(['p', 'r']);
  cluster.markBehind('a', 'r');
  cluster.markBehind('b', 'r');
  const registration = cluster.register('r', 'ws://127.0.0.1:12001');
  assert.is(registration.markSeq, 2);
  cluster.markBehind('c', 'r'); // during the catch-up
  assert.equal(cluster.heartbeat('r'), { behind: ['a', 'b', 'c'], more: false, markSeq: 3, boot: '' });
  cluster.markBehind('d', 'r'); // what the catch-up could not fix, marked before it says synced
  assert.equal(cluster.synced('r', registration.markSeq), { cleared: ['a', 'b'] });
  assert.is(cluster.isSyncing('r'), false);
  assert.equal(cluster.heartbeat('r').behind, ['c', 'd']);
  assert.is(cluster.isReadable('r', 'a'), true);
  assert.is(cluster.isReadable('r', 'c'), false);
  assert.is(errorOf(() => cluster.synced('r', 99)).code, 'BAD_REQUEST');
  // a partial catch-up of c, while d was marked again after the heartbeat it answered
  const beat = cluster.heartbeat('r');
  cluster.markBehind('d', 'r');
  assert.equal(cluster.caughtUp('r', beat.markSeq, ['c', 'd', 'never-marked']), { cleared: ['c'] });
  assert.equal(cluster.heartbeat('r').behind, ['d']);
  assert.equal(cluster.forget('d', { primary: 'p', replicas: ['r'] }), ['r']);
  assert.is(cluster.behindCount('r'), 0);
});

test('renewing marks keeps the ones a server has past its synced, and makes no new ones', () => {
  const { cluster } = readyCluster(['p', 'r']);
  cluster.markBehind('a', 'r');
  const registration = cluster.register('r', 'ws://127.0.0.1:12001');
  // The catch-up could not check a (marked) nor b (not marked): their primary is down.
  assert.is(cluster.renewMarks('r', ['a', 'b']), 1);
  assert.equal(cluster.synced('r', registration.markSeq), { cleared: [] });
  assert.is(cluster.isReadable('r', 'a'), false, 'a keeps its mark');
  assert.is(cluster.isReadable('r', 'b'), true, 'b was never marked: it holds every acknowledged write');
  assert.equal([...cluster.allMarks()], [{ server: 'r', name: 'a' }]);
});

test('while a file\'s primary is down, its reads stay on one replica', () => {
  const { cluster, time } = readyCluster(['p', 'r1', 'r2']);
  const copies: CopySet = { primary: 'p', replicas: ['r1', 'r2'] };
  const reads = (n: number) => Array.from({ length: n }, () => cluster.reader('f', copies).id);
  assert.equal(reads(2), ['r1', 'r2']);
  time.advance(2000);
  cluster.heartbeat('r1');
  cluster.heartbeat('r2');
  time.advance(1500); // p silent past the limit
  assert.equal(reads(3), ['r1', 'r1', 'r1']);
  cluster.markBehind('f', 'r1');
  assert.equal(reads(2), ['r2', 'r2']);
});

test('a heartbeat answers one page of behind names, by bytes, and says when more follow', () => {
  const { cluster } = readyCluster(['p', 'r']);
  const long = (i: number) => `${'x'.repeat(200)}/${i}`;
  for (let i = 0; i < 1000; i++) cluster.markBehind(long(i), 'r');
  const beat = cluster.heartbeat('r');
  assert.is(beat.more, true);
  assert.ok(beat.behind.length > 100 && beat.behind.length < 1000, `${beat.behind.length} names`);
  assert.ok(Buffer.byteLength(JSON.stringify(beat)) < 64 * 1024);
  assert.equal(beat.behind.slice(0, 2), [long(0), long(1)], 'oldest marks first');
});

test.run();
