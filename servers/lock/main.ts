/**
 * The lock service process:
 *   node dist/servers/lock/main.js --port 4040 --host 127.0.0.1 --data DIR --lease-ms 3000
 */
import { COMMON_USAGE, parseServiceArgs } from '../../shared/args.js';
import { createLogger } from '../../shared/log.js';
import { runService } from '../../shared/service.js';
import { serviceTransport } from '../../shared/tls/transport.js';
import { DEFAULT_LIMITS } from './lock-table.js';
import { DEFAULT_LEASE_MS, LockService, MAX_GRACE_MS, MAX_LEASE_MS, MIN_LEASE_MS } from './service.js';

const USAGE = `usage: node dist/servers/lock/main.js [options]

The lock service: per-file FIFO write locks with fencing tokens. Locks belong to a client's
session, which ends when its connection closes or it stops answering pings for the lease. Who
holds what is kept on disk: after a restart, holders have a grace period to reclaim their locks.

${COMMON_USAGE}
  --lease-ms N         drop a silent client and free its locks after N ms
                       (default ${DEFAULT_LEASE_MS}, from ${MIN_LEASE_MS} to ${MAX_LEASE_MS})
  --grace-ms N         after a restart, keep restored locks N ms for their clients to reclaim
                       (default: the lease; 0 to ${MAX_GRACE_MS})
  --max-locks-per-session N
                       locks one session may hold (default ${DEFAULT_LIMITS.maxHeldPerSession})
  --max-waits-per-session N
                       locks one session may wait for at once (default ${DEFAULT_LIMITS.maxWaitsPerSession})

defaults: --port 4040 --data data/lock`;

const args = parseServiceArgs(process.argv.slice(2), {
  usage: USAGE,
  defaultPort: 4040,
  defaultData: 'data/lock',
  extra: {
    'lease-ms': { type: 'string' },
    'grace-ms': { type: 'string' },
    'max-locks-per-session': { type: 'string' },
    'max-waits-per-session': { type: 'string' },
  },
});

/** A whole number flag from min to max, or a usage error (exit 2). */
function numberFlag(flag: string, fallback: number, min: number, max: number): number {
  const value = args.values[flag];
  if (typeof value !== 'string') return fallback;
  const n = Number(value);
  if (/^\d+$/.test(value) && n >= min && n <= max) return n;
  process.stderr.write(`error: --${flag} must be a whole number from ${min} to ${max}, not ${JSON.stringify(value)}\n\n${USAGE}\n`);
  process.exit(2);
}

const leaseMs = numberFlag('lease-ms', DEFAULT_LEASE_MS, MIN_LEASE_MS, MAX_LEASE_MS);
const graceMs = numberFlag('grace-ms', leaseMs, 0, MAX_GRACE_MS);
const maxLocksPerSession = numberFlag('max-locks-per-session', DEFAULT_LIMITS.maxHeldPerSession, 1, 1_000_000);
const maxWaitsPerSession = numberFlag('max-waits-per-session', DEFAULT_LIMITS.maxWaitsPerSession, 1, 100_000);
const log = createLogger('lock', args.logLevel);

await runService(log, async () =>
  LockService.start({
    transport: await serviceTransport(args.transport, { role: 'lock', id: 'lock' }),
    host: args.host,
    port: args.port,
    dataDir: args.data,
    leaseMs,
    graceMs,
    maxLocksPerSession,
    maxWaitsPerSession,
    log,
    connections: args.connections,
    // The journal cannot be written: stop, and let a restart recover from what is on disk.
    onFatal: () => process.exit(1),
  }),
);
