/**
 * Lost and kept locks as people meet them, through real `dfs` processes: the REPL's editor and
 * typed writes, and `dfs lock NAME -- CMD`. A pause past the lease loses the lock (the save
 * fails, the text is kept in a recovery file); a lock-service restart does not.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { readFile, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DfsClient } from '../client/dfs-client.js';
import { Cluster } from './helpers/cluster.js';
import { CLI, runCli, startCli, type CliProcess } from './helpers/cli.js';
import { removeDir, tempDir } from './helpers/process.js';

const test = suite('lock-loss-repl');

let cluster: Cluster;
let reader: DfsClient;
let dir: string;
let stateHome: string;
let editor: string;
let commandScript: string;
const running: CliProcess[] = [];

/** $EDITOR: says it is open, waits for GO to exist, then saves GO's content as the file's. */
const EDITOR_SCRIPT = `import { existsSync, readFileSync, writeFileSync } from 'node:fs';
const [go, file] = process.argv.slice(2);
console.log('editor open');
const timer = setInterval(() => {
  if (!existsSync(go)) return;
  clearInterval(timer);
  writeFileSync(file, readFileSync(go));
}, 20);
`;

/**
 * Writes the editor's GO file whole, at once (a rename): the editor polls for it, and a file it
 * saw half-written would make it save an empty buffer.
 */
async function release(go: string, content: string): Promise<void> {
  await writeFile(`${go}.tmp`, content);
  await rename(`${go}.tmp`, go);
}

/** CMD for dfs lock: says it runs, waits for GO, then appends a line with dfs (under the inherited lock). */
const COMMAND_SCRIPT = `import { existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
const [go, cli, url, name] = process.argv.slice(2);
console.log('command running');
const timer = setInterval(() => {
  if (!existsSync(go)) return;
  clearInterval(timer);
  const append = spawnSync(process.execPath, [cli, '--directory', url, 'append', name], { input: 'from the command\\n', stdio: ['pipe', 'inherit', 'inherit'] });
  process.exit(append.status ?? 1);
}, 20);
`;

test.before(async () => {
  cluster = await Cluster.start();
  reader = await cluster.client({ clientName: 'test-reader' });
  dir = await tempDir('dfs-lock-loss-repl-');
  stateHome = join(dir, 'state');
  editor = join(dir, 'editor.mjs');
  commandScript = join(dir, 'command.mjs');
  await writeFile(editor, EDITOR_SCRIPT);
  await writeFile(commandScript, COMMAND_SCRIPT);
});

test.after.each(async () => {
  await Promise.all(running.splice(0).map((p) => p.stop()));
});

test.after(async () => {
  reader.close();
  await cluster.stop();
  await removeDir(dir);
});

function repl(name: string, go: string): CliProcess {
  const proc = startCli(name, ['--directory', cluster.directoryUrl, '--name', name], {
    EDITOR: `"${process.execPath}" "${editor}" "${go}"`,
    VISUAL: '',
    XDG_STATE_HOME: stateHome,
    ...cluster.clientEnv,
  });
  running.push(proc);
  return proc;
}

async function file(name: string, content: string): Promise<void> {
  await reader.create(name);
  await reader.write(name, content);
}

async function content(name: string): Promise<string> {
  return (await reader.read(name)).content.toString();
}

/** A recovery file named in an error line: it holds `text`, privately, where the XDG spec says. */
async function assertKept(path: string, text: string): Promise<void> {
  assert.ok(path.startsWith(join(stateHome, 'dfs', 'recovery') + '/'), path);
  assert.is(await readFile(path, 'utf8'), text);
  assert.is((await stat(path)).mode & 0o777, 0o600);
}

test("alice's REPL is paused past her lease while her editor is open; bob appends; her save fails with LOCK_LOST and her text is kept", async () => {
  await file('notes.txt', 'line 1\n');
  const go = join(dir, 'go-paused');
  const alice = repl('alice', go);
  alice.send('edit notes.txt\n');
  await alice.waitForLine(/^editor open$/);

  const logFrom = cluster.lock.lines.length;
  alice.freeze();
  // bob waits in line behind alice; her lease (3 s) lapses while she is stopped, and he gets it.
  const bob = await runCli(['--directory', cluster.directoryUrl, '--name', 'bob', 'append', 'notes.txt'], { stdin: 'bob was here\n', env: cluster.clientEnv });
  assert.is(bob.code, 0, bob.stderr);
  assert.match(bob.stderr, /waiting for lock on notes\.txt \(held by client alice/);
  await cluster.lock.waitForLine(/lease expired, session dropped .*client=alice .*locksFreed=1/, 5000, logFrom);
  alice.thaw();

  await release(go, 'alice rewrote it\n');
  const saved = await alice.waitForLine(/^error: the lock on notes\.txt was lost: .*; your edited text is kept in (.+)$/);
  await assertKept(saved[1]!, 'alice rewrote it\n');
  assert.is(await content('notes.txt'), 'line 1\nbob was here\n', "bob's append is intact");
  alice.send('<quit>\n');
  assert.equal(await alice.waitForExit(20_000), { code: 1, signal: null }, alice.output());
});

test("a lock-service restart while alice's editor is open: her lock is reclaimed, and both edits end up present, in order", async () => {
  await file('restart.txt', 'line 1\n');
  const go = join(dir, 'go-restart');
  const alice = repl('alice', go);
  alice.send('edit restart.txt\n');
  await alice.waitForLine(/^editor open$/);

  await cluster.lock.kill9();
  await cluster.startLock();
  const bob = startCli('bob', ['--directory', cluster.directoryUrl, '--name', 'bob', 'append', 'restart.txt'], cluster.clientEnv);
  running.push(bob);
  bob.send('bob was here\n');
  bob.end();
  await bob.waitForLine(/^waiting for lock on restart\.txt \(held by client alice/);

  await release(go, 'alice rewrote it\n');
  await alice.waitForLine(/^Saved restart\.txt: version 2/);
  await alice.waitForLine(/^Unlocked restart\.txt$/);
  assert.equal(await bob.waitForExit(20_000), { code: 0, signal: null }, bob.output());
  assert.is(await content('restart.txt'), 'alice rewrote it\nbob was here\n');
  alice.send('<quit>\n');
  assert.equal(await alice.waitForExit(20_000), { code: 0, signal: null }, alice.output());
  assert.not.match(alice.output(), /error:/);
});

test('lines typed under a lock lost meanwhile are kept; the write fails rather than take a new lock; after unlock writes work again', async () => {
  await file('typed.txt', 'line 1\n');
  const alice = repl('alice', join(dir, 'unused'));
  alice.send('lock typed.txt\n');
  await alice.waitForLine(/^Locked typed\.txt/);
  alice.freeze();
  const bob = await runCli(['--directory', cluster.directoryUrl, '--name', 'bob', 'append', 'typed.txt'], { stdin: 'bob was here\n', env: cluster.clientEnv });
  assert.is(bob.code, 0, bob.stderr);
  alice.thaw();
  // Said as soon as alice's REPL learns it, before she writes anything.
  await alice.waitForLine(/^error: the lock on typed\.txt was lost: .*; writes under it fail until you unlock typed\.txt$/);

  const before = alice.lines.length;
  alice.send('append typed.txt\ntyped by alice\n<end>\n');
  const kept = await alice.waitForLine(/^error: the lock on typed\.txt was lost: .*nothing was written to typed\.txt; what you typed is kept in (.+)$/, 20_000, before);
  await assertKept(kept[1]!, 'typed by alice\n');
  assert.is(await content('typed.txt'), 'line 1\nbob was here\n');

  const beforeUnlock = alice.lines.length;
  alice.send('unlock typed.txt\n');
  await alice.waitForLine(/^error: the lock on typed\.txt was lost/, 20_000, beforeUnlock);
  alice.send('append typed.txt\nagain\n<end>\n<quit>\n');
  assert.equal(await alice.waitForExit(20_000), { code: 1, signal: null }, alice.output());
  assert.is(await content('typed.txt'), 'line 1\nbob was here\nagain\n');
});

test('dfs lock NAME -- CMD: dfs commands in CMD write under its lock instead of waiting for it', async () => {
  await file('shared.txt', '');
  const result = await runCli(['--directory', cluster.directoryUrl, 'lock', 'shared.txt', '--', process.execPath, CLI, '--directory', cluster.directoryUrl, 'append', 'shared.txt'], {
    stdin: 'under the lock\n',
    env: cluster.clientEnv,
  });
  assert.is(result.code, 0, result.stderr);
  assert.is(await content('shared.txt'), 'under the lock\n');
});

test('dfs lock NAME -- CMD paused past its lease: the loss is on stderr at once and at the end, CMD cannot write, the exit status is not 0', async () => {
  await file('fenced.txt', 'start\n');
  const go = join(dir, 'go-command');
  const outer = startCli('outer', ['--directory', cluster.directoryUrl, '--name', 'outer', 'lock', 'fenced.txt', '--', process.execPath, commandScript, go, CLI, cluster.directoryUrl, 'fenced.txt'], cluster.clientEnv);
  running.push(outer);
  await outer.waitForLine(/^command running$/);
  outer.freeze();
  const other = await cluster.client({ clientName: 'other' });
  try {
    await other.withLock('fenced.txt', () => other.append('fenced.txt', 'other\n'), { timeoutMs: 20_000 });
  } finally {
    other.close();
  }
  outer.thaw();
  await outer.waitForLine(/^dfs: error: the lock on fenced\.txt was lost: .*runs on without it, and its writes under it fail$/);
  await release(go, '');
  const exit = await outer.waitForExit(20_000);
  assert.is(exit.code, 1, outer.output());
  assert.match(outer.output(), /dfs: error: the lock on fenced\.txt was lost: a file server refused its fencing token/);
  assert.match(outer.output(), /did not hold it all the time it ran$/m);
  assert.is(await content('fenced.txt'), 'start\nother\n');
});

test.run();
