/**
 * Command-line parsing for the services, on node:util's parseArgs. A usage error prints one
 * line and the usage, and exits 2; --help prints the usage and exits 0.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { isLogLevel, type LogLevel } from './log.js';
import type { TransportFlags } from './tls/transport.js';

type OptionSpec = NonNullable<ParseArgsConfig['options']>;

/** How many sockets a service holds at once, and how long a handshake may take (shared/rpc/server.ts). */
export interface ConnectionLimits {
  maxConnections?: number;
  handshakeTimeoutMs?: number;
}

export interface ServiceArgs {
  host: string;
  port: number;
  data: string;
  logLevel: LogLevel;
  connections: ConnectionLimits;
  /** --ca, --cert, --key (defaults $DFS_CA, $DFS_CERT, $DFS_KEY) and --insecure. */
  transport: TransportFlags;
  values: Record<string, string | boolean | undefined>;
}

export class UsageError extends Error {}

export function parsePort(text: string, flag: string): number {
  const port = Number(text);
  if (!/^\d+$/.test(text) || !Number.isInteger(port) || port < 0 || port > 65535) throw new UsageError(`${flag} must be a port number from 0 to 65535, not ${JSON.stringify(text)}`);
  return port;
}

export function parsePositiveInt(text: string, flag: string, max = Number.MAX_SAFE_INTEGER): number {
  const value = Number(text);
  if (!/^\d+$/.test(text) || value < 1 || value > max) throw new UsageError(`${flag} must be a whole number from 1 to ${max}, not ${JSON.stringify(text)}`);
  return value;
}

const common: OptionSpec = {
  host: { type: 'string' },
  port: { type: 'string' },
  data: { type: 'string' },
  'log-level': { type: 'string' },
  'max-connections': { type: 'string' },
  'handshake-timeout-ms': { type: 'string' },
  verbose: { type: 'boolean', short: 'v' },
  quiet: { type: 'boolean', short: 'q' },
  ca: { type: 'string' },
  cert: { type: 'string' },
  key: { type: 'string' },
  insecure: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
};

export const COMMON_USAGE = `  --host HOST          address to listen on (default 127.0.0.1)
  --port N             port to listen on (0 picks a free one)
  --data DIR           folder for this service's state
  --log-level LEVEL    error, warn, info (default) or debug
  -v, --verbose        same as --log-level debug
  -q, --quiet          same as --log-level warn
  --max-connections N  sockets held at once; more are refused (default: the open-file
                       limit less 128, at most 10000)
  --handshake-timeout-ms N
                       drop a connection whose WebSocket handshake takes longer (default 5000)
  --ca FILE            the cluster CA certificate (default $DFS_CA)
  --cert FILE          this service's certificate from that CA (default $DFS_CERT)
  --key FILE           its private key (default $DFS_KEY); npm start makes all three
                       under DATA/tls, and npm run cert -- issue one for another machine
  --insecure           plain ws:// without TLS: traffic readable on the network and
                       services believed on their word (every process must have it)`;

/**
 * Parses the common service flags plus `extra`. Exits the process on --help or a usage error,
 * since this runs only in a service's main.
 */
export function parseServiceArgs(argv: string[], spec: { usage: string; defaultPort: number; defaultData: string; extra?: OptionSpec }): ServiceArgs {
  try {
    const { values, positionals } = parseArgs({ args: argv, options: { ...common, ...(spec.extra ?? {}) }, strict: true, allowPositionals: true });
    if (values.help) {
      process.stdout.write(spec.usage + '\n');
      process.exit(0);
    }
    if (positionals.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])}`);
    let logLevel: LogLevel = 'info';
    if (values.verbose) logLevel = 'debug';
    if (values.quiet) logLevel = 'warn';
    const level = values['log-level'];
    if (typeof level === 'string') {
      if (!isLogLevel(level)) throw new UsageError(`--log-level must be error, warn, info or debug, not ${JSON.stringify(level)}`);
      logLevel = level;
    }
    const connections: ConnectionLimits = {};
    if (typeof values['max-connections'] === 'string') connections.maxConnections = parsePositiveInt(values['max-connections'], '--max-connections', 1_000_000);
    if (typeof values['handshake-timeout-ms'] === 'string') connections.handshakeTimeoutMs = parsePositiveInt(values['handshake-timeout-ms'], '--handshake-timeout-ms', 600_000);
    const fromEnv = (name: string) => process.env[name] || undefined;
    const transport: TransportFlags = values.insecure
      ? { insecure: true, ca: values.ca as string | undefined, cert: values.cert as string | undefined, key: values.key as string | undefined }
      : { ca: (values.ca as string | undefined) ?? fromEnv('DFS_CA'), cert: (values.cert as string | undefined) ?? fromEnv('DFS_CERT'), key: (values.key as string | undefined) ?? fromEnv('DFS_KEY') };
    return {
      connections,
      transport,
      host: typeof values.host === 'string' ? values.host : '127.0.0.1',
      port: typeof values.port === 'string' ? parsePort(values.port, '--port') : spec.defaultPort,
      data: typeof values.data === 'string' ? values.data : spec.defaultData,
      logLevel,
      values: values as Record<string, string | boolean | undefined>,
    };
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`error: ${message}\n\n${spec.usage}\n`);
    process.exit(2);
  }
}
