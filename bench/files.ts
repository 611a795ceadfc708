/**
 * File servers and the client library: write cycles, reads with and without the cache, and a
 * large file streamed through a client in a process of its own.
 */
import type { TestPki } from '../tests/helpers/tls.js';
import { randomBytes } from 'node:crypto';
import { DfsClient } from '../client/dfs-client.js';
import { startNode } from '../tests/helpers/process.js';
import { cpuNote, drive, fmt, loadNote, machineBusy, machineTicks, mbPerSecond, MiB, ms, p50, peakRss, perSecond, progress, resetPeakRss, type Bounds, type Figure, type MachineLoad, type Run } from './measure.js';
import { SECTIONS, type AreaContext } from './plan.js';

const SECTION = SECTIONS.files;

export const SMALL_FILE_BYTES = 1024;

/** `count` clients, each with a file of its own holding 1 KiB (written once, so cached by its writer). */
export async function clientsWithFiles(directoryUrl: string, pki: TestPki, count: number, prefix: string, options: { cacheBytes?: number } = {}): Promise<{ clients: DfsClient[]; names: string[] }> {
  const clients: DfsClient[] = [];
  const names: string[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const client = await DfsClient.connect(directoryUrl, { transport: pki.client, clientName: `${prefix}-${i}`, ...options });
      clients.push(client);
      const name = `${prefix}/file-${i}`;
      await client.create(name);
      await client.write(name, randomBytes(SMALL_FILE_BYTES));
      names.push(name);
    }
  } catch (err) {
    closeAll(clients);
    throw err;
  }
  return { clients, names };
}

export function closeAll(clients: DfsClient[]): void {
  for (const c of clients) c.close();
}

/**
 * Write cycles: each client replaces its own file with 1 KiB, taking and releasing the file's
 * lock around the write (DfsClient.write without a lock held does exactly that), so one cycle
 * is acquire → write to the primary → replicated durably to 2 replicas → release.
 */
export async function writeCycles(clients: DfsClient[], names: string[], bounds: Bounds, warmup: Bounds): Promise<Run> {
  const content = randomBytes(SMALL_FILE_BYTES);
  const write = (w: number) => clients[w]!.write(names[w]!, content);
  await drive(clients.length, write, warmup);
  return drive(clients.length, write, bounds);
}

export interface ReadRun extends Run {
  /** Reads answered the other way than intended (from the server when cached, or vice versa). */
  unexpected: number;
}

/**
 * Reads of each client's own file. `expect` is where the content should come from: `cache`
 * (the server answered NOT_MODIFIED, no content sent) or `server` (content sent and checked).
 */
export async function reads(clients: DfsClient[], names: string[], expect: 'cache' | 'server', bounds: Bounds, warmup: Bounds): Promise<ReadRun> {
  let unexpected = 0;
  const read = async (w: number) => {
    const outcome = await clients[w]!.read(names[w]!);
    if (outcome.source !== expect) unexpected++;
  };
  await drive(clients.length, read, warmup);
  unexpected = 0;
  const run = await drive(clients.length, read, bounds);
  return { ...run, unexpected };
}

export interface TransferRun {
  size: number;
  writeMs: number;
  readMs: number;
  clientPeakRss: number;
  /** Peak resident memory of each file server over the transfer (or its whole life, see peaksReset). */
  serverPeakRss: Array<{ id: string; bytes: number }>;
  peaksReset: boolean;
  /** How busy the machine was over the whole transfer. */
  machineBusy: MachineLoad;
}

/**
 * A `sizeMiB` file written with writeStream and read back with readStream by a client process
 * of its own (bench/transfer-client.ts), replicated to every file server.
 */
export async function largeTransfer(directoryUrl: string, pki: TestPki, servers: Array<{ id: string; pid: number }>, sizeMiB: number, name: string): Promise<TransferRun> {
  const resets = await Promise.all(servers.map((s) => resetPeakRss(s.pid)));
  const machine = machineTicks();
  const proc = startNode('transfer-client', 'bench/transfer-client.js', [directoryUrl, name, String(sizeMiB)], { DFS_CA: pki.caPath });
  const exit = await proc.waitForExit(600_000);
  const busy = machineBusy(machine);
  const line = proc.lines.find((l) => l.startsWith('{'));
  if (exit.code !== 0 || !line) throw new Error(`the transfer client failed (exit ${JSON.stringify(exit)}):\n${proc.output()}`);
  const report = JSON.parse(line) as { size: number; writeMs: number; readMs: number; readBytes: number; peakRss: number };
  if (report.readBytes !== report.size) throw new Error(`read back ${report.readBytes} of ${report.size} bytes`);
  const serverPeakRss = await Promise.all(servers.map(async (s) => ({ id: s.id, bytes: await peakRss(s.pid) })));
  return { size: report.size, writeMs: report.writeMs, readMs: report.readMs, clientPeakRss: report.peakRss, serverPeakRss, peaksReset: resets.every(Boolean), machineBusy: busy };
}

export async function fileFigures({ plan, directoryUrl, pki, fileServers }: AreaContext): Promise<Figure[]> {
  const C = plan.clients;
  const figures: Figure[] = [];
  const add = (f: Omit<Figure, 'section'>) => figures.push({ section: SECTION, ...f });
  const all: DfsClient[] = [];
  try {
    progress('files: write cycles, 1 client');
    const one = await clientsWithFiles(directoryUrl, pki, 1, 'bench-one');
    all.push(...one.clients);
    const w1 = await writeCycles(one.clients, one.names, plan.timed(1, 3000), plan.warmup(1));
    add({
      name: 'write cycle p50, 1 client (lock, write 1 KiB ×3 copies, unlock)',
      value: p50(w1.latencies),
      unit: 'ms',
      limit: (l) => l.durableWriteX3P50Ms,
      limitName: 'durable 1 KiB write ×3 p50',
      better: 'lower',
      note: `${w1.ops} samples`,
    });
    add({
      name: 'write cycles, 1 client',
      value: perSecond(w1),
      unit: 'cycles/s',
      limit: (l) => l.durableWritesX3PerSec,
      limitName: 'durable 1 KiB writes ×3/s, 1 writer',
      better: 'higher',
      note: cpuNote(w1),
    });

    progress('files: reads of an unchanged cached file, 1 client');
    const r1 = await reads(one.clients, one.names, 'cache', plan.timed(1, 20_000), plan.warmup(1));
    add({
      name: 'cached read p50, 1 client',
      value: p50(r1.latencies),
      unit: 'ms',
      limit: (l) => l.rttP50Ms,
      limitName: 'bare ws round trip p50',
      better: 'lower',
      note: `2 round trips: locate, then read answered NOT_MODIFIED; ${r1.ops} samples${r1.unexpected ? `; ${r1.unexpected} NOT from the cache` : ''}`,
    });
    add({
      name: 'cached reads, 1 client',
      value: perSecond(r1),
      unit: 'reads/s',
      limit: (l) => l.roundTripsPerSec,
      limitName: 'bare ws round trips/s, 1 connection',
      better: 'higher',
      note: cpuNote(r1),
    });

    progress(`files: write cycles, ${C} clients on different files`);
    const many = await clientsWithFiles(directoryUrl, pki, C, 'bench-many');
    all.push(...many.clients);
    const wN = await writeCycles(many.clients, many.names, plan.timed(C, 1000), plan.warmup(C));
    add({
      name: `write cycles, ${C} clients on different files`,
      value: perSecond(wN),
      unit: 'cycles/s',
      limit: (l) => l.durableWritesX3PerSecMany,
      limitName: `durable 1 KiB writes ×3/s, ${C} writers`,
      better: 'higher',
      note: `p50 ${ms(p50(wN.latencies))}; ${cpuNote(wN)}`,
    });

    progress(`files: reads of unchanged cached files, ${C} clients`);
    const rN = await reads(many.clients, many.names, 'cache', plan.timed(C, 5000), plan.warmup(C));
    add({
      name: `cached reads, ${C} clients`,
      value: perSecond(rN),
      unit: 'reads/s',
      limit: (l) => l.roundTripsPerSecMany,
      limitName: `bare ws round trips/s, ${C} connections`,
      better: 'higher',
      note: `p50 ${ms(p50(rN.latencies))}; ${cpuNote(rN)}${rN.unexpected ? `; ${rN.unexpected} NOT from the cache` : ''}`,
    });

    progress(`files: reads of 1 KiB files that are not cached, ${C} clients`);
    // cacheBytes 0: nothing is ever cached, so every read sends no version and the server reads
    // the file, checks it and sends 1 KiB that the client checks: the whole cost of reading a
    // file someone else changed, without a writer's cost mixed into the figure.
    const cold = await clientsWithFiles(directoryUrl, pki, C, 'bench-cold', { cacheBytes: 0 });
    all.push(...cold.clients);
    const uN = await reads(cold.clients, cold.names, 'server', plan.timed(C, 3000), plan.warmup(C));
    add({
      name: `uncached 1 KiB reads, ${C} clients`,
      value: perSecond(uN),
      unit: 'reads/s',
      limit: (l) => l.roundTripsPerSecMany,
      limitName: `bare ws round trips/s, ${C} connections`,
      better: 'higher',
      note: `client cache off: 1 KiB sent and checked every time; p50 ${ms(p50(uN.latencies))}; ${cpuNote(uN)}${uN.unexpected ? `; ${uN.unexpected} from the cache` : ''}`,
    });
  } finally {
    closeAll(all);
  }

  progress(`files: ${plan.transferMiB} MiB written (writeStream, 3 copies) and read back (readStream) by a client process`);
  const big = await largeTransfer(directoryUrl, pki, fileServers, plan.transferMiB, 'bench/large.bin');
  add({
    name: `${plan.transferMiB} MiB write, replication 3`,
    value: mbPerSecond(big.size, big.writeMs),
    unit: 'MB/s',
    // Both bound it; the lower one is the limit.
    limit: (l) => Math.min(l.upMBps, l.durableLargeMBps),
    limitName: (l) =>
      l.durableLargeMBps < l.upMBps
        ? `durable local write of ${plan.transferMiB} MiB (bare ws transfer: ${fmt(l.upMBps)} MB/s)`
        : `bare ws transfer client→server (durable local write: ${fmt(l.durableLargeMBps)} MB/s)`,
    better: 'higher',
    note: `every byte goes to 3 disks of this one machine; ${loadNote(big.machineBusy)} over write + read`,
  });
  add({
    name: `${plan.transferMiB} MiB read`,
    value: mbPerSecond(big.size, big.readMs),
    unit: 'MB/s',
    limit: (l) => l.downMBps,
    limitName: 'bare ws transfer server→client',
    better: 'higher',
    note: 'readStream, sha256 checked as it arrives',
  });
  add({
    name: `client peak RSS, ${plan.transferMiB} MiB write + read`,
    value: big.clientPeakRss / MiB,
    unit: 'MiB',
    limit: (l) => l.bareProcessPeakRss / MiB,
    limitName: 'bare node+ws process peak RSS',
    better: 'lower',
    note: 'VmHWM of the client process',
  });
  const worst = big.serverPeakRss.reduce((a, b) => (b.bytes > a.bytes ? b : a));
  add({
    name: `file server peak RSS, ${plan.transferMiB} MiB write + read`,
    value: worst.bytes / MiB,
    unit: 'MiB',
    limit: (l) => l.bareProcessPeakRss / MiB,
    limitName: 'bare node+ws process peak RSS',
    better: 'lower',
    note: `highest of ${big.serverPeakRss.map((s) => `${s.id} ${fmt(s.bytes / MiB)}`).join(', ')}${big.peaksReset ? '' : ' (peak over the whole life: it could not be reset)'}`,
  });
  return figures;
}
