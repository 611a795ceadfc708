/**
 * `node dist/servers/directory/main.js [flags]`: runs the directory service until SIGINT/SIGTERM.
 */
import { COMMON_USAGE, UsageError, parsePositiveInt, parseServiceArgs } from '../../shared/args.js';
import { createLogger } from '../../shared/log.js';
import { wsUrl } from '../../shared/protocol.js';
import { runService } from '../../shared/service.js';
import { checkScheme, serviceTransport } from '../../shared/tls/transport.js';
import { DEFAULT_DOWN_AFTER_MS, DEFAULT_REPLICATION } from './cluster.js';
import { DEFAULT_REPLACE_AFTER_MS } from './rereplication.js';
import { startDirectory } from './service.js';

const DEFAULT_PORT = 9090;
const DEFAULT_DATA = 'data/directory';
const DEFAULT_LOCK_URL = 'wss://127.0.0.1:4040';

const USAGE = `usage: node dist/servers/directory/main.js [flags]

The directory service: maps file names to the file servers holding them (the primary for
writes, replicas round-robin for reads), in a CSV table under --data, and tracks which file
servers are up.

flags (here --port defaults to ${DEFAULT_PORT} and --data to ${DEFAULT_DATA}):
${COMMON_USAGE}
  --lock URL           the lock service's wss:// URL, handed to clients
                       (default $DFS_LOCK_URL, else ${DEFAULT_LOCK_URL})
  --replication N      copies of each new file, primary included (default ${DEFAULT_REPLICATION})
  --down-after-ms N    a file server silent this long is marked down (default ${DEFAULT_DOWN_AFTER_MS})
  --failover-after-ms N
                       a primary silent this long is replaced by an in-sync replica
                       (default: the --down-after-ms value)
  --replace-after-ms N a server silent this long has its copies made again on other
                       servers (default ${DEFAULT_REPLACE_AFTER_MS}, five minutes)
  -h, --help           show this help`;

const args = parseServiceArgs(process.argv.slice(2), {
  usage: USAGE,
  defaultPort: DEFAULT_PORT,
  defaultData: DEFAULT_DATA,
  extra: {
    lock: { type: 'string' },
    replication: { type: 'string' },
    'down-after-ms': { type: 'string' },
    'failover-after-ms': { type: 'string' },
    'replace-after-ms': { type: 'string' },
  },
});

function settings(): { lockUrl: string; replication: number; downAfterMs: number; failoverAfterMs: number; replaceAfterMs: number } {
  const { values } = args;
  const fallback = args.transport.insecure ? DEFAULT_LOCK_URL.replace('wss:', 'ws:') : DEFAULT_LOCK_URL;
  const lockUrl = typeof values.lock === 'string' ? values.lock : (process.env.DFS_LOCK_URL ?? fallback);
  if (!wsUrl.safeParse(lockUrl).success) throw new UsageError(`--lock must be a wss://host:port URL, not ${JSON.stringify(lockUrl)}`);
  checkScheme(lockUrl, { kind: args.transport.insecure ? 'insecure' : 'tls' });
  const replication = typeof values.replication === 'string' ? parsePositiveInt(values.replication, '--replication', 16) : DEFAULT_REPLICATION;
  const downAfterMs = typeof values['down-after-ms'] === 'string' ? parsePositiveInt(values['down-after-ms'], '--down-after-ms', 3_600_000) : DEFAULT_DOWN_AFTER_MS;
  const failoverAfterMs = typeof values['failover-after-ms'] === 'string' ? parsePositiveInt(values['failover-after-ms'], '--failover-after-ms', 86_400_000) : downAfterMs;
  const replaceAfterMs = typeof values['replace-after-ms'] === 'string' ? parsePositiveInt(values['replace-after-ms'], '--replace-after-ms', 30 * 86_400_000) : DEFAULT_REPLACE_AFTER_MS;
  return { lockUrl, replication, downAfterMs, failoverAfterMs, replaceAfterMs };
}

let extra: ReturnType<typeof settings>;
try {
  extra = settings();
} catch (err) {
  process.stderr.write(`error: ${(err as Error).message}\n\n${USAGE}\n`);
  process.exit(2);
}

const log = createLogger('directory', args.logLevel);

await runService(log, async () =>
  startDirectory({
    transport: await serviceTransport(args.transport, { role: 'directory', id: 'directory' }),
    host: args.host,
    port: args.port,
    dataDir: args.data,
    connections: args.connections,
    ...extra,
    log,
    onFatal: (err) => {
      log.error('the file table cannot be saved; exiting so that a restart recovers it from disk', { error: err.message });
      process.exit(1);
    },
  }),
);
