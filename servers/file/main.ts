/** Entry point: `npm run file-server -- --id fs-1 --port 12001 --data data/fs-1 --directory ws://127.0.0.1:9090`. */
import './threadpool.js';
import { COMMON_USAGE, parsePositiveInt, parseServiceArgs } from '../../shared/args.js';
import { createLogger } from '../../shared/log.js';
import { serverId } from '../../shared/protocol.js';
import { runService } from '../../shared/service.js';
import { checkScheme, serviceTransport } from '../../shared/tls/transport.js';
import { DEFAULT_COPY_RATE_BYTES_PER_SEC, DEFAULT_REPLICA_TIMEOUT_MS, DEFAULT_STALL_TIMEOUT_MS, FileServer } from './service.js';

const usage = `usage: npm run file-server -- [options]

A file server: stores files durably, as primary for some and replica for others.

  --id ID              this server's id, unique in the cluster (default fs-<port>)
  --directory URL      the directory service (default $DFS_DIRECTORY or wss://127.0.0.1:9090)
  --advertise URL      the URL others use to reach this server (default wss://host:port)
  --max-file-bytes N   largest file accepted (default 8 GiB)
  --stall-timeout-ms N abort a write whose stream delivers nothing for N ms (default ${DEFAULT_STALL_TIMEOUT_MS})
  --replica-timeout-ms N
                       drop a replica that does not answer for N ms from a write, and mark
                       it behind (default ${DEFAULT_REPLICA_TIMEOUT_MS})
  --copy-rate-mb-s N   how fast catch-up and re-replication may copy files in, in MiB/s,
                       so that clients go on being served (default ${DEFAULT_COPY_RATE_BYTES_PER_SEC >> 20}; 0: no limit)
${COMMON_USAGE}
  (defaults: --port 12001, --data data/<id>)`;

const args = parseServiceArgs(process.argv.slice(2), {
  usage,
  defaultPort: 12001,
  defaultData: '',
  extra: {
    id: { type: 'string' },
    directory: { type: 'string' },
    advertise: { type: 'string' },
    'max-file-bytes': { type: 'string' },
    'stall-timeout-ms': { type: 'string' },
    'replica-timeout-ms': { type: 'string' },
    'copy-rate-mb-s': { type: 'string' },
  },
});

const id = typeof args.values.id === 'string' ? args.values.id : `fs-${args.port}`;
if (!serverId.safeParse(id).success) {
  process.stderr.write(`error: --id must be 1-32 letters, digits, "_", "." or "-", not ${JSON.stringify(id)}\n`);
  process.exit(2);
}
let maxFileBytes = 8 * 1024 ** 3;
let stallTimeoutMs = DEFAULT_STALL_TIMEOUT_MS;
let replicaTimeoutMs = DEFAULT_REPLICA_TIMEOUT_MS;
let copyRateBytesPerSec = DEFAULT_COPY_RATE_BYTES_PER_SEC;
try {
  if (typeof args.values['max-file-bytes'] === 'string') maxFileBytes = parsePositiveInt(args.values['max-file-bytes'], '--max-file-bytes');
  if (typeof args.values['stall-timeout-ms'] === 'string') stallTimeoutMs = parsePositiveInt(args.values['stall-timeout-ms'], '--stall-timeout-ms', 3_600_000);
  if (typeof args.values['replica-timeout-ms'] === 'string') replicaTimeoutMs = parsePositiveInt(args.values['replica-timeout-ms'], '--replica-timeout-ms', 600_000);
  const rate = args.values['copy-rate-mb-s'];
  if (typeof rate === 'string') {
    if (!/^\d+$/.test(rate) || Number(rate) > 1 << 20) throw new Error(`--copy-rate-mb-s must be a whole number of MiB/s (0 for no limit), not ${JSON.stringify(rate)}`);
    copyRateBytesPerSec = Number(rate) * (1 << 20);
  }
} catch (err) {
  process.stderr.write(`error: ${(err as Error).message}\n`);
  process.exit(2);
}
try {
  for (const url of [directoryUrlFlag(), args.values.advertise]) if (typeof url === 'string') checkScheme(url, { kind: args.transport.insecure ? 'insecure' : 'tls' });
} catch (err) {
  process.stderr.write(`error: ${(err as Error).message}\n`);
  process.exit(2);
}
function directoryUrlFlag(): string | undefined {
  return typeof args.values.directory === 'string' ? args.values.directory : process.env.DFS_DIRECTORY;
}
const log = createLogger(id, args.logLevel);
const directoryUrl = typeof args.values.directory === 'string' ? args.values.directory : (process.env.DFS_DIRECTORY ?? `${args.transport.insecure ? 'ws' : 'wss'}://127.0.0.1:9090`);

await runService(log, async () =>
  FileServer.start({
    transport: await serviceTransport(args.transport, { role: 'file-server', id }),
    id,
    host: args.host,
    port: args.port,
    advertiseUrl: typeof args.values.advertise === 'string' ? args.values.advertise : undefined,
    directoryUrl,
    dataDir: args.data || `data/${id}`,
    maxFileBytes,
    stallTimeoutMs,
    replicaTimeoutMs,
    copyRateBytesPerSec,
    log,
    connections: args.connections,
  }),
);
