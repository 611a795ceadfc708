/**
 * A nemesis run: 4 file servers (replication 3) while 6 clients append unique lines to 3 files,
 * and a nemesis, every few seconds, kills (SIGKILL) or freezes (SIGSTOP) one random file server
 * (sometimes the primary of a file being written), then brings it back. Failover, fencing,
 * catch-up and re-replication all take part. At the end, with everything back up:
 * - every acknowledged line is in its file exactly once (a failed append may have landed, once);
 * - no line is there twice;
 * - every copy of each file is identical, and each reader's reads only ever grew (no read lost a
 *   line that an earlier read had shown).
 * The schedule comes from a seeded generator, so a failing run can be repeated (DFS_NEMESIS_SEED).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { ReadResult } from '../../shared/protocol.js';
import { Cluster } from '../helpers/cluster.js';
import { waitFor } from '../helpers/wait.js';

const test = suite('nemesis');
const FILES = ['nemesis/a.log', 'nemesis/b.log', 'nemesis/c.log'];
const WRITERS = 6;
const RUN_MS = 60_000;
const SEED = Number(process.env.DFS_NEMESIS_SEED ?? 20261202);
/** DFS_NEMESIS_SERVICES=1: the nemesis also kills (and restarts) the directory and the lock service. */
const WITH_SERVICES = process.env.DFS_NEMESIS_SERVICES === '1';
let cluster: Cluster;

/** A small seeded generator (mulberry32): the same seed, the same schedule. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function copyOn(url: string, name: string, epoch: number): Promise<string | null> {
  const conn = await cluster.connect(url, { as: 'fs-1' }).catch(() => null);
  if (!conn) return null;
  try {
    const res = await conn.call('fetch', { name, epoch });
    const content = res.stream ? await res.stream.collect(64 << 20) : (res.body ?? Buffer.alloc(0));
    return `${(res.result as ReadResult).version}:${content.toString()}`;
  } catch {
    return null;
  } finally {
    conn.close();
  }
}

test.before(async () => {
  cluster = await Cluster.start({
    fileServers: 4,
    replication: 3,
    downAfterMs: 1500,
    directoryArgs: ['--failover-after-ms', '1500', '--replace-after-ms', '8000'],
  });
});

test.after(async () => {
  await cluster?.stop();
});

test('kill -9 and SIGSTOP of file servers under concurrent appenders: every acknowledged line once, copies identical, reads never go back', async () => {
  const rand = random(SEED);
  const setup = await cluster.client({ clientName: 'setup' });
  for (const name of FILES) await setup.create(name);
  setup.close();

  let stop = false;
  const acked = new Map<string, string[]>(FILES.map((f) => [f, []]));
  const failed: string[] = [];
  const writers = await Promise.all(Array.from({ length: WRITERS }, (_, k) => cluster.client({ clientName: `w${k}`, retryBudgetMs: 20_000 })));
  const loops = writers.map(async (w, k) => {
    for (let i = 0; !stop; i++) {
      const name = FILES[(k + i) % FILES.length]!;
      const line = `w${k}-${i}`;
      try {
        await w.append(name, `${line}\n`);
        acked.get(name)!.push(line);
      } catch {
        failed.push(line);
      }
    }
  });
  // Readers check that what they see only grows.
  const regressions: string[] = [];
  const readers = await Promise.all([0, 1].map((k) => cluster.client({ clientName: `r${k}`, cacheBytes: 0, retryBudgetMs: 20_000 })));
  const readLoops = readers.map(async (r) => {
    const seen = new Map<string, number>();
    while (!stop) {
      for (const name of FILES) {
        const got = await r.read(name).catch(() => null);
        if (!got) continue;
        const lines = got.content.toString().split('\n').filter(Boolean).length;
        if (lines < (seen.get(name) ?? 0)) regressions.push(`${name}: ${lines} lines after ${seen.get(name)}`);
        seen.set(name, Math.max(lines, seen.get(name) ?? 0));
      }
      await sleep(50);
    }
  });

  const events: string[] = [];
  const started = Date.now();
  while (Date.now() - started < RUN_MS) {
    await sleep(2000 + Math.floor(rand() * 3000));
    const victim = cluster.servers[Math.floor(rand() * cluster.servers.length)]!;
    const down = 1000 + Math.floor(rand() * 5000);
    const service = WITH_SERVICES ? rand() : 1;
    if (service < 0.15) {
      events.push(`kill the directory for ${down} ms`);
      await cluster.directory.kill9();
      await sleep(down);
      await cluster.startDirectory();
    } else if (service < 0.3) {
      events.push(`kill the lock service for ${down} ms`);
      await cluster.lock.kill9();
      await sleep(down);
      await cluster.startLock();
    } else if (rand() < 0.5) {
      events.push(`kill ${victim.id} for ${down} ms`);
      await victim.proc.kill9();
      await sleep(down);
      await cluster.startFileServer(victim.id);
    } else {
      events.push(`freeze ${victim.id} for ${down} ms`);
      victim.proc.freeze();
      await sleep(down);
      victim.proc.thaw();
    }
  }
  stop = true;
  await Promise.all([...loops, ...readLoops]);
  for (const c of [...writers, ...readers]) c.close();
  console.log(`  [nemesis] seed ${SEED}: ${events.join('; ')}`);
  console.log(`  [nemesis] acknowledged ${[...acked.values()].reduce((n, l) => n + l.length, 0)} appends, ${failed.length} failed`);

  await cluster.waitInSync(60_000);
  for (const name of FILES) {
    let final = '';
    await waitFor(
      async () => {
        const p = await cluster.placement(name);
        const copies = await Promise.all([p.primary, ...p.replicas].map((s) => copyOn(s.url, name, p.epoch)));
        if (copies.some((c) => c === null) || !copies.every((c) => c === copies[0])) return false;
        final = copies[0]!.slice(copies[0]!.indexOf(':') + 1);
        return true;
      },
      { timeoutMs: 60_000, what: `identical copies of ${name}` },
    );
    const lines = final.split('\n').filter(Boolean);
    const count = new Map<string, number>();
    for (const line of lines) count.set(line, (count.get(line) ?? 0) + 1);
    for (const line of acked.get(name)!) assert.is(count.get(line), 1, `${name}: acknowledged ${line} is there exactly once`);
    for (const [line, n] of count) assert.is(n, 1, `${name}: ${line} is there once, not ${n} times`);
  }
  assert.equal(regressions, [], 'no read lost a line an earlier read showed');
  assert.ok([...acked.values()].every((lines) => lines.length > 0), 'writes went on');
});

test.run();
