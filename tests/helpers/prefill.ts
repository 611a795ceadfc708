/**
 * Big clusters without creating every file through the protocol: a directory table and each
 * file server's store written straight to disk, in the formats the services load
 * (servers/directory/table-format.ts, servers/file/version-file.ts). Used by the scale tests.
 */
import { createHash } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FileTable } from '../../servers/directory/file-table.js';
import { encodeHeader, nameKey, versionFileName } from '../../servers/file/version-file.js';
import { eachLimited } from '../../shared/concurrency.js';
import { MAX_NAME_BYTES } from '../../shared/names.js';
import type { ClusterLayout } from './cluster.js';

/**
 * Realistic names: mostly short paths, some deep, some not ASCII, and every 97th exactly at the
 * 255-byte limit (two 120-byte segments and a tail).
 */
export function realisticName(i: number): string {
  switch (i % 97 === 0 ? 3 : i % 5) {
    case 0:
      return `notes/file-${i}.txt`;
    case 1:
      return `projects/alpha/src/module-${i % 300}/component-${i}.ts`;
    case 2:
      return `文書/報告-${i}.md`;
    case 3: {
      const head = `${'a'.repeat(120)}/${'b'.repeat(120)}/`;
      const tail = `-${i}`;
      return head + 'c'.repeat(MAX_NAME_BYTES - Buffer.byteLength(head) - tail.length) + tail;
    }
    default:
      return `home/user-${i % 50}/docs/${i}.txt`;
  }
}

export function contentOf(name: string, version: number): Buffer {
  return Buffer.from(`version ${version} of ${name}\n`);
}

/**
 * Lays down `files` files, placed as FileTable.prefill places them (file i: primary
 * servers[i % n], replicas the next ones, epoch i + 1), each at version 1 on every copy.
 */
export async function prefillCluster(layout: ClusterLayout, files: number, nameOf: (i: number) => string = realisticName): Promise<void> {
  const servers = layout.servers.map(({ id, url }) => ({ id, url }));
  await FileTable.prefill(layout.directoryData, { files, servers, replication: servers.length, nameOf });
  for (const server of layout.servers) await mkdir(join(server.data, 'store'), { recursive: true });
  await eachLimited(Array.from({ length: files }, (_, i) => i), 64, async (i) => {
    const name = nameOf(i);
    const epoch = i + 1;
    const content = contentOf(name, 1);
    const header = encodeHeader({ name, epoch, version: 1, size: content.length, sha256: createHash('sha256').update(content).digest('hex'), mtime: Date.now(), token: 0, requestId: '', placementEpoch: 1 });
    const file = versionFileName(nameKey(name), epoch, 1);
    const bytes = Buffer.concat([header, content]);
    await Promise.all(layout.servers.map((server) => writeFile(join(server.data, 'store', file), bytes)));
  });
}
