/**
 * Locks the client library holds, through lock-service restarts and losses, on a real cluster:
 * a restart does not break a lock in use; a lost lock fails the writes under it with LOCK_LOST,
 * never taking a fresh lock behind the caller's back.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { DfsClient } from '../client/dfs-client.js';
import { DfsError } from '../shared/errors.js';
import { Cluster } from './helpers/cluster.js';
import { startNode, type ServiceProcess } from './helpers/process.js';
import { waitFor } from './helpers/wait.js';
import { failure } from './helpers/raw.js';

const test = suite('lock-loss');

let cluster: Cluster;
const clients: DfsClient[] = [];

async function client(name: string, options: Omit<Parameters<typeof DfsClient.connect>[1], 'transport'> = {}): Promise<DfsClient> {
  const c = await cluster.client({ clientName: name, ...options });
  clients.push(c);
  return c;
}


/** kill -9 the lock service and start it again on the same port and data. */
async function crashLockService(extra: string[] = []): Promise<void> {
  await cluster.lock.kill9();
  await cluster.startLock(undefined, extra);
}

test.before(async () => {
  cluster = await Cluster.start();
});

test.after.each(() => {
  for (const c of clients.splice(0)) c.close();
});

test.after(async () => {
  await cluster.stop();
});

test('A locks counter and reads 0, the lock service restarts, B adds 100: the end is 101, or A is told LOCK_LOST; never 1', async () => {
  const a = await client('A');
  const b = await client('B');
  await a.create('counter');
  await a.write('counter', '0');
  await a.lock('counter');
  const seen = Number((await a.read('counter')).content.toString());
  assert.is(seen, 0);

  await crashLockService();

  let bInLine = false;
  let bLocked = false;
  const bDone = (async () => {
    const lock = await b.lock('counter', { timeoutMs: 30_000, onQueued: () => (bInLine = true) });
    bLocked = true;
    const value = Number((await b.read('counter')).content.toString());
    await b.write('counter', String(value + 100));
    await lock.release();
  })();
  await waitFor(() => bInLine || bLocked, { what: 'B to wait in line for counter, or to get it', timeoutMs: 20_000 });

  const aWrite = await a.write('counter', String(seen + 1)).then(
    () => 'ok',
    (err: DfsError) => err,
  );
  await a.unlock('counter').catch(() => {});
  await bDone;
  const final = (await a.read('counter')).content.toString();
  if (aWrite === 'ok') {
    assert.is(final, '101', 'both updates present');
  } else {
    assert.is((aWrite as DfsError).code, 'LOCK_LOST', String(aWrite));
    assert.is(final, '100');
  }
  // With the default grace period A reclaims its lock well in time, and B waited behind it.
  assert.is(aWrite, 'ok');
  assert.ok(bInLine, 'B queued behind A');
});

test('a lock that cannot be reclaimed is lost: every write under it fails with LOCK_LOST until unlock', async () => {
  const lost: Array<{ name: string; error: DfsError }> = [];
  const a = await client('A', { onLockLost: (name, error) => lost.push({ name, error }) });
  const reader = await client('reader');
  await a.create('lost.txt');
  await a.write('lost.txt', 'before\n');
  await a.lock('lost.txt');
  assert.ok(a.holds('lost.txt'));

  // No grace period: the restarted service drops restored holders at once.
  await crashLockService(['--grace-ms', '0']);
  await waitFor(() => lost.length > 0, { what: 'the loss to be noticed and reported', timeoutMs: 20_000 });
  assert.is(lost[0]!.name, 'lost.txt');
  assert.is(lost[0]!.error.code, 'LOCK_LOST');
  assert.not.ok(a.holds('lost.txt'));

  for (const attempt of [() => a.write('lost.txt', 'stale\n'), () => a.append('lost.txt', 'stale\n'), () => a.delete('lost.txt')]) {
    const err = await failure(attempt());
    assert.is(err.code, 'LOCK_LOST');
    assert.match(err.message, /^the lock on lost\.txt was lost: .*nothing was written to lost\.txt$/);
  }
  assert.is((await reader.read('lost.txt')).content.toString(), 'before\n', 'nothing written under the lost lock');

  const unlock = await failure(a.unlock('lost.txt'));
  assert.is(unlock.code, 'LOCK_LOST', 'unlock says what happened');
  assert.match(unlock.message, 'the lock on lost.txt was lost');
  // Unlocked: writes take their own lock again.
  await a.append('lost.txt', 'after\n');
  assert.is((await reader.read('lost.txt')).content.toString(), 'before\nafter\n');
  await crashLockService();
});

test('a write whose token a file server refuses is LOCK_LOST, and the lock is known lost', async () => {
  const lost: string[] = [];
  const a = await client('A', { onLockLost: (name) => lost.push(name) });
  await a.create('fenced.txt');
  // As `dfs lock NAME -- CMD` passes its lock down, here with a token long superseded.
  a.adoptLock('fenced.txt', 1);
  const err = await failure(a.write('fenced.txt', 'x'));
  assert.is(err.code, 'LOCK_LOST');
  assert.match(err.message, /a file server refused its fencing token 1/);
  assert.equal(lost, ['fenced.txt']);
  assert.not.ok(a.holds('fenced.txt'));
});

test('kill -9 of the lock service while 4 clients hold or wait: holders keep their locks, tokens grow, no two hold one at once', async () => {
  const names = ['log-a.txt', 'log-b.txt'];
  const setup = await client('setup');
  for (const name of names) await setup.create(name);
  const rounds = 4;
  const workers: ServiceProcess[] = [];
  for (let i = 1; i <= 4; i++) {
    const name = names[i % 2]!;
    workers.push(startNode(`worker-${i}`, 'tests/helpers/lock-worker.js', ['--directory', cluster.directoryUrl, '--name', name, '--id', `w${i}`, '--rounds', String(rounds), '--hold-ms', '300'], cluster.clientEnv));
  }
  try {
    // A holder inside its section (between begin and end) on each name, the others in line.
    await Promise.all(workers.map((w) => w.waitForLine(/^locked round=1 /, 20_000)));
    await waitFor(() => workers.filter((w) => w.lines.some((l) => l.startsWith('begun round=2'))).length >= 1, { what: 'a holder in its second section', timeoutMs: 20_000 });
    await crashLockService();
    await Promise.all(workers.map((w) => w.waitForLine(/^done$/, 60_000)));
    for (const w of workers) assert.not.match(w.output(), /^error /m, `${w.name}:\n${w.output()}`);

    for (const name of names) {
      const lines = (await setup.read(name)).content.toString().trim().split('\n');
      assert.is(lines.length, 2 * 2 * rounds, `${name}: every section whole:\n${lines.join('\n')}`);
      let lastToken = 0;
      for (let i = 0; i < lines.length; i += 2) {
        const [begin, id, round, token] = lines[i]!.split(' ');
        assert.is(begin, 'begin', `${name} line ${i + 1}: ${lines.join('\n')}`);
        assert.is(lines[i + 1], `end ${id} ${round} ${token}`, `${name}: a section interleaved with another:\n${lines.join('\n')}`);
        assert.ok(Number(token) > lastToken, `${name}: tokens grow: ${lines.join('\n')}`);
        lastToken = Number(token);
      }
    }
  } finally {
    await Promise.all(workers.map((w) => w.stop()));
  }
});

test('a client name the lock service would refuse as a label is made printable, not refused', async () => {
  const odd = await client('tab\there\u0007 ' + 'x'.repeat(62) + '\u{1F600}');
  await odd.create('odd.txt');
  await odd.withLock('odd.txt', () => odd.write('odd.txt', 'fine'));
  assert.is((await odd.read('odd.txt')).content.toString(), 'fine');
});

test('status with the lock service down says so rather than wait for it', async () => {
  const viewer = await client('viewer');
  await cluster.lock.stop();
  try {
    const status = await viewer.status();
    assert.is(status.locks, null);
  } finally {
    await cluster.startLock();
  }
});

test.run();
