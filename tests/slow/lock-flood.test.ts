/**
 * A lock flood (issue 7, "Lock floods"): 100 sessions each wait for the same 1,000 locks, all
 * held by one session; then the holder drops, which makes 1,000 grants and 99,000 `queued`
 * events at once. The lock service delivers them in batches that yield, and an innocent
 * session in another process keeps its lock throughout. Prints the lock service's peak RSS.
 */
import { sharedPki } from '../helpers/tls.js';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { connect } from '../../shared/rpc.js';
import { Cluster } from '../helpers/cluster.js';
import { freePort, removeDir, startNode, stopAll, tempDir, type ServiceProcess } from '../helpers/process.js';
import { waitFor } from '../helpers/wait.js';

const test = suite('lock-flood');

const NAMES = 1000;
const SESSIONS_PER_PROCESS = 50;
const PROCESSES = 2;

function counts(proc: ServiceProcess): { granted: number; events: number; errors: number } {
  for (let i = proc.lines.length - 1; i >= 0; i--) {
    const match = /^granted=(\d+) events=(\d+) errors=(\d+)/.exec(proc.lines[i]!);
    if (match) return { granted: Number(match[1]), events: Number(match[2]), errors: Number(match[3]) };
  }
  return { granted: 0, events: 0, errors: 0 };
}

test('100 sessions x 1,000 waits, then the holder drops: every grant and event goes out, an innocent session keeps its lock', async () => {
  const dir = await tempDir('dfs-lock-flood-');
  try {
    const port = await freePort();
    const pki = await sharedPki();
    const env = { DFS_CA: pki.caPath };
    const lock = startNode('lock', 'servers/lock/main.js', [...pki.flags('lock'), '--port', String(port), '--data', dir]);
    const url = (await lock.waitForLine(/listening url=(wss:\/\/\S+)/))[1]!;
    const innocent = startNode('innocent', 'tests/helpers/lock-holder.js', ['--url', url, '--name', 'innocent.txt', '--client', 'innocent'], env);
    const innocentSession = (await innocent.waitForLine(/session id=(\S+)/))[1]!;
    const innocentToken = Number((await innocent.waitForLine(/granted token=(\d+)/))[1]);

    const holder = startNode('holder', 'tests/helpers/lock-flood.js', ['--url', url, '--role', 'holder', '--names', String(NAMES)], env);
    await holder.waitForLine(/^holding 1000$/, 60_000);
    const waiters = Array.from({ length: PROCESSES }, (_, i) =>
      startNode(`waiters-${i}`, 'tests/helpers/lock-flood.js', ['--url', url, '--role', 'waiters', '--sessions', String(SESSIONS_PER_PROCESS), '--names', String(NAMES)], env),
    );
    const queuedStarted = Date.now();
    await Promise.all(waiters.map((w) => w.waitForLine(/^queued all$/, 180_000)));
    const queuedMs = Date.now() - queuedStarted;
    const rssQueued = await Cluster.peakRss(lock.pid);

    // The lock service's answers to a bystander while the flood goes out.
    // validate is a file server's call: the probe connects with fs-1's certificate.
    const probe = await connect(url, { transport: await pki.as('fs-1') });
    let slowest = 0;
    let probing = true;
    const probeLoop = (async () => {
      while (probing) {
        const started = performance.now();
        await probe.call('validate', { name: 'innocent.txt', token: innocentToken });
        slowest = Math.max(slowest, performance.now() - started);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    })();

    const droppedAt = Date.now();
    await holder.kill9();
    const total = SESSIONS_PER_PROCESS * PROCESSES * NAMES;
    const expectedEvents = total + (total - NAMES); // one on joining, one for each waiter moved up
    await waitFor(() => waiters.reduce((sum, w) => sum + counts(w).granted, 0) === NAMES, { what: 'the 1,000 grants', timeoutMs: 180_000, intervalMs: 100 });
    const grantsMs = Date.now() - droppedAt;
    await waitFor(() => waiters.reduce((sum, w) => sum + counts(w).events, 0) >= expectedEvents, { what: `${expectedEvents} queued events`, timeoutMs: 180_000, intervalMs: 100 });
    const eventsMs = Date.now() - droppedAt;
    probing = false;
    await probeLoop;
    const peak = await Cluster.peakRss(lock.pid);

    const errors = waiters.reduce((sum, w) => sum + counts(w).errors, 0);
    const leaseLapses = lock.lines.filter((l) => l.includes('lease expired')).length;
    console.log(
      `\n  flood: ${total} waits queued in ${queuedMs} ms; after the holder dropped: ${NAMES} grants in ${grantsMs} ms, ` +
        `${expectedEvents - total} more events by ${eventsMs} ms; slowest answer to a bystander ${slowest.toFixed(0)} ms; ` +
        `lock service peak RSS ${(rssQueued / 2 ** 20).toFixed(0)} MiB queued, ${(peak / 2 ** 20).toFixed(0)} MiB at the end; lease lapses ${leaseLapses}`,
    );
    assert.is(errors, 0, waiters.map((w) => w.lines.at(-1)).join('\n'));
    assert.not.match(innocent.output(), /closed/, 'the innocent session was not dropped');
    assert.not.ok(lock.lines.some((l) => l.includes('lease expired') && l.includes(innocentSession)), 'the innocent lease held');
    assert.equal((await probe.call('validate', { name: 'innocent.txt', token: innocentToken })).result, { valid: true });
    probe.close();
  } finally {
    await stopAll();
    await removeDir(dir);
  }
});

test.run();
