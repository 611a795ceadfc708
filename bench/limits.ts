/**
 * The machine's own limits for the work the service does, measured in the same run as the
 * figures so that a busy or slow machine moves both together:
 * - a bare `ws` round trip and transfer between two node processes (bench/echo-server.ts);
 * - durable local writes done directly with node's fs, the way the servers make data durable
 *   (temp file, fdatasync, rename, folder fsync; append + fdatasync for the directory's journal).
 */
import { open, rename, mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { WebSocket } from 'ws';
import { removeDir, startNode, tempDir, type ServiceProcess } from '../tests/helpers/process.js';
import { drive, fmt, loadNote, machineBusy, machineTicks, mbPerSecond, MiB, p50, peakRss, perSecond, progress, type Bounds, type Run } from './measure.js';
import type { MachineLimits, Plan } from './plan.js';

// ------------------------------------------------------------------ bare WebSocket

export interface EchoServer {
  url: string;
  proc: ServiceProcess;
}

export async function startEchoServer(): Promise<EchoServer> {
  const proc = startNode('echo', 'bench/echo-server.js', []);
  const match = await proc.waitForLine(/^listening (\d+)$/);
  return { url: `ws://127.0.0.1:${match[1]}`, proc };
}

/** A plain ws client with one request at a time: send, wait for the next message. */
class BareClient {
  private waiting: ((data: Buffer) => void) | null = null;

  private constructor(readonly ws: WebSocket) {
    ws.on('message', (data: Buffer) => {
      const wake = this.waiting;
      this.waiting = null;
      wake?.(data);
    });
  }

  static open(url: string): Promise<BareClient> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 64 << 20 });
      ws.once('open', () => resolve(new BareClient(ws)));
      ws.once('error', reject);
    });
  }

  /** Resolves with the next message that arrives. */
  next(): Promise<Buffer> {
    return new Promise((resolve) => (this.waiting = resolve));
  }

  roundTrip(message: string): Promise<Buffer> {
    const reply = this.next();
    this.ws.send(message);
    return reply;
  }

  close(): void {
    this.ws.close();
  }
}

/** About the size of one of our small RPC requests (a locate, an acquire). */
const SMALL_MESSAGE = JSON.stringify({ t: 'req', id: 1, op: 'locate', args: { name: 'bench/some-file.txt', for: 'read' } });

/** Sequential round trips of small text messages on each of `connections` connections at once. */
export async function wsRoundTrips(url: string, connections: number, bounds: Bounds): Promise<Run> {
  const clients = await Promise.all(Array.from({ length: connections }, () => BareClient.open(url)));
  try {
    return await drive(connections, (w) => clients[w]!.roundTrip(SMALL_MESSAGE), bounds);
  } finally {
    for (const c of clients) c.close();
  }
}

/**
 * `bytes` sent client→server in 1 MiB binary messages, never more than 8 MiB waiting in ws's
 * send buffer (bufferedAmount); timed until the server says it has received them all.
 */
export async function wsTransferUp(url: string, bytes: number): Promise<number> {
  const client = await BareClient.open(url);
  try {
    const block = randomBytes(MiB);
    const started = performance.now();
    client.ws.send(JSON.stringify({ cmd: 'sink', bytes }));
    const done = client.next();
    for (let sent = 0; sent < bytes; sent += MiB) {
      const piece = bytes - sent >= MiB ? block : block.subarray(0, bytes - sent);
      if (client.ws.bufferedAmount + piece.length > 8 * MiB) {
        await new Promise<void>((resolve, reject) => client.ws.send(piece, (err) => (err ? reject(err) : resolve())));
      } else {
        client.ws.send(piece);
      }
    }
    await done;
    return performance.now() - started;
  } finally {
    client.close();
  }
}

/** `bytes` sent server→client the same way; timed until the last byte has arrived. */
export async function wsTransferDown(url: string, bytes: number): Promise<number> {
  const client = await BareClient.open(url);
  try {
    let received = 0;
    const started = performance.now();
    await new Promise<void>((resolve) => {
      client.ws.on('message', (data: Buffer, isBinary: boolean) => {
        if (isBinary) received += data.length;
        else if (data.toString() === 'done') resolve();
      });
      client.ws.send(JSON.stringify({ cmd: 'source', bytes, chunk: MiB }));
    });
    if (received !== bytes) throw new Error(`bare ws transfer: expected ${bytes} bytes, got ${received}`);
    return performance.now() - started;
  } finally {
    client.close();
  }
}

// ------------------------------------------------------------------ durable local writes

/** One durable replacement, as the file store commits a version: temp, fdatasync, rename, folder fsync. */
async function durableReplace(dir: string, name: string, content: Buffer): Promise<void> {
  const temp = join(dir, `.${name}.tmp`);
  const handle = await open(temp, 'w');
  try {
    await handle.write(content, 0, content.length, 0);
    await handle.datasync();
  } finally {
    await handle.close();
  }
  await rename(temp, join(dir, name));
  const folder = await open(dir, 'r');
  try {
    await folder.sync();
  } finally {
    await folder.close();
  }
}

/**
 * `writers` loops at once, each op writing 1 KiB durably `copies` times, into `copies` folders
 * in parallel (as a primary and its replicas each keep their own folder).
 */
export async function durableSmallWrites(root: string, writers: number, copies: number, bounds: Bounds): Promise<Run> {
  const folders = Array.from({ length: copies }, (_, i) => join(root, `copy-${i}`));
  for (const f of folders) await mkdir(f, { recursive: true });
  const content = randomBytes(1024);
  try {
    return await drive(writers, (w) => Promise.all(folders.map((f) => durableReplace(f, `file-${w}`, content))), bounds);
  } finally {
    for (const f of folders) await rm(f, { recursive: true, force: true });
  }
}

/** `bytes` written in 1 MiB chunks to a new file, then fsynced: elapsed ms. */
export async function durableLargeWrite(root: string, bytes: number): Promise<number> {
  const path = join(root, 'large.bin');
  const block = randomBytes(MiB);
  const started = performance.now();
  const handle = await open(path, 'w');
  try {
    for (let offset = 0; offset < bytes; offset += MiB) {
      const n = Math.min(MiB, bytes - offset);
      let done = 0;
      while (done < n) done += (await handle.write(block, done, n - done, offset + done)).bytesWritten;
    }
    await handle.sync();
  } finally {
    await handle.close();
  }
  const ms = performance.now() - started;
  await rm(path, { force: true });
  return ms;
}

/** One line of the directory's journal per create: about three copy rows. */
const JOURNAL_LINE = Buffer.from(
  [0, 1, 2].map((i) => `add,bench/create-000000,fs-${i + 1},wss://127.0.0.1:40001,${i === 2 ? 'primary' : 'replica'},100001\n`).join(''),
);

/** Sequential appends of one create's journal rows, each followed by fdatasync. */
export async function durableAppends(root: string, bounds: Bounds): Promise<Run> {
  const path = join(root, 'journal.csv');
  const handle = await open(path, 'a');
  try {
    return await drive(
      1,
      async () => {
        await handle.write(JOURNAL_LINE);
        await handle.datasync();
      },
      bounds,
    );
  } finally {
    await handle.close();
    await rm(path, { force: true });
  }
}

// ------------------------------------------------------------------ all of them

/** One round of every limit, with how busy the machine was while each was measured. */
export interface LimitRound {
  values: MachineLimits;
  loads: Partial<Record<keyof MachineLimits, string>>;
}

/** Measures every limit once. The run does this at its start and again at its end. */
export async function measureLimits(plan: Plan, round: string): Promise<LimitRound> {
  const C = plan.clients;
  const bytes = plan.transferMiB * MiB;
  const values = {} as MachineLimits;
  const loads: LimitRound['loads'] = {};
  /** Runs one measurement and notes how busy the machine was meanwhile. */
  const measure = async <T>(keys: Array<keyof MachineLimits>, what: string, fn: () => Promise<T>): Promise<T> => {
    progress(`limits (${round}): ${what}`);
    const since = machineTicks();
    const value = await fn();
    const load = machineBusy(since);
    if (Number.isFinite(load.busy)) for (const key of keys) loads[key] = loadNote(load);
    return value;
  };

  progress(`limits (${round}): starting the bare ws echo server, warming up`);
  const echo = await startEchoServer();
  try {
    await wsRoundTrips(echo.url, 1, plan.warmup(1));
    const one = await measure(['rttP50Ms', 'roundTripsPerSec'], 'bare ws round trips, 1 connection', () => wsRoundTrips(echo.url, 1, plan.timed(1, 20_000)));
    values.rttP50Ms = p50(one.latencies);
    values.roundTripsPerSec = perSecond(one);
    values.roundTripsPerSecMany = perSecond(await measure(['roundTripsPerSecMany'], `bare ws round trips, ${C} connections`, () => wsRoundTrips(echo.url, C, plan.timed(C, 10_000))));
    await wsTransferUp(echo.url, 8 * MiB);
    values.upMBps = mbPerSecond(bytes, await measure(['upMBps'], `bare ws transfer of ${plan.transferMiB} MiB client→server`, () => wsTransferUp(echo.url, bytes)));
    values.downMBps = mbPerSecond(bytes, await measure(['downMBps'], `bare ws transfer of ${plan.transferMiB} MiB server→client`, () => wsTransferDown(echo.url, bytes)));
    values.bareProcessPeakRss = await peakRss(echo.proc.pid);
  } finally {
    await echo.proc.stop();
  }

  const scratch = await tempDir('dfs-bench-disk-');
  try {
    await durableSmallWrites(scratch, 1, 3, { ops: 100, ms: 300 }); // the disk path needs little warming
    const one = await measure(['durableWriteX3P50Ms', 'durableWritesX3PerSec'], 'durable 1 KiB writes, three copies each, 1 writer', () => durableSmallWrites(scratch, 1, 3, plan.timed(1, 3000)));
    values.durableWriteX3P50Ms = p50(one.latencies);
    values.durableWritesX3PerSec = perSecond(one);
    values.durableWritesX3PerSecMany = perSecond(
      await measure(['durableWritesX3PerSecMany'], `durable 1 KiB writes, three copies each, ${C} writers`, () => durableSmallWrites(scratch, C, 3, plan.timed(C, 1000))),
    );
    values.durableLargeMBps = mbPerSecond(bytes, await measure(['durableLargeMBps'], `durable write of ${plan.transferMiB} MiB`, () => durableLargeWrite(scratch, bytes)));
    values.appendsPerSec = perSecond(await measure(['appendsPerSec'], 'durable append + fdatasync', () => durableAppends(scratch, plan.timed(1, 5000))));
  } finally {
    await removeDir(scratch);
  }
  return { values, loads };
}

interface Describe {
  key: keyof MachineLimits;
  name: string;
  unit: string;
  how: string;
  better: 'higher' | 'lower';
  /** Shown value from the stored one (bytes → MiB). */
  scale?: number;
}

function descriptions(plan: Plan): Describe[] {
  const C = plan.clients;
  const T = plan.transferMiB;
  return [
    { key: 'rttP50Ms', name: 'bare ws round trip p50', unit: 'ms', better: 'lower', how: 'small text message echoed by another node process (plain ws)' },
    { key: 'roundTripsPerSec', name: 'bare ws round trips/s, 1 connection', unit: 'round trips/s', better: 'higher', how: 'the same, one at a time' },
    { key: 'roundTripsPerSecMany', name: `bare ws round trips/s, ${C} connections`, unit: 'round trips/s', better: 'higher', how: `${C} connections, one at a time on each` },
    { key: 'upMBps', name: `bare ws transfer ${T} MiB client→server`, unit: 'MB/s', better: 'higher', how: '1 MiB binary messages, ≤ 8 MiB in bufferedAmount' },
    { key: 'downMBps', name: `bare ws transfer ${T} MiB server→client`, unit: 'MB/s', better: 'higher', how: 'the same, the other way' },
    { key: 'bareProcessPeakRss', name: 'bare node+ws process peak RSS', unit: 'MiB', better: 'lower', scale: 1 / MiB, how: 'VmHWM of the echo server after both transfers' },
    { key: 'durableWriteX3P50Ms', name: 'durable 1 KiB write ×3 p50, 1 writer', unit: 'ms', better: 'lower', how: '3 folders in parallel, each: temp file, fdatasync, rename, folder fsync' },
    { key: 'durableWritesX3PerSec', name: 'durable 1 KiB writes ×3/s, 1 writer', unit: 'ops/s', better: 'higher', how: 'the same, one op at a time' },
    { key: 'durableWritesX3PerSecMany', name: `durable 1 KiB writes ×3/s, ${C} writers`, unit: 'ops/s', better: 'higher', how: `${C} ops at once` },
    { key: 'durableLargeMBps', name: `durable write of ${T} MiB`, unit: 'MB/s', better: 'higher', how: '1 MiB writes, then fsync' },
    { key: 'appendsPerSec', name: 'durable append + fdatasync', unit: 'appends/s', better: 'higher', how: "one create's journal rows (~240 bytes), one at a time" },
  ];
}

export interface LimitRow {
  name: string;
  value: number;
  unit: string;
  how: string;
}

/**
 * The limits the figures are compared with: for each, the better of the rounds. A limit is what
 * the bare machine can do, and on a shared machine the better round is the one less disturbed
 * by others; measuring at the start and the end also brackets the figures in time.
 */
export function bestLimits(plan: Plan, rounds: LimitRound[]): { limits: MachineLimits; rows: LimitRow[] } {
  const limits = {} as MachineLimits;
  const rows = descriptions(plan).map((d) => {
    const all = rounds.map((r) => r.values[d.key]);
    const pick = d.better === 'higher' ? Math.max(...all) : Math.min(...all);
    const chosen = rounds[all.indexOf(pick)]!;
    limits[d.key] = pick;
    const scale = d.scale ?? 1;
    const each = rounds.length > 1 ? `; best of ${all.map((v) => fmt(v * scale)).join(' (start) and ')} (end)` : '';
    const load = chosen.loads[d.key] ? `; ${chosen.loads[d.key]}` : '';
    return { name: d.name, value: pick * scale, unit: d.unit, how: `${d.how}${each}${load}` };
  });
  return { limits, rows };
}
