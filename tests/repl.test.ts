/**
 * The REPL as scripts drive it: stdin piped, no prompts. Seed 003's example session, two REPLs
 * contending for one file, edit with a scripted $EDITOR, and a session that survives bad commands.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DfsClient } from '../client/dfs-client.js';
import { Cluster } from './helpers/cluster.js';
import { assertInOrder, startCli } from './helpers/cli.js';
import { removeDir, tempDir } from './helpers/process.js';

const test = suite('repl');

let cluster: Cluster;
let reader: DfsClient;

test.before(async () => {
  cluster = await Cluster.start();
  reader = await cluster.client({ clientName: 'test-reader' });
});

test.after(async () => {
  reader.close();
  await cluster.stop();
});

const repl = (name: string, env: NodeJS.ProcessEnv = {}) => startCli(name, ['--directory', cluster.directoryUrl, '--name', name], { ...cluster.clientEnv, ...env });

test("seed 003's example session: client 1 writes and reads from its cache, client 2 from a file server", async () => {
  const client1 = repl('client-1');
  client1.send('<write> somefilename\nHello world!\n<end>\n<read> somefilename\n<quit>\n');
  assert.equal(await client1.waitForExit(20_000), { code: 0, signal: null }, client1.output());
  const out1 = client1.output();
  assertInOrder(out1, [
    'Write some text...',
    '<end> to finish writing',
    '--------------------------------',
    '--------------------------------',
    'Sending version: 1',
    'File successfully written to',
    'File unlocked...',
    'Exiting <write> mode...',
    'Checking version...',
    'Versions match, reading from cache...',
    '--------------------------------\nHello world!\n--------------------------------',
    'Exiting <read> mode...',
  ]);
  assert.not.match(out1, /NOT IN CACHE|error:/);

  const client2 = repl('client-2');
  client2.send('<read> somefilename\n<read> somefilename\n');
  client2.end();
  assert.equal(await client2.waitForExit(20_000), { code: 0, signal: null }, client2.output());
  const out2 = client2.output();
  assertInOrder(out2, [
    'REQUESTING FILE FROM FILE SERVER - FILE NOT IN CACHE',
    '--------------------------------\nHello world!\n--------------------------------',
    /somefilename successfully cached \(version 1, from fs-\d\)\.\.\./,
    'Exiting <read> mode...',
    // The second read finds the cached copy current and downloads nothing.
    'Checking version...',
    'Versions match, reading from cache...',
    'Hello world!',
    'Exiting <read> mode...',
  ]);
  assert.is((await reader.read('somefilename')).content.toString(), 'Hello world!\n');
});

test('two REPLs contend for one file: the second waits in line, then appends after the first saves', async () => {
  const alice = repl('alice');
  const bob = repl('bob');
  try {
    alice.send('lock notes.txt\n');
    await alice.waitForLine(/^Locked notes\.txt/);

    bob.send('<write> notes.txt\nfrom bob\n<end>\n<quit>\n');
    await bob.waitForLine(/lock on notes\.txt is held by .*alice.*; waiting, 1st in line/);
    assert.not.match(bob.output(), /Write some text/, 'bob must not start writing while alice holds the lock');

    alice.send('append notes.txt\nfrom alice\n<end>\nunlock notes.txt\n<quit>\n');
    assert.equal(await alice.waitForExit(20_000), { code: 0, signal: null }, alice.output());
    assert.equal(await bob.waitForExit(20_000), { code: 0, signal: null }, bob.output());

    assertInOrder(alice.output(), ['Locked notes.txt', 'Created notes.txt', 'File successfully written', 'You still hold the lock on notes.txt', 'Unlocked notes.txt']);
    assertInOrder(bob.output(), ['waiting, 1st in line', 'Got the lock on notes.txt', 'Write some text...', 'Sending version: 2', 'File successfully written', 'File unlocked...']);
    assert.is((await reader.read('notes.txt')).content.toString(), 'from alice\nfrom bob\n');
  } finally {
    await Promise.all([alice.stop(), bob.stop()]);
  }
});

test('edit opens the file in $EDITOR under the lock and saves only a change', async () => {
  const dir = await tempDir('dfs-editor-');
  try {
    const editor = join(dir, 'editor.mjs');
    await writeFile(editor, "import { appendFileSync } from 'node:fs';\nappendFileSync(process.argv[2], 'added by the editor\\n');\n");
    await reader.create('edited.txt');
    await reader.write('edited.txt', 'first line\n');

    const session = repl('editor-user', { EDITOR: `"${process.execPath}" ${editor}`, VISUAL: '' });
    session.send('edit edited.txt\n<quit>\n');
    assert.equal(await session.waitForExit(20_000), { code: 0, signal: null }, session.output());
    assertInOrder(session.output(), ['Editing edited.txt (version 1)', 'Saved edited.txt: version 2', 'Unlocked edited.txt']);
    assert.is((await reader.read('edited.txt')).content.toString(), 'first line\nadded by the editor\n');

    const unchanged = repl('editor-user-2', { EDITOR: 'true', VISUAL: '' });
    unchanged.send('edit edited.txt\n');
    unchanged.end();
    assert.equal(await unchanged.waitForExit(20_000), { code: 0, signal: null }, unchanged.output());
    assert.match(unchanged.output(), /No changes; nothing written/);
    assert.is((await reader.stat('edited.txt')).version, 2);
  } finally {
    await removeDir(dir);
  }
});

test('bad commands and failures are one error line each; the session goes on and exits 1', async () => {
  const session = repl('clumsy');
  session.send('frobnicate\nread no-such-file\n<end>\nread "unclosed\nrm\ncreate ok.txt\nlist\n');
  session.end();
  assert.equal(await session.waitForExit(20_000), { code: 1, signal: null }, session.output());
  const out = session.output();
  const errors = out.split('\n').filter((line) => line.startsWith('error: '));
  assert.is(errors.length, 5, out);
  assertInOrder(out, ['error: unknown command "frobnicate"', 'error: no file named no-such-file', 'error: <end> finishes a <write>', 'error: unclosed " quote', 'error: usage: rm NAME', 'Created ok.txt', 'ok.txt']);
  assert.not.match(out, /\n\s+at /, 'no stack traces');
});

test.run();
