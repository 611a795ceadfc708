/**
 * How much each benchmark does (full or --quick), and the limits every area compares against.
 */
import type { TestPki } from '../tests/helpers/tls.js';
import type { Bounds } from './measure.js';

export interface Plan {
  quick: boolean;
  /** Bounds of a timed loop: at most `n` operations per concurrent worker, and a time limit. */
  timed: (workers: number, n: number) => Bounds;
  /** Bounds of the untimed warm-up before each timed loop (JIT, connections, caches). */
  warmup: (workers: number) => Bounds;
  /** Size of the large transfers, limits included. */
  transferMiB: number;
  /** Files already in the directory's table when creates are timed. */
  tableSizes: [number, number];
  creates: number;
  /** Concurrent clients (connections, writers) of the "many clients" figures. */
  clients: number;
}

export const FULL: Plan = {
  quick: false,
  timed: (workers, n) => ({ ops: workers * n, ms: 4000 }),
  // By time: the JIT of three processes (client, directory, file server) takes seconds to
  // settle; a read's p50 falls about 3x over its first 2-3 s.
  warmup: (workers) => ({ ops: workers * 50_000, ms: 3000 }),
  transferMiB: 256,
  tableSizes: [1_000, 100_000],
  creates: 1_000,
  clients: 8,
};

/**
 * Seconds, not minutes: CI runs it on every change so that the benchmark never rots. Its
 * figures are under-warmed (latencies up to ~3x the full run's) and only show it works.
 */
export const QUICK: Plan = {
  quick: true,
  timed: (workers, n) => ({ ops: workers * Math.ceil(n / 10), ms: 500 }),
  warmup: (workers) => ({ ops: workers * 5000, ms: 400 }),
  transferMiB: 32,
  tableSizes: [1_000, 10_000],
  creates: 300,
  clients: 8,
};

/** The machine's limits, measured at the start of the same run (bench/limits.ts). */
export interface MachineLimits {
  rttP50Ms: number;
  roundTripsPerSec: number;
  /** With `clients` connections at once. */
  roundTripsPerSecMany: number;
  upMBps: number;
  downMBps: number;
  /** Peak RSS of the bare echo server after the transfers, bytes. */
  bareProcessPeakRss: number;
  durableWriteX3P50Ms: number;
  durableWritesX3PerSec: number;
  durableWritesX3PerSecMany: number;
  durableLargeMBps: number;
  appendsPerSec: number;
}

/** What an area's benchmarks get: the plan and the running cluster. */
export interface AreaContext {
  plan: Plan;
  directoryUrl: string;
  lockUrl: string;
  /** The cluster's CA and certificates: what the bench's clients (and stand-ins) connect with. */
  pki: TestPki;
  fileServers: Array<{ id: string; pid: number }>;
}

/** Table sections, one per issue area. */
export const SECTIONS = { directoryAndLock: 'directory and lock', files: 'file servers and client', failover: 'failover and re-replication' } as const;
