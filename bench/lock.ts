/**
 * The lock service, driven over the RPC layer the way the client library drives it.
 */
import type { TestPki } from '../tests/helpers/tls.js';
import { connect, type RpcConnection } from '../shared/rpc.js';
import type { AcquireResult } from '../shared/protocol.js';
import { cpuCores, cpuNote, drive, machineBusy, machineTicks, ms, p50, perSecond, progress, type Bounds, type Figure, type MachineLoad, type Run } from './measure.js';
import { SECTIONS, type AreaContext } from './plan.js';

const SECTION = SECTIONS.directoryAndLock;

const ACQUIRE_TIMEOUT_MS = 10_000;

async function acquire(conn: RpcConnection, name: string): Promise<number> {
  const res = await conn.call('acquire', { name, timeoutMs: ACQUIRE_TIMEOUT_MS }, { timeoutMs: ACQUIRE_TIMEOUT_MS + 5000 });
  return (res.result as AcquireResult).token;
}

async function release(conn: RpcConnection, name: string, token: number): Promise<void> {
  await conn.call('release', { name, token });
}

/** One client, one name nobody else wants: acquire then release, back to back. */
export async function uncontendedCycles(lockUrl: string, bounds: Bounds, pki: TestPki): Promise<Run> {
  const conn = await connect(lockUrl, { transport: pki.client });
  try {
    await conn.call('hello', { client: 'bench-cycles' });
    const name = 'bench/lock-uncontended';
    return await drive(1, async () => release(conn, name, await acquire(conn, name)), bounds);
  } finally {
    conn.close();
  }
}

export interface HandOffRun {
  /** Release sent → next grant received, in ms. */
  samples: number[];
  grants: number;
  ms: number;
  cpuCores: number;
  machineBusy: MachineLoad;
}

/**
 * `clients` connections contend for one name, each looping acquire → release. With one holder
 * at a time and FIFO grants, every grant after the first follows exactly one release; its
 * hand-off is the time from that release being sent to the grant arriving here. All clients
 * live in this process, so both instants are read on the same clock.
 */
export async function contendedHandOff(lockUrl: string, clients: number, bounds: Bounds, pki: TestPki): Promise<HandOffRun> {
  const conns = await Promise.all(Array.from({ length: clients }, () => connect(lockUrl, { transport: pki.client })));
  const name = 'bench/lock-contended';
  const samples: number[] = [];
  let releaseSentAt: number | null = null;
  let grants = 0;
  const cpu = process.cpuUsage();
  const machine = machineTicks();
  const started = performance.now();
  const deadline = started + bounds.ms;
  try {
    await Promise.all(conns.map((c, i) => c.call('hello', { client: `bench-handoff-${i}` })));
    await Promise.all(
      conns.map(async (conn) => {
        while (grants < bounds.ops && performance.now() < deadline) {
          const token = await acquire(conn, name);
          const now = performance.now();
          grants++;
          if (releaseSentAt !== null) samples.push(now - releaseSentAt);
          releaseSentAt = performance.now();
          await release(conn, name, token);
        }
      }),
    );
  } finally {
    for (const c of conns) c.close();
  }
  const ms = performance.now() - started;
  return { samples, grants, ms, cpuCores: cpuCores(cpu, ms), machineBusy: machineBusy(machine) };
}

export async function lockFigures({ plan, lockUrl, pki }: AreaContext): Promise<Figure[]> {
  const C = plan.clients;
  progress('lock: acquire+release cycles, 1 client');
  await uncontendedCycles(lockUrl, plan.warmup(1), pki);
  const cycles = await uncontendedCycles(lockUrl, plan.timed(1, 20_000), pki);

  progress(`lock: grant hand-off, ${C} clients contending for one name`);
  await contendedHandOff(lockUrl, C, plan.warmup(C), pki);
  const handOff = await contendedHandOff(lockUrl, C, plan.timed(C, 1000), pki);
  return [
    {
      section: SECTION,
      name: 'lock acquire+release, 1 client, uncontended',
      value: perSecond(cycles),
      unit: 'cycles/s',
      limit: (l) => l.roundTripsPerSec / 2,
      limitName: 'bare ws round trips/s ÷ 2 (a cycle is 2 round trips)',
      better: 'higher',
      note: `p50 ${ms(p50(cycles.latencies))}; ${cpuNote(cycles)}`,
    },
    {
      section: SECTION,
      name: `lock grant hand-off p50, ${C} clients on one name`,
      value: p50(handOff.samples),
      unit: 'ms',
      limit: (l) => l.rttP50Ms,
      limitName: 'bare ws round trip p50',
      better: 'lower',
      note: `release sent → next grant received; ${handOff.samples.length} samples; ${cpuNote(handOff)}`,
    },
  ];
}
