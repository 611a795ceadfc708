/**
 * `npm start`: a whole cluster on this machine, in the foreground. Starts the lock service, the
 * directory service and the file servers as child processes, waits until every one answers and
 * every file server is up and in sync, prints their URLs and `ready`, then shows their log lines
 * prefixed with their names. A service that dies is reported at once (and restarted with
 * backoff under --restart). Ctrl-C or SIGTERM stops the file servers, then the directory, then
 * the lock service (SIGTERM by PID, SIGKILL after a timeout) and exits 0.
 *
 * Children run in process groups of their own, so that a Ctrl-C at the terminal reaches only
 * this script, which then stops them in order instead of all at once.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { hostname } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { writeFileDurably } from './shared/durable.js';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { table } from './client/format.js';
import { isLogLevel, type LogLevel } from './shared/log.js';
import type { StatusResult } from './shared/protocol.js';
import { connect } from './shared/rpc.js';
import { CA_CERT_FILE, certPaths, defaultHosts, ensureCa, ensureServiceCert } from './shared/tls/certs.js';
import type { ServiceIdentity } from './shared/tls/identity.js';
import type { Transport } from './shared/tls/transport.js';
import { knownCaPath } from './client/credentials.js';

const DIST = dirname(fileURLToPath(import.meta.url));
const LISTEN_TIMEOUT_MS = 15_000;
const IN_SYNC_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 10_000;
/** A service that stayed up this long before dying starts its backoff afresh. */
const STABLE_AFTER_MS = 30_000;
const MAX_BACKOFF_MS = 30_000;

const USAGE = `usage: npm start -- [options]     (or: node dist/start.js [options])

Starts a whole dfs cluster on this machine: the lock service, the directory service and the
file servers, each a child process, with their state under --data. Stays in the foreground
showing their logs; Ctrl-C stops everything.

options:
  --data DIR               where the services keep their state (default data):
                           DIR/lock, DIR/directory, DIR/fs-1, DIR/fs-2...
  --lock-port N            the lock service's port (default 4040)
  --directory-port N       the directory service's port (default 9090)
  --file-ports A,B,C       one file server per port, ids fs-1, fs-2... (default 12001,12002,12003)
  --replication R          copies of each new file, primary included (default 3, or fewer
                           when there are fewer file servers)
  --restart                restart a service that dies, with backoff (1 s doubling up to 30 s)
  --host HOST              address to listen on (default 127.0.0.1; 0.0.0.0 to serve other
                           machines, which then reach this one by its host name)
  --log-level LEVEL        error, warn, info (default) or debug, for every service
  --insecure               plain ws:// without TLS or certificates (traffic readable on the
                           network, services believed on their word): for debugging only
  -h, --help               show this help

Security: on first start a cluster CA and a certificate per service are made in DIR/tls, and
every connection is TLS (wss://); services prove who they are to each other with those
certificates. Clients on this machine find the CA by themselves; elsewhere give them
DIR/tls/ca.crt with --ca or DFS_CA. npm run cert -- issue ID --host HOST makes the
certificate of a file server on another machine.`;

class UsageError extends Error {}

interface Settings {
  data: string;
  host: string;
  /** The host name put in the URLs handed to clients. */
  publicHost: string;
  lockPort: number;
  directoryPort: number;
  filePorts: number[];
  replication: number;
  restart: boolean;
  logLevel: LogLevel;
  insecure: boolean;
}

function port(text: string, flag: string): number {
  const value = Number(text);
  if (!/^\d+$/.test(text) || value < 1 || value > 65535) throw new UsageError(`${flag} must be a port number from 1 to 65535, not ${JSON.stringify(text)}`);
  return value;
}

function parseSettings(argv: string[]): Settings | 'help' {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: {
      data: { type: 'string' },
      'lock-port': { type: 'string' },
      'directory-port': { type: 'string' },
      'file-ports': { type: 'string' },
      replication: { type: 'string' },
      restart: { type: 'boolean' },
      host: { type: 'string' },
      'log-level': { type: 'string' },
      insecure: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return 'help';
  if (positionals.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])}`);
  const filePorts = (values['file-ports'] ?? '12001,12002,12003').split(',').map((p) => port(p.trim(), '--file-ports'));
  const lockPort = port(values['lock-port'] ?? '4040', '--lock-port');
  const directoryPort = port(values['directory-port'] ?? '9090', '--directory-port');
  const all = [lockPort, directoryPort, ...filePorts];
  const repeated = all.find((p, i) => all.indexOf(p) !== i);
  if (repeated !== undefined) throw new UsageError(`port ${repeated} is given to two services; every service needs a port of its own`);
  const replication = values.replication === undefined ? Math.min(3, filePorts.length) : Number(values.replication);
  if (!Number.isInteger(replication) || replication < 1 || replication > filePorts.length) {
    throw new UsageError(`--replication must be a whole number from 1 to the number of file servers (${filePorts.length}), not ${JSON.stringify(values.replication)}`);
  }
  const logLevel = values['log-level'] ?? 'info';
  if (!isLogLevel(logLevel)) throw new UsageError(`--log-level must be error, warn, info or debug, not ${JSON.stringify(logLevel)}`);
  const host = values.host ?? '127.0.0.1';
  return {
    data: values.data ?? 'data',
    host,
    publicHost: host === '0.0.0.0' || host === '::' ? hostname() : host,
    lockPort,
    directoryPort,
    filePorts,
    replication,
    restart: values.restart === true,
    logLevel,
    insecure: values.insecure === true,
  };
}

// ------------------------------------------------------------------ output

const colourful = process.stdout.isTTY === true && !process.env.NO_COLOR;
const PALETTE = ['36', '35', '32', '33', '34', '96', '92', '93', '94', '95'];
const paint = (code: string, text: string) => (colourful ? `\x1b[${code}m${text}\x1b[0m` : text);

class Output {
  private width = 'start'.length;

  widen(name: string): void {
    this.width = Math.max(this.width, name.length);
  }

  line(name: string, colour: string, text: string): void {
    process.stdout.write(`${paint(colour, name.padEnd(this.width))} | ${text}\n`);
  }

  say(text: string): void {
    this.line('start', '1', text);
  }

  warn(text: string): void {
    this.line('start', '1', paint('31', text));
  }
}

// ------------------------------------------------------------------ one service

interface ServiceSpec {
  name: string;
  script: string;
  args: string[];
  port: number;
  /** The start.ts flag that sets this port, for error messages. */
  portFlag: string;
  data: string;
}

class Service {
  child: ChildProcess | null = null;
  url: string | null = null;
  startedAt = 0;
  failures = 0;
  restartTimer: NodeJS.Timeout | null = null;
  /** Why the service failed to start, from its own log line. */
  failure: string | null = null;
  private exitWaiters: Array<() => void> = [];
  private listenWaiters: Array<() => void> = [];

  constructor(
    readonly spec: ServiceSpec,
    readonly colour: string,
    private readonly out: Output,
    private readonly onExit: (service: Service, code: number | null, signal: NodeJS.Signals | null) => void,
  ) {}

  get pid(): number | undefined {
    return this.child?.pid;
  }

  get running(): boolean {
    return this.child !== null;
  }

  launch(): void {
    this.url = null;
    this.failure = null;
    this.startedAt = Date.now();
    const child = spawn(process.execPath, [join(DIST, this.spec.script), ...this.spec.args], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    this.child = child;
    for (const stream of [child.stdout!, child.stderr!]) createInterface({ input: stream, crlfDelay: Infinity }).on('line', (line) => this.onLine(line));
    child.once('error', (err) => {
      this.failure = `cannot start ${this.spec.name}: ${err.message}`;
    });
    child.once('exit', (code, signal) => {
      if (this.child === child) this.child = null;
      for (const wake of this.exitWaiters.splice(0)) wake();
      for (const wake of this.listenWaiters.splice(0)) wake();
      this.onExit(this, code, signal);
    });
  }

  private onLine(line: string): void {
    this.out.line(this.spec.name, this.colour, line);
    const listening = / listening url=(\S+)/.exec(line);
    if (listening && !this.url) {
      this.url = listening[1]!;
      for (const wake of this.listenWaiters.splice(0)) wake();
    }
    if (/ failed to start /.test(line)) {
      this.failure = /already in use/.test(line)
        ? `port ${this.spec.port} is already in use, so the ${this.spec.name} service cannot listen on it; stop whatever holds it or pick another with ${this.spec.portFlag}`
        : `${this.spec.name} failed to start: ${line.replace(/^.* failed to start\s*/, '')}`;
    }
  }

  /** Resolves with the URL once the service logs `listening`; rejects if it exits or is slow. */
  async waitListening(): Promise<string> {
    const deadline = Date.now() + LISTEN_TIMEOUT_MS;
    while (!this.url) {
      if (!this.child) throw new Error(this.failure ?? `${this.spec.name} exited before it was listening; its log is above`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.spec.name} did not start listening within ${LISTEN_TIMEOUT_MS / 1000} s`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.listenWaiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return this.url;
  }

  private waitExit(timeoutMs: number): Promise<boolean> {
    if (!this.child) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.exitWaiters.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }

  /** SIGTERM, then SIGKILL if it has not exited within the timeout. False if it had to be killed. */
  async stop(): Promise<boolean> {
    if (this.restartTimer) clearTimeout(this.restartTimer);
    this.restartTimer = null;
    const child = this.child;
    if (!child) return true;
    child.kill('SIGTERM');
    if (await this.waitExit(STOP_TIMEOUT_MS)) return true;
    this.out.warn(`${this.spec.name} (pid ${child.pid}) did not stop within ${STOP_TIMEOUT_MS / 1000} s; killing it`);
    child.kill('SIGKILL');
    await this.waitExit(2000);
    return false;
  }

  killNow(): void {
    try {
      this.child?.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
}

// ------------------------------------------------------------------ the cluster

/** Where the cluster's CA and service certificates live. */
const tlsDir = (s: Settings) => join(s.data, 'tls');

/** The flags that give a service its transport: its certificate, or --insecure. */
function transportFlags(s: Settings, id: string): string[] {
  if (s.insecure) return ['--insecure'];
  const paths = certPaths(tlsDir(s), id);
  return ['--ca', join(tlsDir(s), CA_CERT_FILE), '--cert', paths.cert, '--key', paths.key];
}

function specs(s: Settings): { lock: ServiceSpec; directory: ServiceSpec; files: ServiceSpec[] } {
  const common = ['--host', s.host, '--log-level', s.logLevel];
  const scheme = s.insecure ? 'ws' : 'wss';
  const lockUrl = `${scheme}://${s.publicHost}:${s.lockPort}`;
  const directoryUrl = `${scheme}://${s.publicHost}:${s.directoryPort}`;
  return {
    lock: {
      name: 'lock',
      script: 'servers/lock/main.js',
      port: s.lockPort,
      portFlag: '--lock-port',
      data: join(s.data, 'lock'),
      args: [...common, ...transportFlags(s, 'lock'), '--port', String(s.lockPort), '--data', join(s.data, 'lock')],
    },
    directory: {
      name: 'directory',
      script: 'servers/directory/main.js',
      port: s.directoryPort,
      portFlag: '--directory-port',
      data: join(s.data, 'directory'),
      args: [...common, ...transportFlags(s, 'directory'), '--port', String(s.directoryPort), '--data', join(s.data, 'directory'), '--lock', lockUrl, '--replication', String(s.replication)],
    },
    files: s.filePorts.map((p, i) => {
      const id = `fs-${i + 1}`;
      const args = [...common, ...transportFlags(s, id), '--id', id, '--port', String(p), '--data', join(s.data, id), '--directory', directoryUrl];
      if (s.publicHost !== s.host) args.push('--advertise', `${scheme}://${s.publicHost}:${p}`);
      return { name: id, script: 'servers/file/main.js', port: p, portFlag: '--file-ports', data: join(s.data, id), args };
    }),
  };
}

/** Null when host:port can be listened on, else why not. */
function portProblem(host: string, port: number): Promise<string | null> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'EADDRINUSE' ? 'is already in use' : `cannot be used (${err.code ?? err.message})`));
    server.listen({ port, host, exclusive: true }, () => server.close(() => resolve(null)));
  });
}

class Supervisor {
  private readonly out = new Output();
  private readonly lock: Service;
  private readonly directory: Service;
  private readonly files: Service[];
  private phase: 'starting' | 'running' | 'stopping' = 'starting';
  private transport: Transport = { kind: 'insecure' };
  /** The cluster CA certificate, absolute, for the ready message. */
  private caPath: string | null = null;
  private startupFailure: ((err: Error) => void) | null = null;

  constructor(private readonly settings: Settings) {
    const all = specs(settings);
    const make = (spec: ServiceSpec, i: number) => {
      this.out.widen(spec.name);
      return new Service(spec, PALETTE[i % PALETTE.length]!, this.out, (service, code, signal) => this.onExit(service, code, signal));
    };
    this.lock = make(all.lock, 0);
    this.directory = make(all.directory, 1);
    this.files = all.files.map((spec, i) => make(spec, i + 2));
  }

  private get services(): Service[] {
    return [this.lock, this.directory, ...this.files];
  }

  async start(): Promise<void> {
    for (const service of this.services) {
      const problem = await portProblem(this.settings.host, service.spec.port);
      if (problem) throw new Error(`port ${service.spec.port} on ${this.settings.host} ${problem}, so the ${service.spec.name} service cannot listen on it; stop whatever holds it or pick another with ${service.spec.portFlag}`);
    }
    this.transport = await this.prepareCertificates();
    // A service that dies during start-up fails the start at once, not after a timeout.
    const died = new Promise<never>((_resolve, reject) => (this.startupFailure = reject));
    const phases = [[this.lock], [this.directory], this.files];
    for (const phase of phases) {
      await Promise.race([
        Promise.all(
          phase.map((service) => {
            service.launch();
            return service.waitListening();
          }),
        ),
        died,
      ]);
    }
    await Promise.race([this.waitInSync(), died]);
    this.startupFailure = null;
    this.phase = 'running';
  }

  /**
   * Makes the cluster CA and any missing (or expiring, or misnamed) service certificate in
   * DATA/tls, and leaves a copy of the CA in the user's config folder for clients on this
   * machine. Returns the transport this script's own connections use.
   */
  private async prepareCertificates(): Promise<Transport> {
    if (this.settings.insecure) {
      this.out.warn('--insecure: no TLS; traffic can be read on the network and any process can pose as a service');
      return { kind: 'insecure' };
    }
    const dir = tlsDir(this.settings);
    const ca = await ensureCa(dir);
    if (ca.created) this.out.say(`made a cluster CA in ${dir}`);
    const hosts = [...new Set([...defaultHosts(), this.settings.publicHost, ...(this.settings.host === '0.0.0.0' || this.settings.host === '::' ? [] : [this.settings.host])])];
    const identities: ServiceIdentity[] = [
      { role: 'lock', id: 'lock' },
      { role: 'directory', id: 'directory' },
      ...this.files.map((f) => ({ role: 'file-server' as const, id: f.spec.name })),
    ];
    for (const identity of identities) {
      const { issued } = await ensureServiceCert(dir, ca, identity, hosts);
      if (issued && !ca.created) this.out.say(`issued a new certificate for ${identity.id} (${issued})`);
    }
    this.caPath = resolve(dir, CA_CERT_FILE);
    for (const host of new Set(['127.0.0.1', 'localhost', this.settings.publicHost])) {
      const url = `wss://${host.includes(':') ? `[${host}]` : host}:${this.settings.directoryPort}`;
      await writeFileDurably(knownCaPath(url), ca.certPem).catch((err: Error) => this.out.warn(`could not leave the CA for local clients at ${knownCaPath(url)}: ${err.message}`));
    }
    return { kind: 'tls', ca: ca.certPem };
  }

  private async waitInSync(): Promise<void> {
    const conn = await connect(this.directory.url!, { transport: this.transport }, { role: 'directory' });
    const ids = this.files.map((f) => f.spec.name);
    const deadline = Date.now() + IN_SYNC_TIMEOUT_MS;
    try {
      for (;;) {
        const status = (await conn.call('status', {})).result as StatusResult;
        const lagging = ids.filter((id) => !status.servers.some((s) => s.id === id && s.state === 'up' && s.sync === 'in-sync'));
        if (lagging.length === 0) return;
        if (Date.now() > deadline) throw new Error(`${lagging.join(', ')} did not come up in sync with the directory within ${IN_SYNC_TIMEOUT_MS / 1000} s`);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    } finally {
      conn.close();
    }
  }

  printReady(): void {
    const rows = this.services.map((s) => [s.spec.name, s.url ?? '-', String(s.pid ?? '-'), s.spec.data]);
    process.stdout.write('\n' + table([['SERVICE', 'URL', 'PID', 'DATA'], ...rows]) + '\n\n');
    const n = this.files.length;
    this.out.say(
      `dfs is ready: ${n} file server${n === 1 ? '' : 's'}, ${this.settings.replication} cop${this.settings.replication === 1 ? 'y' : 'ies'} of each file, directory at ${this.directory.url}.`,
    );
    if (this.caPath) this.out.say(`CA certificate: ${this.caPath} (clients on this machine find it; elsewhere pass --ca FILE or set DFS_CA)`);
    this.out.say(`In another terminal: npm run client  (the editor), or npm run -s dfs -- --help. Ctrl-C here stops everything.`);
  }

  private onExit(service: Service, code: number | null, signal: NodeJS.Signals | null): void {
    if (this.phase === 'stopping') return;
    const how = signal ? `killed by ${signal}` : `exit status ${code}`;
    if (this.phase === 'starting') {
      this.startupFailure?.(new Error(service.failure ?? `${service.spec.name} exited during start-up (${how}); its log is above`));
      return;
    }
    if (!this.settings.restart) {
      this.out.warn(`${service.spec.name} exited unexpectedly (${how}); not restarting it (start with --restart for that)`);
      if (this.services.every((s) => !s.running)) {
        this.out.warn('every service has exited; stopping');
        process.exit(1);
      }
      return;
    }
    service.failures = Date.now() - service.startedAt > STABLE_AFTER_MS ? 1 : service.failures + 1;
    const delay = Math.min(MAX_BACKOFF_MS, 1000 * 2 ** (service.failures - 1));
    this.out.warn(`${service.spec.name} exited unexpectedly (${how}); restarting it in ${delay / 1000} s`);
    service.restartTimer = setTimeout(() => {
      service.restartTimer = null;
      if (this.phase !== 'running') return;
      service.launch();
      service.waitListening().then(
        (url) => this.out.say(`${service.spec.name} is back at ${url} (pid ${service.pid})`),
        (err: Error) => this.out.warn(err.message),
      );
    }, delay);
  }

  /** Stops file servers first (they report to the directory), then the directory, then locks. */
  async stop(): Promise<void> {
    this.phase = 'stopping';
    for (const service of this.services) {
      if (service.restartTimer) clearTimeout(service.restartTimer);
      service.restartTimer = null;
    }
    for (const phase of [this.files, [this.directory], [this.lock]]) await Promise.all(phase.map((s) => s.stop()));
  }

  say(text: string): void {
    this.out.say(text);
  }

  killAll(): void {
    for (const service of this.services) service.killNow();
  }
}

// ------------------------------------------------------------------ main

async function main(): Promise<void> {
  let settings: Settings | 'help';
  try {
    settings = parseSettings(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`start: ${(err as Error).message}\nrun npm start -- --help for the options\n`);
    process.exit(2);
  }
  if (settings === 'help') {
    process.stdout.write(USAGE + '\n');
    return;
  }

  const supervisor = new Supervisor(settings);
  // Whatever happens to this process, no service outlives it.
  process.on('exit', () => supervisor.killAll());
  process.on('uncaughtException', (err) => {
    process.stderr.write(`start: error: ${err.message}\n`);
    process.exit(1);
  });

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) {
      process.stderr.write('start: stopping at once (second signal)\n');
      process.exit(1);
    }
    stopping = true;
    process.stdout.write('\n');
    supervisor.say(`stopping every service (${signal})...`);
    supervisor.stop().then(() => {
      supervisor.say('stopped');
      process.exit(0);
    });
  };
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, () => stop(signal));

  try {
    await supervisor.start();
  } catch (err) {
    if (stopping) return; // a signal arrived during start-up; stop() is already at work
    process.stderr.write(`start: error: ${(err as Error).message}\n`);
    stopping = true;
    await supervisor.stop();
    process.exit(1);
  }
  if (!stopping) supervisor.printReady();
}

await main();
