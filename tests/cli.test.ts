/**
 * The one-shot `dfs` command against a real cluster: byte-exact binary transfers small and
 * large, exit statuses, and `lock NAME -- CMD` serialising concurrent callers in arrival order.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DfsClient } from '../client/dfs-client.js';
import { Cluster } from './helpers/cluster.js';
import { assertInOrder, runCli, startCli, type CliProcess } from './helpers/cli.js';
import { freePort, removeDir, tempDir } from './helpers/process.js';

const test = suite('cli');

let cluster: Cluster;
let dir: string;
let client: DfsClient;

test.before(async () => {
  cluster = await Cluster.start();
  dir = await tempDir('dfs-cli-');
  client = await cluster.client({ clientName: 'test-holder' });
});

test.after(async () => {
  client.close();
  await cluster.stop();
  await removeDir(dir);
});

const dfs = (args: string[], stdin?: Buffer | string) => runCli(['--directory', cluster.directoryUrl, ...args], { env: cluster.clientEnv, ...(stdin === undefined ? {} : { stdin }) });

/** Every byte value, then `size - 256` random bytes. */
function binary(size: number): Buffer {
  const every = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  return Buffer.concat([every, randomBytes(Math.max(0, size - 256))]);
}

test('write from stdin and cat are byte-exact for every byte value', async () => {
  const content = binary(256);
  const written = await dfs(['write', 'bytes.bin'], content);
  assert.is(written.code, 0, written.stderr);
  const cat = await dfs(['cat', 'bytes.bin']);
  assert.is(cat.code, 0, cat.stderr);
  assert.ok(cat.stdout.equals(content), 'cat returns the bytes written');

  const appended = await dfs(['append', 'bytes.bin'], Buffer.from([0, 255, 10, 13]));
  assert.is(appended.code, 0, appended.stderr);
  assert.ok((await dfs(['cat', 'bytes.bin'])).stdout.equals(Buffer.concat([content, Buffer.from([0, 255, 10, 13])])));
});

test('put and get a binary file over 1 MiB (streamed) byte for byte; cat matches too', async () => {
  const content = binary(1536 * 1024 + 7);
  const local = join(dir, 'big.bin');
  const back = join(dir, 'big-back.bin');
  await writeFile(local, content);
  const put = await dfs(['put', local, 'data/big.bin']);
  assert.is(put.code, 0, put.stderr);
  assert.match(put.stdout.toString(), /data\/big\.bin: version 1, 1\.5 MiB/);
  const get = await dfs(['get', 'data/big.bin', back]);
  assert.is(get.code, 0, get.stderr);
  assert.ok((await readFile(back)).equals(content), 'get returns the bytes put');
  const cat = await dfs(['cat', 'data/big.bin']);
  assert.ok(cat.stdout.equals(content), 'cat returns the bytes put');
  // A progress bar is only for terminals: nothing on stderr here.
  assert.is(get.stderr, '');
});

test('write from stdin larger than what is held in memory (spooled to disk) arrives whole', async () => {
  const content = binary(9 * 1024 * 1024 + 3);
  const written = await dfs(['write', 'spooled.bin'], content);
  assert.is(written.code, 0, written.stderr);
  assert.ok((await dfs(['cat', 'spooled.bin'])).stdout.equals(content));
});

test('ls, stat, status, rm', async () => {
  assert.is((await dfs(['create', 'list/a.txt'])).code, 0);
  assert.is((await dfs(['create', 'list/b.txt'])).code, 0);
  const ls = await dfs(['ls', 'list/']);
  assert.is(ls.stdout.toString(), 'list/a.txt\nlist/b.txt\n');
  const stat = await dfs(['stat', 'list/a.txt']);
  assert.match(stat.stdout.toString(), /version\s+0/);
  assert.match(stat.stdout.toString(), /primary\s+fs-\d/);
  const status = await dfs(['status']);
  assert.is(status.code, 0, status.stderr);
  for (const id of ['fs-1', 'fs-2', 'fs-3']) assert.match(status.stdout.toString(), new RegExp(`${id}\\s+wss://\\S+\\s+up\\s+in-sync`));
  const rm = await dfs(['rm', 'list/a.txt']);
  assert.is(rm.code, 0, rm.stderr);
  assert.is((await dfs(['ls', 'list/'])).stdout.toString(), 'list/b.txt\n');
});

test('exit statuses: 0 ok, 1 error with one line on stderr, 2 usage error', async () => {
  assert.is((await runCli(['--help'])).code, 0);
  const missing = await dfs(['cat', 'no-such-file']);
  assert.is(missing.code, 1);
  assert.match(missing.stderr, /^dfs: error: .*no-such-file.*\n$/);
  const unreachable = await runCli(['--directory', `wss://127.0.0.1:${await freePort()}`, 'ls'], { env: cluster.clientEnv });
  assert.is(unreachable.code, 1);
  assert.match(unreachable.stderr, /^dfs: error: cannot reach wss:\/\/127\.0\.0\.1:\d+: connection refused; is the cluster running\?/);
  assert.is(unreachable.stderr.split('\n').length, 2, 'one line');
  const noFile = await dfs(['put', join(dir, 'not-there'), 'x']);
  assert.is(noFile.code, 1);
  assert.match(noFile.stderr, /not-there: no such file or directory/);
  for (const args of [['frobnicate'], ['cat'], ['cat', 'a', 'b'], ['--bogus', 'ls'], ['--timeout', 'soon', 'ls'], ['lock', 'x'], ['lock', 'x', '--']]) {
    const result = await runCli(args);
    assert.is(result.code, 2, `dfs ${args.join(' ')}: ${result.stderr}`);
    assert.match(result.stderr, /^dfs: /);
  }
  const status3 = await dfs(['lock', 'exit.lock', '--', process.execPath, '-e', 'process.exit(3)']);
  assert.is(status3.code, 3, 'lock exits with the status of its command');
  const notFound = await dfs(['lock', 'exit.lock', '--', join(dir, 'no-such-command')]);
  assert.is(notFound.code, 1);
  assert.match(notFound.stderr, /^dfs: error: cannot run .*no-such-command: command not found\n$/);
});

test('lock NAME -- CMD runs concurrent callers one at a time, in arrival order', async () => {
  const script = join(dir, 'critical.mjs');
  const log = join(dir, 'critical.log');
  await writeFile(
    script,
    [
      "import { appendFileSync } from 'node:fs';",
      'const [i, log] = process.argv.slice(2);',
      'appendFileSync(log, `start ${i}\\n`);',
      // Stay inside for a moment, so that a second holder would show as interleaved lines.
      'setTimeout(() => appendFileSync(log, `end ${i}\\n`), 50);',
    ].join('\n'),
  );
  await writeFile(log, '');
  // Hold the lock here first, so that every caller queues; each starts only once the previous
  // one is waiting, which makes the arrival order 0, 1, 2, 3.
  const held = await client.lock('queue.lock');
  const ordinals = ['1st', '2nd', '3rd', '4th'];
  const callers: CliProcess[] = [];
  try {
    for (let i = 0; i < 4; i++) {
      const caller = startCli(`caller-${i}`, ['--directory', cluster.directoryUrl, 'lock', 'queue.lock', '--', process.execPath, script, String(i), log], cluster.clientEnv);
      callers.push(caller);
      await caller.waitForLine(new RegExp(`^waiting for lock on queue\\.lock \\(held by .*test-holder.*, ${ordinals[i]} in line\\)$`));
    }
    await held.release();
    for (const caller of callers) assert.equal(await caller.waitForExit(20_000), { code: 0, signal: null }, caller.output());
  } finally {
    await Promise.all(callers.map((c) => c.stop()));
  }
  assert.is(await readFile(log, 'utf8'), 'start 0\nend 0\nstart 1\nend 1\nstart 2\nend 2\nstart 3\nend 3\n');
  assertInOrder(callers[3]!.output(), ['4th in line', '3rd in line', '2nd in line', '1st in line']);
});

test.run();
