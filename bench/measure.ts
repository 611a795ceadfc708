/**
 * What every benchmark shares: bounded request loops, percentiles, figures and progress lines.
 *
 * Every loop stops at whichever comes first, a count or a time, so a slow or noisy machine
 * makes a figure less precise but never makes the run hang.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import type { MachineLimits } from './plan.js';

export interface Bounds {
  /** Most operations started, over all workers. */
  ops: number;
  /** Most wall time, in milliseconds; no operation starts after it. */
  ms: number;
}

export interface Run {
  ops: number;
  ms: number;
  /** One latency per operation, in milliseconds (performance.now()). */
  latencies: number[];
  /** CPU time of this (the benchmark's) process during the run, in cores (1 = one core busy). */
  cpuCores: number;
  /** How busy the whole machine was during the run, and how much of that was this run's processes. */
  machineBusy: MachineLoad;
}

export const perSecond = (run: Run): number => (run.ms > 0 ? (run.ops * 1000) / run.ms : 0);

/**
 * Runs `workers` loops of `op` at once until the bounds are reached; op gets (worker, i) where i
 * counts that worker's operations. Latency is measured around each call.
 */
export async function drive(workers: number, op: (worker: number, i: number) => Promise<unknown>, bounds: Bounds): Promise<Run> {
  const latencies: number[] = [];
  let started = 0;
  const cpu = process.cpuUsage();
  const machine = machineTicks();
  const t0 = performance.now();
  const deadline = t0 + bounds.ms;
  const loop = async (worker: number) => {
    for (let i = 0; started < bounds.ops && performance.now() < deadline; i++) {
      started++;
      const begin = performance.now();
      await op(worker, i);
      latencies.push(performance.now() - begin);
    }
  };
  await Promise.all(Array.from({ length: workers }, (_, w) => loop(w)));
  const ms = performance.now() - t0;
  return { ops: latencies.length, ms, latencies, cpuCores: cpuCores(cpu, ms), machineBusy: machineBusy(machine) };
}

interface Ticks {
  idle: number;
  total: number;
  /** CPU time of this process, its live children and its reaped children. */
  ours: number;
}

/** Fields of /proc/PID/stat after the command name: [state, ppid, ...]; utime is [11], stime [12]. */
function statFields(pid: number | 'self'): string[] | null {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return text.slice(text.lastIndexOf(')') + 2).split(' ');
  } catch {
    return null;
  }
}

/**
 * CPU time counters (Linux /proc, in clock ticks): the machine's, and ours, that is this process
 * and the processes it started (the cluster, the echo server, the transfer client). Zeros
 * where /proc is missing.
 */
export function machineTicks(): Ticks {
  try {
    const fields = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
    const self = statFields('self');
    let ours = self ? Number(self[11]) + Number(self[12]) + Number(self[13]) + Number(self[14]) : 0;
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      const child = statFields(Number(entry));
      if (child && Number(child[1]) === process.pid) ours += Number(child[11]) + Number(child[12]);
    }
    return { idle: (fields[3] ?? 0) + (fields[4] ?? 0), total: fields.reduce((a, b) => a + b, 0), ours };
  } catch {
    return { idle: 0, total: 0, ours: 0 };
  }
}

export interface MachineLoad {
  /** Fraction of all cores busy (NaN when unknown). */
  busy: number;
  /** Fraction of all cores used by this run's processes; the rest of `busy` is everyone else and the kernel. */
  ours: number;
}

export function machineBusy(since: Ticks): MachineLoad {
  const now = machineTicks();
  const total = now.total - since.total;
  // Under ~50 clock ticks (a quarter second on 2 cores) the split says nothing.
  if (!(total >= 50)) return { busy: Number.NaN, ours: Number.NaN };
  const busy = 1 - (now.idle - since.idle) / total;
  // Both count 10 ms ticks, from different sources: over short runs ours can come out above busy.
  return { busy, ours: Math.min(busy, (now.ours - since.ours) / total) };
}

export function cpuCores(since: NodeJS.CpuUsage, wallMs: number): number {
  const used = process.cpuUsage(since);
  return wallMs > 0 ? (used.user + used.system) / 1000 / wallMs : 0;
}

/** The p-th percentile (0-100) by nearest rank; NaN for no samples. */
export function percentile(samples: readonly number[], p: number): number {
  if (samples.length === 0) return Number.NaN;
  const sorted = Float64Array.from(samples).sort();
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank]!;
}

export const p50 = (samples: readonly number[]): number => percentile(samples, 50);

/** Higher-is-better figures (rates) get figure/limit; lower-is-better (latency, memory) limit/figure. */
export type Better = 'higher' | 'lower';

export interface Figure {
  section: string;
  name: string;
  value: number;
  unit: string;
  /** Its limit, from the machine's limits of this run (known only once the run ends). */
  limit: (limits: MachineLimits) => number;
  /** What the limit is. */
  limitName: string | ((limits: MachineLimits) => string);
  better: Better;
  /** Anything a reader needs to judge the figure (sample count, client CPU...). */
  note?: string;
}

/** A figure beside its limit, as printed and written to JSON. */
export interface Result {
  section: string;
  name: string;
  value: number;
  unit: string;
  limit: number;
  limitName: string;
  /** Fraction of the machine's limit achieved: 1 means as good as the bare machine. */
  ratio: number;
  note: string;
}

export function resolve(f: Figure, limits: MachineLimits): Result {
  const limit = f.limit(limits);
  const ratio = !(f.value > 0) || !(limit > 0) ? Number.NaN : f.better === 'higher' ? f.value / limit : limit / f.value;
  const limitName = typeof f.limitName === 'string' ? f.limitName : f.limitName(limits);
  return { section: f.section, name: f.name, value: f.value, unit: f.unit, limit, limitName, ratio, note: f.note ?? '' };
}

/** One line per benchmark on stderr, so a person sees the run moving (stdout keeps the table). */
const runStarted = performance.now();
export function progress(message: string): void {
  const s = ((performance.now() - runStarted) / 1000).toFixed(1).padStart(6);
  process.stderr.write(`[bench ${s}s] ${message}\n`);
}

/** Peak resident memory (VmHWM) of a process, in bytes; 0 if it cannot be read. */
export async function peakRss(pid: number | 'self'): Promise<number> {
  try {
    const text = await readFile(`/proc/${pid}/status`, 'utf8');
    const match = /VmHWM:\s+(\d+) kB/.exec(text);
    return match ? Number(match[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/**
 * Resets a process's peak resident memory to its current resident memory (Linux: "5" to
 * /proc/PID/clear_refs), so that a later VmHWM covers only what runs in between. False if the
 * kernel refused (then the peak covers the process's whole life, which we say in the table).
 */
export async function resetPeakRss(pid: number): Promise<boolean> {
  try {
    await writeFile(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

export const MiB = 1 << 20;
export const mbPerSecond = (bytes: number, ms: number): number => (ms > 0 ? bytes / 1e6 / (ms / 1000) : 0);

// ------------------------------------------------------------------ formatting for notes and tables

export function fmt(value: number): string {
  if (!Number.isFinite(value)) return '-';
  const a = Math.abs(value);
  const digits = a >= 100 ? 0 : a >= 10 ? 1 : a >= 1 ? 2 : 3;
  return value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

export const ms = (x: number): string => `${fmt(x)} ms`;
const pct = (x: number) => (Number.isFinite(x) ? `${Math.round(x * 100)}%` : '?');

/** "machine 80% busy (this run's processes 70%)": the rest was someone else, or the kernel. */
export const loadNote = (load: MachineLoad): string => `machine ${pct(load.busy)} busy (this run's processes ${pct(load.ours)})`;

/** Where the CPU went during a run: this process (the clients) and the whole machine. */
export const cpuNote = (run: { cpuCores: number; machineBusy: MachineLoad }): string =>
  `CPU: bench process ${run.cpuCores.toFixed(2)} cores${Number.isFinite(run.machineBusy.busy) ? `, ${loadNote(run.machineBusy)}` : ''}`;
