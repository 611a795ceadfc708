/** What `status` shows a person, from the cluster's answers. */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { renderStatus } from '../client/format.js';
import type { ClusterStatus } from '../client/dfs-client.js';

const test = suite('format');

const base: ClusterStatus = {
  servers: [{ id: 'fs-1', url: 'ws://127.0.0.1:12001', state: 'up', sync: 'in-sync', lastHeartbeat: 1000, files: 2, primaries: 1, behindFiles: 0 }],
  files: 2,
  replication: 1,
  lockUrl: 'ws://127.0.0.1:4040',
  locks: [],
};

test('status says when the directory set table rows aside, and only then', () => {
  assert.not.match(renderStatus(base, 2000), /set aside/);
  assert.not.match(renderStatus({ ...base, rejectedRows: 0 }, 2000), /set aside/);
  assert.match(renderStatus({ ...base, rejectedRows: 3 }, 2000), /the directory set aside 3 rows of its file table at start \(see file_table\.rejected\.csv/);
  assert.match(renderStatus({ ...base, rejectedRows: 1 }, 2000), /set aside 1 row of/);
});

test.run();
