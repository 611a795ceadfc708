/**
 * The lock service process:
 *   node dist/servers/lock/main.js --port 4040 --host 127.0.0.1 --data DIR --lease-ms 3000
 */
import { COMMON_USAGE, parseServiceArgs } from '../../shared/args.js';
import { createLogger } from '../../shared/log.js';
import { runService } from '../../shared/service.js';
import { DEFAULT_LEASE_MS, LockService, MAX_LEASE_MS, MIN_LEASE_MS } from './service.js';

const USAGE = `usage: node dist/servers/lock/main.js [options]

The lock service: per-file FIFO write locks with fencing tokens. Locks belong to a client's
connection and are freed when it closes or stops answering pings for the lease.

${COMMON_USAGE}
  --lease-ms N         drop a silent client and free its locks after N ms
                       (default ${DEFAULT_LEASE_MS}, from ${MIN_LEASE_MS} to ${MAX_LEASE_MS})

defaults: --port 4040 --data data/lock`;

const args = parseServiceArgs(process.argv.slice(2), {
  usage: USAGE,
  defaultPort: 4040,
  defaultData: 'data/lock',
  extra: { 'lease-ms': { type: 'string' } },
});

function leaseFrom(value: string | boolean | undefined): number {
  if (typeof value !== 'string') return DEFAULT_LEASE_MS;
  const leaseMs = Number(value);
  if (/^\d+$/.test(value) && leaseMs >= MIN_LEASE_MS && leaseMs <= MAX_LEASE_MS) return leaseMs;
  process.stderr.write(`error: --lease-ms must be a whole number of milliseconds from ${MIN_LEASE_MS} to ${MAX_LEASE_MS}, not ${JSON.stringify(value)}\n\n${USAGE}\n`);
  process.exit(2);
}

const leaseMs = leaseFrom(args.values['lease-ms']);
const log = createLogger('lock', args.logLevel);

await runService(log, () => LockService.start({ host: args.host, port: args.port, dataDir: args.data, leaseMs, log, connections: args.connections }));
