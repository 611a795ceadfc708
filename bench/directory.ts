/**
 * The directory service: lookups, and creates against a table that already holds many files.
 */
import type { TestPki } from '../tests/helpers/tls.js';
import { join } from 'node:path';
import { connect, type RpcConnection } from '../shared/rpc.js';
import type { RegisterResult, ServerRef } from '../shared/protocol.js';
import { FileTable } from '../servers/directory/file-table.js';
import { freePort, removeDir, startNode, tempDir } from '../tests/helpers/process.js';
import { cpuNote, drive, ms, p50, perSecond, progress, type Bounds, type Figure, type Run } from './measure.js';
import { SECTIONS, type AreaContext } from './plan.js';

const SECTION = SECTIONS.directoryAndLock;

/** `locate` of one existing file for reading, one request at a time. */
export async function locateLatency(directoryUrl: string, name: string, bounds: Bounds, warmup: Bounds, pki: TestPki): Promise<Run> {
  const conn = await connect(directoryUrl, { transport: pki.client });
  try {
    await conn.call('create', { name });
    const locate = () => conn.call('locate', { name, for: 'read' });
    await drive(1, locate, warmup);
    return await drive(1, locate, bounds);
  } finally {
    conn.close();
  }
}

export interface CreateRun extends Run {
  /** Files in the table before the timed creates. */
  tableFiles: number;
  /** Time the directory took to load the table and start listening, ms. */
  startMs: number;
}

/**
 * Writes a table of `tableFiles` files (FileTable.prefill: the snapshot CSV the directory loads),
 * starts a directory process on it, and times `creates` creates sent over `connections`
 * connections at once. A create involves no other service, but the directory places new files
 * only on registered, caught-up servers: stand-ins register and heartbeat for the servers the
 * table names (real file servers would spend the run catching up on the synthetic files).
 */
export async function createRate(tableFiles: number, creates: number, connections: number, maxMs: number, lockUrl: string, pki: TestPki): Promise<CreateRun> {
  const dir = await tempDir('dfs-bench-directory-');
  const dataDir = join(dir, 'directory');
  // Servers the synthetic rows name; new files are placed on them too (they never need to answer).
  const servers = [1, 2, 3].map((i) => ({ id: `fs-${i}`, url: `wss://127.0.0.1:${40000 + i}` }));
  await FileTable.prefill(dataDir, { files: tableFiles, servers, replication: 3 });
  const port = await freePort();
  const started = performance.now();
  const cleanups: Array<() => void> = [];
  const proc = startNode(`directory-${tableFiles}`, 'servers/directory/main.js', [...pki.flags('directory'), '--port', String(port), '--data', dataDir, '--lock', lockUrl, '--replication', '3']);
  try {
    await proc.waitForLine(/listening/, 120_000);
    const startMs = performance.now() - started;
    const standIns = await registerStandIns(`wss://127.0.0.1:${port}`, servers, pki);
    cleanups.push(() => standIns.stop());
    const conns = await Promise.all(Array.from({ length: connections }, () => connect(`wss://127.0.0.1:${port}`, { transport: pki.client })));
    try {
      let next = 0;
      const create = (w: number) => conns[w]!.call('create', { name: `bench/create-${next++}` });
      // Warm up: the JIT, the connections, the journal file.
      await drive(connections, create, { ops: Math.min(200, creates), ms: 5000 });
      const run = await drive(connections, create, { ops: creates, ms: maxMs });
      return { ...run, tableFiles, startMs };
    } finally {
      for (const c of conns) c.close();
    }
  } finally {
    for (const fn of cleanups) fn();
    await proc.stop();
    await removeDir(dir);
  }
}

/**
 * File servers as far as the directory can tell: each registers, reports itself caught up
 * (`synced`), and heartbeats until stopped. They hold nothing and are never called.
 */
/** Plays the file servers (with their certificates) so that creates find servers to place files on. */
async function registerStandIns(directoryUrl: string, servers: ServerRef[], pki: TestPki): Promise<{ stop: () => void }> {
  const conns: RpcConnection[] = [];
  const timers: NodeJS.Timeout[] = [];
  const stop = () => {
    for (const t of timers) clearInterval(t);
    for (const c of conns) c.close();
  };
  try {
    for (const { id, url } of servers) {
      const conn = await connect(directoryUrl, { transport: await pki.as(id) });
      conns.push(conn);
      const reg = (await conn.call('register', { id, url })).result as RegisterResult;
      await conn.call('synced', { id, upTo: reg.markSeq, boot: reg.boot });
      const timer = setInterval(() => void conn.call('heartbeat', { id }).catch(() => {}), reg.heartbeatMs);
      timer.unref();
      timers.push(timer);
    }
  } catch (err) {
    stop();
    throw err;
  }
  return { stop };
}

export async function directoryFigures({ plan, directoryUrl, lockUrl, pki }: AreaContext): Promise<Figure[]> {
  const C = plan.clients;
  progress('directory: locate latency');
  const located = await locateLatency(directoryUrl, 'bench/locate-me', plan.timed(1, 20_000), plan.warmup(1), pki);
  const figures: Figure[] = [
    {
      section: SECTION,
      name: 'directory locate p50',
      value: p50(located.latencies),
      unit: 'ms',
      limit: (l) => l.rttP50Ms,
      limitName: 'bare ws round trip p50',
      better: 'lower',
      note: `${located.ops} samples; ${cpuNote(located)}`,
    },
  ];
  for (const size of plan.tableSizes) {
    const files = size.toLocaleString('en-US');
    progress(`directory: ${plan.creates} creates with ${files} files in the table (prefilled snapshot, directory alone)`);
    const created = await createRate(size, plan.creates, C, plan.quick ? 5000 : 30_000, lockUrl, pki);
    figures.push({
      section: SECTION,
      name: `directory create, ${files} files in the table`,
      value: perSecond(created),
      unit: 'creates/s',
      limit: (l) => l.appendsPerSec,
      limitName: 'durable append + fdatasync/s',
      better: 'higher',
      note: `${created.ops} creates over ${C} connections (group commit shares fsyncs); table loaded in ${ms(created.startMs)}; ${cpuNote(created)}`,
    });
  }
  return figures;
}
