/**
 * Leases on a loaded machine: with both cores kept busy by two CPU-burning processes, sessions
 * that hold locks keep them (no lease lapses) for 30 s, and the lock service's pings stay
 * punctual. Prints what the ping probe saw. Timings are printed, never asserted: the check is
 * that nobody lost a lock.
 */
import { sharedPki } from '../helpers/tls.js';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import { cpus } from 'node:os';
import { connect } from '../../shared/rpc.js';
import { freePort, removeDir, ServiceProcess, startNode, stopAll, tempDir } from '../helpers/process.js';

const test = suite('lease-load');

const HOLDERS = 8;
const WINDOW_MS = 30_000;

test(`with ${cpus().length} cores busy, ${HOLDERS} lock holders keep their locks for ${WINDOW_MS / 1000} s`, async () => {
  const dir = await tempDir('dfs-lease-load-');
  try {
    const port = await freePort();
    const pki = await sharedPki();
    const lock = startNode('lock', 'servers/lock/main.js', [...pki.flags('lock'), '--port', String(port), '--data', dir]);
    const url = (await lock.waitForLine(/listening url=(wss:\/\/\S+)/))[1]!;
    const burners = Array.from({ length: cpus().length }, (_, i) => new ServiceProcess(`burner-${i}`, spawn(process.execPath, ['-e', 'for (;;) {}'], { stdio: 'ignore' })));
    const holders = Array.from({ length: HOLDERS }, (_, i) => startNode(`holder-${i}`, 'tests/helpers/lock-holder.js', ['--url', url, '--name', `load-${i}.txt`, '--client', `holder-${i}`], { DFS_CA: pki.caPath }));
    const tokens = await Promise.all(holders.map(async (h) => Number((await h.waitForLine(/granted token=(\d+)/, 30_000))[1])));
    const probe = startNode('probe', 'tests/helpers/ping-probe.js', ['--url', url], { DFS_CA: pki.caPath });
    await probe.waitForLine(/^connected$/);

    // The workload: hold the locks this long on the loaded machine.
    await new Promise((resolve) => setTimeout(resolve, WINDOW_MS));

    const seen = probe.lines.filter((l) => l.startsWith('pings=')).at(-1) ?? 'no pings';
    const lapses = lock.lines.filter((l) => l.includes('lease expired'));
    console.log(`\n  lease 3000 ms, pings every 750 ms; with ${burners.length} CPU burners, the ping probe saw: ${seen} (ms between pings); lease lapses: ${lapses.length}`);
    await Promise.all(burners.map((b) => b.stop()));
    assert.equal(lapses, []);
    for (const h of holders) assert.not.match(h.output(), /closed/, `${h.name} kept its session`);
    const check = await connect(url, { transport: await pki.as('fs-1') });
    for (let i = 0; i < HOLDERS; i++) assert.equal((await check.call('validate', { name: `load-${i}.txt`, token: tokens[i]! })).result, { valid: true });
    check.close();
  } finally {
    await stopAll();
    await removeDir(dir);
  }
});

test.run();
