import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { WebSocket } from 'ws';
import { connect, type RpcConnection } from '../shared/rpc.js';
import { DfsError } from '../shared/errors.js';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { AcquireResult, HeldResult, HelloResult, LockStatusResult, QueuedEvent, ReclaimResult } from '../shared/protocol.js';
import { sharedPki } from './helpers/tls.js';
import { freePort, removeDir, startNode, stopAll, tempDir, type ServiceProcess } from './helpers/process.js';
import { waitFor, within } from './helpers/wait.js';
import { failure } from './helpers/raw.js';

const test = suite('lock');

const LEASE_MS = 1000;
const LISTENING = /listening url=(wss:\/\/\S+)/;

let dataDir: string;
let service: ServiceProcess;
let url: string;
const clients: RpcConnection[] = [];
const sessionIds = new Map<RpcConnection, string>();

async function startLockService(dir: string, leaseMs = LEASE_MS, extra: string[] = []): Promise<{ proc: ServiceProcess; url: string }> {
  const port = await freePort();
  const proc = startNode('lock', 'servers/lock/main.js', [...(await sharedPki()).flags('lock'), '--host', '127.0.0.1', '--port', String(port), '--data', dir, '--lease-ms', String(leaseMs), ...extra]);
  const match = await proc.waitForLine(LISTENING);
  return { proc, url: match[1]! };
}

const secrets = new Map<RpcConnection, string>();

async function client(label: string, at = url): Promise<RpcConnection> {
  const conn = await connect(at, { transport: (await sharedPki()).client });
  clients.push(conn);
  const hello = (await conn.call('hello', { client: label })).result as HelloResult;
  sessionIds.set(conn, hello.session);
  secrets.set(conn, hello.secret);
  return conn;
}

/** A connection that has not said hello (one about to reclaim, or `as` a file server, to validate tokens). */
async function bare(at = url, as?: string): Promise<RpcConnection> {
  const pki = await sharedPki();
  const conn = await connect(at, { transport: as ? await pki.as(as) : pki.client });
  clients.push(conn);
  return conn;
}

function sessionId(conn: RpcConnection): string {
  return sessionIds.get(conn)!;
}

async function acquire(conn: RpcConnection, name: string, timeoutMs = 10_000): Promise<number> {
  return ((await conn.call('acquire', { name, timeoutMs })).result as AcquireResult).token;
}

/** An acquire that waits in line, recording its queue events. */
function waitForLock(conn: RpcConnection, name: string, timeoutMs = 10_000, signal?: AbortSignal) {
  const events: QueuedEvent[] = [];
  const granted = conn
    .call('acquire', { name, timeoutMs }, { signal, timeoutMs: timeoutMs + 5000, onEvent: (ev, data) => ev === 'queued' && events.push(data as QueuedEvent) })
    .then((res) => (res.result as AcquireResult).token);
  granted.catch(() => {}); // observed by the test when it cares
  return { events, granted, position: () => events.at(-1)?.position };
}

async function codeOf(promise: Promise<unknown>): Promise<string> {
  return promise.then(
    () => 'ok',
    (err: DfsError) => err.code,
  );
}


async function status(conn: RpcConnection, name: string): Promise<LockStatusResult> {
  return (await conn.call('status', { name })).result as LockStatusResult;
}

test.before(async () => {
  dataDir = await tempDir('dfs-lock-');
  ({ proc: service, url } = await startLockService(dataDir));
});

test.after.each(() => {
  for (const conn of clients.splice(0)) conn.close();
  sessionIds.clear();
  secrets.clear();
});

test.after(async () => {
  await stopAll();
  await removeDir(dataDir);
});

test('8 clients contending for one lock are granted in arrival order, each told its place', async () => {
  const holder = await client('holder');
  const first = await acquire(holder, 'fifo.txt');
  const waiters: Array<{ conn: RpcConnection; wait: ReturnType<typeof waitForLock> }> = [];
  for (let i = 1; i <= 8; i++) {
    const conn = await client(`c${i}`);
    const wait = waitForLock(conn, 'fifo.txt');
    // The next client asks only once this one is in line, so arrival order is known.
    await waitFor(() => wait.events.length > 0, { what: `c${i} to be queued` });
    assert.is(wait.events[0]!.position, i);
    assert.match(wait.events[0]!.holder, /^client holder \(/);
    waiters.push({ conn, wait });
  }
  const st = await status(holder, 'fifo.txt');
  assert.equal(st.locks[0]!.waiters.map((w) => w.split(' ')[1]), ['c1', 'c2', 'c3', 'c4', 'c5', 'c6', 'c7', 'c8']);

  const order: number[] = [];
  const tokens: number[] = [first];
  await holder.call('release', { name: 'fifo.txt' });
  for (let i = 0; i < 8; i++) {
    const granted = await Promise.race(waiters.map(({ wait }, index) => wait.granted.then((token) => ({ index, token }))).filter((_, index) => !order.includes(index)));
    order.push(granted.index);
    tokens.push(granted.token);
    const { conn, wait } = waiters[granted.index]!;
    // every grant moved everyone behind up by one, down to 1
    assert.equal(
      wait.events.map((e) => e.position),
      Array.from({ length: granted.index + 1 }, (_, k) => granted.index + 1 - k),
    );
    await conn.call('release', { name: 'fifo.txt', token: granted.token });
  }
  assert.equal(order, [0, 1, 2, 3, 4, 5, 6, 7]);
  for (let i = 1; i < tokens.length; i++) assert.ok(tokens[i]! > tokens[i - 1]!, `tokens increase: ${tokens}`);
  assert.equal((await status(holder, 'fifo.txt')).locks, []);
});

test('a holder killed with kill -9 frees its lock for the next waiter at once', async () => {
  const holder = startNode('holder', 'tests/helpers/lock-holder.js', ['--url', url, '--name', 'killed.txt', '--client', 'doomed'], { DFS_CA: (await sharedPki()).caPath });
  const session = (await holder.waitForLine(/session id=(\S+)/))[1]!;
  const heldToken = Number((await holder.waitForLine(/granted token=(\d+)/))[1]);
  const waiter = await client('next');
  const wait = waitForLock(waiter, 'killed.txt');
  await waitFor(() => wait.events.length > 0, { what: 'the waiter to be queued' });
  assert.match(wait.events[0]!.holder, `client doomed (${session})`);
  await holder.kill9();
  const token = await wait.granted;
  assert.ok(token > heldToken);
  // freed because the connection closed, not because the lease ran out
  const line = await service.waitForLine(new RegExp(`session dropped session=${session} .*locksFreed=1`));
  assert.not.match(line[0], 'did not answer pings');
  await waiter.call('release', { name: 'killed.txt' });
});

test('a holder frozen with SIGSTOP is dropped within the lease and the next waiter granted', async () => {
  const holder = startNode('frozen', 'tests/helpers/lock-holder.js', ['--url', url, '--name', 'frozen.txt', '--client', 'sleepy'], { DFS_CA: (await sharedPki()).caPath });
  const session = (await holder.waitForLine(/session id=(\S+)/))[1]!;
  await holder.waitForLine(/granted token=\d+/);
  const waiter = await client('patient');
  const wait = waitForLock(waiter, 'frozen.txt');
  await waitFor(() => wait.events.length > 0, { what: 'the waiter to be queued' });
  holder.freeze();
  try {
    await wait.granted;
    await service.waitForLine(new RegExp(`lease expired, session dropped session=${session} .*locksFreed=1`));
  } finally {
    await holder.kill9();
  }
  await waiter.call('release', { name: 'frozen.txt' });
});

test('tokens keep growing across restarts of the service (SIGTERM and kill -9)', async () => {
  const dir = await tempDir('dfs-lock-restart-');
  try {
    const tokens: number[] = [];
    let running = await startLockService(dir);
    for (const stop of ['SIGTERM', 'SIGKILL', 'SIGTERM']) {
      const conn = await client('restarter', running.url);
      const a = await acquire(conn, 'r.txt');
      await conn.call('release', { name: 'r.txt' });
      const b = await acquire(conn, 'r.txt');
      tokens.push(a, b);
      conn.close();
      if (stop === 'SIGKILL') await running.proc.kill9();
      else await running.proc.stop();
      if (stop === 'SIGTERM') assert.is(running.proc.exit?.code, 0, 'clean shutdown exits 0');
      running = await startLockService(dir);
    }
    const conn = await client('restarter', running.url);
    tokens.push(await acquire(conn, 'r.txt'));
    for (let i = 1; i < tokens.length; i++) assert.ok(tokens[i]! > tokens[i - 1]!, `tokens increase: ${tokens}`);
    await running.proc.stop();
  } finally {
    await removeDir(dir);
  }
});

test('release by a non-holder is NOT_HOLDER and the holder keeps the lock', async () => {
  const alice = await client('alice');
  const bob = await client('bob');
  const token = await acquire(alice, 'held.txt');
  const err = await failure(bob.call('release', { name: 'held.txt' }));
  assert.is(err.code, 'NOT_HOLDER');
  assert.match(err.message, /held\.txt is held by client alice/);
  assert.is(await codeOf(bob.call('release', { name: 'held.txt', token })), 'NOT_HOLDER');
  assert.is(await codeOf(alice.call('release', { name: 'held.txt', token: token + 1 })), 'NOT_HOLDER');
  assert.is(await codeOf(bob.call('release', { name: 'never-locked.txt' })), 'NOT_HOLDER');
  assert.equal((await (await bare(url, 'fs-1')).call('validate', { name: 'held.txt', token })).result, { valid: true });
  assert.is((await status(bob, 'held.txt')).locks[0]!.token, token);
  // re-acquire by the holder returns the same token
  assert.is(await acquire(alice, 'held.txt'), token);
  await alice.call('release', { name: 'held.txt', token });
});

test('validate rejects released, stale and forged tokens', async () => {
  const alice = await client('alice');
  const bob = await client('bob');
  const fileServer = await bare(url, 'fs-1');
  const first = await acquire(alice, 'v.txt');
  const bobWait = waitForLock(bob, 'v.txt');
  await waitFor(() => bobWait.events.length > 0, { what: 'bob to be queued' });
  await alice.call('release', { name: 'v.txt' });
  const second = await bobWait.granted;
  const check = (token: number, name = 'v.txt') => codeOf(fileServer.call('validate', { name, token }));
  assert.is(await check(second), 'ok');
  assert.is(await check(first), 'STALE_TOKEN', 'stale');
  assert.is(await check(second + 1), 'STALE_TOKEN', 'forged');
  assert.is(await check(999_999_999), 'STALE_TOKEN', 'forged');
  assert.is(await check(second, 'other.txt'), 'STALE_TOKEN', 'other name');
  await bob.call('release', { name: 'v.txt', token: second });
  assert.is(await check(second), 'STALE_TOKEN', 'released');
  assert.is(await codeOf(fileServer.call('validate', { name: 'v.txt', token: -1 })), 'BAD_REQUEST');
});

test('LOCKED when asked not to wait; TIMEOUT when the wait runs out, leaving the line', async () => {
  const alice = await client('alice');
  const bob = await client('bob');
  const carol = await client('carol');
  const aliceSession = sessionId(alice);
  await acquire(alice, 'busy.txt');
  const locked = await failure(bob.call('acquire', { name: 'busy.txt', timeoutMs: 0 }));
  assert.is(locked.code, 'LOCKED');
  assert.is(locked.message, `busy.txt is locked by client alice (${aliceSession})`);
  const carolWait = waitForLock(carol, 'busy.txt', 60_000);
  await waitFor(() => carolWait.events.length > 0, { what: 'carol to be queued' });
  const timedOut = await failure(bob.call('acquire', { name: 'busy.txt', timeoutMs: 150 }));
  assert.is(timedOut.code, 'TIMEOUT');
  assert.is(timedOut.message, `waited 150 ms for busy.txt; held by client alice (${aliceSession}), you were 2nd in line`);
  assert.equal((await status(alice, 'busy.txt')).locks[0]!.waiters.length, 1, 'bob left the line');
  const lockedWithLine = await failure(bob.call('acquire', { name: 'busy.txt', timeoutMs: 0 }));
  assert.match(lockedWithLine.message, ', 1 waiting');
  await alice.call('release', { name: 'busy.txt' });
  assert.ok((await carolWait.granted) > 0);
  await carol.call('release', { name: 'busy.txt' });
});

test('a cancelled acquire leaves the line; the one behind moves up and is granted', async () => {
  const alice = await client('alice');
  const bob = await client('bob');
  const carol = await client('carol');
  await acquire(alice, 'c.txt');
  const controller = new AbortController();
  let lateGrant = false;
  const bobCall = bob.call('acquire', { name: 'c.txt', timeoutMs: 10_000 }, { signal: controller.signal, onEvent: () => {}, onLateResult: () => (lateGrant = true) });
  await waitFor(async () => (await status(alice, 'c.txt')).locks[0]!.waiters.length === 1, { what: 'bob to be queued' });
  const carolWait = waitForLock(carol, 'c.txt');
  await waitFor(() => carolWait.position() === 2, { what: 'carol to be 2nd' });
  controller.abort();
  assert.is(await codeOf(bobCall), 'CANCELLED');
  await waitFor(() => carolWait.position() === 1, { what: 'carol to move up' });
  assert.equal((await status(alice, 'c.txt')).locks[0]!.waiters.map((w) => w.split(' ')[1]), ['carol']);
  await alice.call('release', { name: 'c.txt' });
  const token = await carolWait.granted;
  assert.is(await codeOf((await bare(url, 'fs-1')).call('validate', { name: 'c.txt', token })), 'ok');
  assert.is(lateGrant, false, 'bob was never granted');
  // bob's session holds nothing: its release is refused
  assert.is(await codeOf(bob.call('release', { name: 'c.txt' })), 'NOT_HOLDER');
  await carol.call('release', { name: 'c.txt' });
});

test('a second wait by the same session is refused; closing a waiting connection drops its wait', async () => {
  const alice = await client('alice');
  const bob = await client('bob');
  const carol = await client('carol');
  await acquire(alice, 'd.txt');
  const bobWait = waitForLock(bob, 'd.txt');
  await waitFor(() => bobWait.events.length > 0, { what: 'bob to be queued' });
  assert.is(await codeOf(bob.call('acquire', { name: 'd.txt', timeoutMs: 1000 })), 'BAD_REQUEST');
  const carolWait = waitForLock(carol, 'd.txt');
  await waitFor(() => carolWait.position() === 2, { what: 'carol to be 2nd' });
  bob.terminate();
  await waitFor(() => carolWait.position() === 1, { what: 'carol to move up' });
  await alice.call('release', { name: 'd.txt' });
  await carolWait.granted;
  await carol.call('release', { name: 'd.txt' });
});

test('bad input gets clear errors while another client keeps being served', async () => {
  const steady = await client('steady');
  const token = await acquire(steady, 'steady.txt');

  // malformed frames on a raw socket
  const ws = new WebSocket(url, { ca: (await sharedPki()).caPem });
  await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
  const replies: Array<{ id: number; ok: boolean; error?: { code: string; message: string } }> = [];
  ws.on('message', (data) => replies.push(JSON.parse(data.toString())));
  ws.send('not json');
  ws.send(JSON.stringify({ t: 'req', id: 3, op: 'acquire', args: { name: 'x', timeoutMs: 'soon' } }));
  ws.send(Buffer.from([0, 0, 0, 200, 1]));
  ws.send(JSON.stringify({ t: 'req', id: 4, op: 'status', args: {} }));
  await waitFor(() => replies.length >= 4, { what: 'four replies' });
  assert.ok(replies.filter((r) => r.id === 0).every((r) => r.error?.code === 'BAD_REQUEST'));
  assert.is(replies.find((r) => r.id === 3)?.error?.code, 'BAD_REQUEST');
  assert.is(replies.find((r) => r.id === 4)?.ok, true);
  ws.close();

  const other = await client('other');
  const unknown = await failure(other.call('lock', { name: 'x' }));
  assert.is(unknown.code, 'BAD_REQUEST');
  assert.match(unknown.message, /unknown operation "lock".*acquire/);
  for (const name of ['', '../etc/passwd', '/abs.txt', 'a//b', 'x\u0000y', 'a'.repeat(300)]) {
    const err = await failure(other.call('acquire', { name, timeoutMs: 0 }));
    assert.is(err.code, 'BAD_REQUEST', JSON.stringify(name));
  }
  assert.is(await codeOf(other.call('acquire', { name: 'ok.txt', timeoutMs: 0, extra: 1 })), 'BAD_REQUEST');
  assert.is(await codeOf(other.call('acquire', { name: 'ok.txt', timeoutMs: -5 })), 'BAD_REQUEST');
  assert.is(await codeOf(other.call('release', { name: 'ok.txt', token: 1.5 })), 'BAD_REQUEST');
  assert.is(await codeOf(other.call('hello', { client: '' })), 'BAD_REQUEST');

  // an oversize message is refused before it leaves: the call fails at once, nothing else changes
  const big = await connect(url, { transport: (await sharedPki()).client, maxMessageBytes: 16 << 20 });
  clients.push(big);
  await big.call('acquire', { name: 'big.txt', timeoutMs: 0 });
  const tooLarge = await failure(big.call('status', {}, { body: Buffer.alloc(5 << 20) }));
  assert.is(tooLarge.code, 'TOO_LARGE');
  assert.is((await status(other, 'big.txt')).locks.length, 1, 'the sender keeps its connection and its lock');
  // a peer that sends one anyway loses only its own connection, and what it held is freed
  const rude = new WebSocket(url, { ca: (await sharedPki()).caPem, maxPayload: 16 << 20 });
  await new Promise((resolve, reject) => rude.once('open', resolve).once('error', reject));
  const rudeReplies: Array<{ id: number; ok: boolean }> = [];
  rude.on('message', (data) => rudeReplies.push(JSON.parse(data.toString())));
  rude.send(JSON.stringify({ t: 'req', id: 1, op: 'acquire', args: { name: 'rude.txt', timeoutMs: 0 } }));
  await waitFor(() => rudeReplies.some((r) => r.id === 1 && r.ok), { what: 'the rude client to hold rude.txt' });
  const closed = new Promise<number>((resolve) => rude.once('close', resolve));
  rude.send(Buffer.alloc(5 << 20));
  assert.is(await within(closed, 10_000, 'the rude client to be cut off'), 1009);
  await waitFor(async () => (await status(other, 'rude.txt')).locks.length === 0, { what: 'rude.txt to be freed' });

  // the steady client never noticed
  assert.equal((await (await bare(url, 'fs-1')).call('validate', { name: 'steady.txt', token })).result, { valid: true });
  await steady.call('release', { name: 'steady.txt', token });
  assert.ok((await acquire(other, 'steady.txt', 0)) > token);
});


for (const stop of ['SIGKILL', 'SIGTERM'] as const) {
  test(`after a restart (${stop}) holders keep their locks until they reclaim them; nobody else gets them, no one can claim them by id`, async () => {
    const dir = await tempDir('dfs-lock-grace-');
    try {
      let running = await startLockService(dir, LEASE_MS, ['--grace-ms', '60000']);
      const alice = await client('alice', running.url);
      const aliceSession = sessionId(alice);
      const aliceSecret = secrets.get(alice)!;
      assert.match(aliceSession, /^[0-9a-f]{12}$/);
      const token = await acquire(alice, 'kept.txt');
      const other = await acquire(alice, 'kept-too.txt');
      if (stop === 'SIGKILL') await running.proc.kill9();
      else await running.proc.stop();
      running = await startLockService(dir, LEASE_MS, ['--grace-ms', '60000']);
      await running.proc.waitForLine(/listening .*locksRestored=2 graceMs=60000/);

      // The restored holder's tokens validate; its names go to nobody else; free names as usual.
      const fileServer = await bare(running.url, 'fs-1');
      assert.equal((await fileServer.call('validate', { name: 'kept.txt', token })).result, { valid: true });
      const bob = await client('bob', running.url);
      const locked = await failure(bob.call('acquire', { name: 'kept.txt', timeoutMs: 0 }));
      assert.is(locked.code, 'LOCKED');
      assert.match(locked.message, `client alice (${aliceSession}), kept for it after a lock-service restart`);
      const fresh = await acquire(bob, 'free.txt');
      assert.ok(fresh > other, `tokens keep growing: ${fresh} after ${other}`);

      // Knowing the id (status shows it) is not enough.
      const mallory = await bare(running.url);
      const forged = await failure(mallory.call('reclaim', { session: aliceSession, secret: 'x'.repeat(32), client: 'mallory' }));
      assert.is(forged.code, 'LOCK_LOST');
      assert.is(await codeOf(bob.call('reclaim', { session: aliceSession, secret: aliceSecret, client: 'bob' })), 'BAD_REQUEST', 'not on a connection that has a session');
      const bobWait = waitForLock(bob, 'kept.txt');
      await waitFor(() => bobWait.events.length > 0, { what: 'bob to be queued behind the restored holder' });

      const back = await bare(running.url);
      const reclaimed = (await back.call('reclaim', { session: aliceSession, secret: aliceSecret, client: 'alice' })).result as ReclaimResult;
      assert.equal(reclaimed, { session: aliceSession, held: 2 });
      assert.equal(((await back.call('held', {})).result as HeldResult).locks, [
        { name: 'kept-too.txt', token: other },
        { name: 'kept.txt', token },
      ]);
      await running.proc.waitForLine(/grace period over: every restored session was reclaimed/);
      assert.is(await codeOf(mallory.call('reclaim', { session: aliceSession, secret: aliceSecret, client: 'mallory' })), 'LOCK_LOST', 'reclaimed once, attached');

      await back.call('release', { name: 'kept.txt', token });
      assert.ok((await bobWait.granted) > fresh);
      await running.proc.stop();
    } finally {
      await removeDir(dir);
    }
  });
}

test('a holder that does not come back within the grace period loses its locks to the next waiter', async () => {
  const dir = await tempDir('dfs-lock-grace-');
  try {
    let running = await startLockService(dir, LEASE_MS, ['--grace-ms', '300']);
    const alice = await client('alice', running.url);
    const [aliceSession, aliceSecret] = [sessionId(alice), secrets.get(alice)!];
    const token = await acquire(alice, 'gone.txt');
    await running.proc.kill9();
    running = await startLockService(dir, LEASE_MS, ['--grace-ms', '300']);
    const bob = await client('bob', running.url);
    const bobWait = waitForLock(bob, 'gone.txt');
    const bobToken = await bobWait.granted;
    assert.ok(bobToken > token);
    await running.proc.waitForLine(/grace period over sessionsDropped=1 locksFreed=1/);
    const late = await bare(running.url);
    assert.is(await codeOf(late.call('reclaim', { session: aliceSession, secret: aliceSecret, client: 'alice' })), 'LOCK_LOST');
    await running.proc.stop();
  } finally {
    await removeDir(dir);
  }
});

test('a data folder holding only fencing.json (the previous version) starts, tokens above its ceiling', async () => {
  const dir = await tempDir('dfs-lock-old-');
  try {
    await writeFile(join(dir, 'fencing.json'), '{"ceiling":5000}\n');
    const running = await startLockService(dir);
    const conn = await client('upgrader', running.url);
    assert.ok((await acquire(conn, 'x.txt')) > 5000);
    await running.proc.stop();
  } finally {
    await removeDir(dir);
  }
});

test('per-session caps on locks held and waits: LIMIT, and nothing changes', async () => {
  const dir = await tempDir('dfs-lock-caps-');
  try {
    const running = await startLockService(dir, LEASE_MS, ['--max-locks-per-session', '3', '--max-waits-per-session', '1']);
    const greedy = await client('greedy', running.url);
    const other = await client('other', running.url);
    await acquire(other, 'busy.txt');
    for (const name of ['a.txt', 'b.txt']) await acquire(greedy, name);
    const wait = waitForLock(greedy, 'busy.txt');
    await waitFor(() => wait.events.length > 0, { what: 'greedy to be queued' });
    const tooManyWaits = await failure(greedy.call('acquire', { name: 'c.txt', timeoutMs: 1000 }));
    assert.is(tooManyWaits.code, 'LIMIT');
    assert.match(tooManyWaits.message, 'at most 3');
    assert.equal((await status(greedy, 'c.txt')).locks, [], 'nothing queued or granted');
    await other.call('release', { name: 'busy.txt' });
    await wait.granted;
    const err = await failure(greedy.call('acquire', { name: 'd.txt', timeoutMs: 0 }));
    assert.is(err.code, 'LIMIT');
    assert.equal(err.details, { limit: 3, held: 3, waiting: 0 });
    await running.proc.stop();
  } finally {
    await removeDir(dir);
  }
});

test('status with 10,000 locks held comes in pages, each well under the 64 KiB frame header limit', async () => {
  const holder = await client('many');
  const names = Array.from({ length: 10_000 }, (_, i) => `status-scale/${'n'.repeat(100)}/${'m'.repeat(100)}-${String(i).padStart(5, '0')}.txt`);
  for (let i = 0; i < names.length; i += 1000) await Promise.all(names.slice(i, i + 1000).map((name) => acquire(holder, name)));
  const viewer = await client('viewer');
  const seen: string[] = [];
  let after: string | undefined;
  let pages = 0;
  for (;;) {
    const page = (await viewer.call('status', after === undefined ? {} : { after })).result as LockStatusResult;
    pages++;
    assert.ok(Buffer.byteLength(JSON.stringify(page)) < 48 * 1024);
    seen.push(...page.locks.map((l) => l.name).filter((n) => n.startsWith('status-scale/')));
    if (!page.more) break;
    after = page.locks.at(-1)!.name;
  }
  assert.equal(seen, names);
  assert.ok(pages >= 30, `${pages} pages`);
  holder.close();
  await waitFor(async () => (await status(viewer, names[0]!)).locks.length === 0, { what: 'the 10,000 locks to be freed' });
});

test('a label with control characters is refused: it would be printed in other people\'s terminals', async () => {
  const conn = await bare();
  assert.is(await codeOf(conn.call('hello', { client: 'evil\u001b[2J' })), 'BAD_REQUEST');
  assert.is(await codeOf(conn.call('hello', { client: 'ok' })), 'ok');
});

test.run();
