/**
 * The start script as `npm start` runs it (on free ports, data in a temp folder): ready, serving
 * a CLI round trip, restarting a killed service under --restart, and leaving no process behind
 * on SIGTERM. A port already taken is a clear error and exit 1.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync } from 'node:child_process';
import { createServer } from 'node:net';
import { runCli } from './helpers/cli.js';
import { freePort, removeDir, startNode, tempDir } from './helpers/process.js';
import { waitFor } from './helpers/wait.js';

const test = suite('start');

/** PIDs of the live children of pid. */
function childrenOf(pid: number): number[] {
  try {
    return execFileSync('ps', ['-o', 'pid=', '--ppid', String(pid)], { encoding: 'utf8' })
      .split('\n')
      .map((line) => Number(line.trim()))
      .filter((n) => n > 0);
  } catch {
    return []; // ps exits 1 when there are none
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function ports(n: number): Promise<number[]> {
  const found = new Set<number>();
  while (found.size < n) found.add(await freePort());
  return [...found];
}

test('starts every service, serves clients, restarts a killed one, and stops cleanly on SIGTERM', async () => {
  const data = await tempDir('dfs-start-');
  const [lockPort, directoryPort, ...filePorts] = await ports(5);
  const start = startNode('start', 'start.js', ['--data', data, '--lock-port', String(lockPort), '--directory-port', String(directoryPort), '--file-ports', filePorts.join(','), '--restart']);
  try {
    await start.waitForLine(/ready/, 30_000);
    const directory = `wss://127.0.0.1:${directoryPort}`;
    for (const [service, port] of [['lock', lockPort], ['directory', directoryPort], ['fs-1', filePorts[0]], ['fs-2', filePorts[1]], ['fs-3', filePorts[2]]] as const) {
      await start.waitForLine(new RegExp(`^${service}\\s+wss://127\\.0\\.0\\.1:${port}\\s+\\d+\\s+${data}`));
    }
    // Service log lines come prefixed with the service's name.
    await start.waitForLine(/^fs-2\s+\| .* fs-2 info listening url=/);

    const cli = (args: string[], stdin?: string) => runCli(['--directory', directory, ...args], stdin === undefined ? {} : { stdin });
    assert.is((await cli(['create', 'round-trip.txt'])).code, 0);
    assert.is((await cli(['write', 'round-trip.txt'], 'there and back\n')).code, 0);
    assert.is((await cli(['cat', 'round-trip.txt'])).stdout.toString(), 'there and back\n');

    // A file server killed outright is reported at once and, under --restart, started again.
    const fs2 = Number((await start.waitForLine(/^fs-2\s+wss:\S+\s+(\d+)/))[1]);
    process.kill(fs2, 'SIGKILL');
    await start.waitForLine(/fs-2 exited unexpectedly \(killed by SIGKILL\); restarting it in/);
    await start.waitForLine(/fs-2 is back at wss:\/\/127\.0\.0\.1:/, 20_000);
    assert.is((await cli(['cat', 'round-trip.txt'])).stdout.toString(), 'there and back\n');

    const children = childrenOf(start.pid);
    assert.is(children.length, 5, `five services, got ${children.join(' ')}`);
    assert.not.ok(children.includes(fs2));
    start.signal('SIGTERM');
    assert.equal(await start.waitForExit(30_000), { code: 0, signal: null }, start.output());
    await waitFor(() => children.every((pid) => !alive(pid)), { timeoutMs: 5000, what: 'every service process gone' });
    assert.match(start.output(), /stopped$/);
  } finally {
    await start.stop();
    await removeDir(data);
  }
});

test('a port already in use is a clear error naming the port, and exit 1', async () => {
  const data = await tempDir('dfs-start-');
  const blocker = createServer();
  await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
  const taken = (blocker.address() as { port: number }).port;
  const [lockPort, ...filePorts] = await ports(3);
  const start = startNode('start', 'start.js', ['--data', data, '--lock-port', String(lockPort), '--directory-port', String(taken), '--file-ports', filePorts.join(',')]);
  try {
    assert.equal(await start.waitForExit(15_000), { code: 1, signal: null }, start.output());
    assert.match(start.output(), new RegExp(`start: error: port ${taken} on 127\\.0\\.0\\.1 is already in use, so the directory service cannot listen on it; .*--directory-port`));
    assert.is(childrenOf(start.pid).length, 0);
  } finally {
    await start.stop();
    await new Promise((resolve) => blocker.close(resolve));
    await removeDir(data);
  }
});

test('usage errors exit 2', async () => {
  const start = startNode('start', 'start.js', ['--file-ports', '1,x']);
  assert.equal(await start.waitForExit(10_000), { code: 2, signal: null });
  assert.match(start.output(), /--file-ports must be a port number/);
});

test.run();
