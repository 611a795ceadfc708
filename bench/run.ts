/**
 * `npm run bench [-- --quick] [-- --json PATH]`: measures the service and, in the same run, the
 * machine's limits for the same work, and prints each figure beside its limit as a ratio.
 *
 * The machine is shared and noisy, which is why no figure stands alone: a limit measured at
 * another time would make the ratio meaningless. Processes are started the way the integration
 * tests start them (tests/helpers), on 127.0.0.1 and free ports, in temp folders, and stopped
 * by PID at the end whatever happens.
 */
import { arch, cpus, loadavg, platform, totalmem } from 'node:os';
import { writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { Cluster } from '../tests/helpers/cluster.js';
import { stopAll } from '../tests/helpers/process.js';
import { bestLimits, measureLimits, type LimitRow } from './limits.js';
import { lockFigures } from './lock.js';
import { directoryFigures } from './directory.js';
import { failoverFigures } from './failover.js';
import { fileFigures } from './files.js';
import { fmt, progress, resolve, type Result } from './measure.js';
import { FULL, QUICK, type AreaContext } from './plan.js';

const USAGE = `usage: npm run bench [-- --quick] [-- --json PATH]

Measures the service and the machine's own limits in the same run, and prints each figure
beside its limit.

  --quick       a small version that finishes in seconds (what CI runs)
  --json PATH   also write the figures to PATH as a JSON array of
                {name, value, unit, limit, limitName, ratio}
  -h, --help    show this help`;

const RATIO_RULE =
  "ratio = fraction of the machine's limit achieved: figure/limit for rates, limit/figure for latencies and memory (1.00 = as good as the bare machine; above 1 = better than the naive limit)";

function table(rows: string[][], rightAligned: Set<number>): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((cell, i) => (rightAligned.has(i) ? cell.padStart(widths[i]!) : cell.padEnd(widths[i]!))).join('  ').trimEnd()).join('\n');
}

function report(limits: LimitRow[], figures: Result[]): string {
  const out = ['', 'machine limits (measured in this run)'];
  out.push(table([['limit', 'value', 'unit', 'how'], ...limits.map((l) => [l.name, fmt(l.value), l.unit, l.how])], new Set([1])));
  out.push('', RATIO_RULE);
  for (const section of new Set(figures.map((f) => f.section))) {
    const rows = figures.filter((f) => f.section === section).map((f) => [f.name, fmt(f.value), f.unit, fmt(f.limit), f.limitName, fmt(f.ratio), f.note]);
    out.push('', section, table([['figure', 'value', 'unit', 'limit', 'limit is', 'ratio', 'note'], ...rows], new Set([1, 3, 5])));
  }
  return out.join('\n') + '\n';
}

/** Stops whatever is running; runs once, at the end or on a signal. */
const cleanups: Array<() => Promise<void>> = [];
async function cleanUp(): Promise<void> {
  for (const fn of cleanups.splice(0).reverse()) {
    await fn().catch((err: unknown) => progress(`cleanup failed: ${err instanceof Error ? err.message : String(err)}`));
  }
  await stopAll(); // anything tests/helpers/process.ts started and is still running
}

async function main(): Promise<void> {
  let values: { quick?: boolean; json?: string; help?: boolean };
  try {
    ({ values } = parseArgs({ options: { quick: { type: 'boolean' }, json: { type: 'string' }, help: { type: 'boolean', short: 'h' } }, strict: true }));
  } catch (err) {
    process.stderr.write(`error: ${(err as Error).message}\n\n${USAGE}\n`);
    process.exitCode = 2;
    return;
  }
  if (values.help) {
    process.stdout.write(USAGE + '\n');
    return;
  }
  const plan = values.quick ? QUICK : FULL;
  const cpu = cpus();
  process.stdout.write(
    `dfs benchmark${plan.quick ? ' --quick' : ''}: ${cpu.length} cpus (${cpu[0]?.model.trim() ?? 'unknown'}), ${(totalmem() / 2 ** 30).toFixed(0)} GiB, ` +
      `node ${process.version}, ${platform()} ${arch()}, load average ${loadavg().map((x) => x.toFixed(2)).join(' ')}\n`,
  );

  const first = await measureLimits(plan, 'start');

  progress('starting a cluster: lock service, directory, 3 file servers (replication 3)');
  const cluster = await Cluster.start({ fileServers: 3, replication: 3, downAfterMs: 3000 });
  cleanups.push(() => cluster.stop());
  const context: AreaContext = {
    plan,
    directoryUrl: cluster.directoryUrl,
    lockUrl: cluster.lockUrl,
    pki: cluster.pki,
    fileServers: cluster.servers.map((s) => ({ id: s.id, pid: s.proc.pid })),
  };
  const figures = [...(await lockFigures(context)), ...(await directoryFigures(context)), ...(await fileFigures(context))];

  progress('stopping the cluster');
  await cleanUp();
  // Clusters of their own: these kill and drain servers.
  figures.push(...(await failoverFigures(plan)));
  await cleanUp();
  // Measured again at the end, with nothing of ours running, and the better of the two kept.
  const { limits, rows } = bestLimits(plan, [first, await measureLimits(plan, 'end')]);
  const results = figures.map((f) => resolve(f, limits));
  process.stdout.write(report(rows, results));
  if (values.json !== undefined) {
    const json = results.map(({ name, value, unit, limit, limitName, ratio }) => ({ name, value, unit, limit, limitName, ratio }));
    await writeFile(values.json, JSON.stringify(json, null, 2) + '\n');
    progress(`wrote ${json.length} figures to ${values.json}`);
  }
  progress('done');
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    progress(`${signal}: stopping every process this run started`);
    void cleanUp().finally(() => process.exit(130));
  });
}

try {
  await main();
} catch (err) {
  process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  await cleanUp();
  process.exitCode = 1;
}
