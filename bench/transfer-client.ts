/**
 * A client in a process of its own, so that its peak resident memory means something: writes
 * SIZE_MIB to NAME through the directory at DIRECTORY_URL with writeStream, reads it back with
 * readStream, and prints one JSON line: {size, writeMs, readMs, readBytes, peakRss}.
 *
 *   node dist/bench/transfer-client.js DIRECTORY_URL NAME SIZE_MIB
 *
 * Unlike tests/helpers/transfer.ts it produces its content from a few pre-made random blocks
 * and hashes nothing itself (readStream still checks the sha256), so the timings are the
 * service's, not a content generator's.
 */
import { transportFromEnv } from '../tests/helpers/tls.js';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { DfsClient } from '../client/dfs-client.js';

const [directoryUrl, name, sizeMiB] = process.argv.slice(2);
if (!directoryUrl || !name || !sizeMiB) {
  process.stderr.write('usage: transfer-client DIRECTORY_URL NAME SIZE_MIB\n');
  process.exit(2);
}
const MiB = 1 << 20;
const size = Number(sizeMiB) * MiB;
// Several distinct blocks, so that the file is not one block repeated at a short period.
const blocks = Array.from({ length: 7 }, () => randomBytes(MiB));

async function* content(): AsyncIterable<Buffer> {
  for (let offset = 0, n = 0; offset < size; offset += MiB, n++) {
    const block = blocks[n % blocks.length]!;
    yield size - offset >= MiB ? block : block.subarray(0, size - offset);
  }
}

const client = await DfsClient.connect(directoryUrl, { transport: await transportFromEnv(), clientName: 'bench-transfer' });
try {
  await client.create(name);
  const writeStarted = performance.now();
  await client.writeStream(name, size, content);
  const writeMs = performance.now() - writeStarted;

  const readStarted = performance.now();
  const { stream } = await client.readStream(name);
  let readBytes = 0;
  for await (const chunk of stream) readBytes += chunk.length;
  const readMs = performance.now() - readStarted;

  const status = await readFile('/proc/self/status', 'utf8');
  const peakRss = Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0) * 1024;
  process.stdout.write(JSON.stringify({ size, writeMs, readMs, readBytes, peakRss }) + '\n');
} finally {
  client.close();
}
