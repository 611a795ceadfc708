/**
 * A `behind` answer never comes before the mark it reports is on disk, even when the same copy
 * was reported a moment before and that first mark's fsync has not finished (a retried write, or
 * a server and its primary reporting together).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { Cluster } from '../servers/directory/cluster.js';
import { FileTable } from '../servers/directory/file-table.js';
import { directoryHandlers } from '../servers/directory/service.js';
import { silentLogger } from '../shared/log.js';
import type { CallContext } from '../shared/rpc.js';
import { removeDir, tempDir } from './helpers/process.js';

const test = suite('mark-durability');

test('a behind answer never precedes the durability of the mark it relies on', async () => {
  const dir = await tempDir('dfs-rv-marks-');
  const table = await FileTable.open(dir, { log: silentLogger });
  try {
    const cluster = new Cluster({ replication: 2 });
    cluster.register('fs-1', 'ws://127.0.0.1:1');
    cluster.register('fs-2', 'ws://127.0.0.1:2');
    await table.create('f', { id: 'fs-1', url: 'ws://127.0.0.1:1' }, [{ id: 'fs-2', url: 'ws://127.0.0.1:2' }]);
    // A disk whose fsync is slow: the first mark's write has not finished yet.
    let durable = 0;
    const pending: Array<() => void> = [];
    const markStore = {
      mark: (copies: unknown[]) => (copies.length === 0 ? Promise.resolve() : new Promise<void>((resolve) => pending.push(() => { durable += copies.length; resolve(); }))),
      clear: () => {},
    };
    const changes = { isBeingReplaced: () => false };
    const handlers = directoryHandlers(table, cluster, { log: silentLogger } as never, { markStore, changes } as never);
    // The report comes over fs-1's connection: its certificate names it.
    const ctx = { conn: { service: { role: 'file-server', id: 'fs-1' } } } as unknown as CallContext;
    const first = Promise.resolve(handlers.behind!({ id: 'fs-2', by: 'fs-1', names: ['f'] }, ctx));
    let firstDone = false;
    void first.then(() => (firstDone = true));
    // The retry (or a concurrent report) of the same copy:
    const secondCall = Promise.resolve(handlers.behind!({ id: 'fs-2', by: 'fs-1', names: ['f'] }, ctx)) as Promise<{ marked: number }>;
    let secondDone = false;
    void secondCall.then(() => (secondDone = true));
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.ok(!secondDone || durable > 0, 'the second behind was answered while the mark is not on disk; a crash now forgets it');
    for (const p of pending.splice(0)) p();
    assert.is((await secondCall).marked, 1);
    await first;
    assert.ok(firstDone);
  } finally {
    await table.close();
    await removeDir(dir);
  }
});

test.run();
