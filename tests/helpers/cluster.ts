/**
 * A whole cluster of real processes for integration tests: lock service, directory and file
 * servers, each on a free port, with data in a temp folder.
 */
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import { connect, type Expected, type RpcConnection } from '../../shared/rpc.js';
import { DfsClient, type DfsClientOptions } from '../../client/dfs-client.js';
import type { Transport } from '../../shared/tls/transport.js';
import { TestPki } from './tls.js';
import type { PlacementResult, StatusResult } from '../../shared/protocol.js';
import { freePort, removeDir, startNode, tempDir, type ServiceProcess } from './process.js';
import { waitFor } from './wait.js';

export interface FileServerHandle {
  id: string;
  port: number;
  url: string;
  data: string;
  proc: ServiceProcess;
}

export interface ClusterOptions {
  fileServers?: number;
  replication?: number;
  leaseMs?: number;
  downAfterMs?: number;
  logLevel?: string;
  /** Extra flags for every file server. */
  fileServerArgs?: string[];
  /** Extra flags for the directory. */
  directoryArgs?: string[];
  /** Runs once the folders and ports are chosen, before any process starts (to lay down data). */
  prepare?: (layout: ClusterLayout) => Promise<void>;
  /** How long to wait for the file servers to be in sync at start. */
  syncTimeoutMs?: number;
}

export interface ClusterLayout {
  dir: string;
  directoryData: string;
  servers: ReadonlyArray<{ id: string; url: string; data: string }>;
}

export class Cluster {
  directory!: ServiceProcess;
  lock!: ServiceProcess;
  directoryUrl = '';
  lockUrl = '';
  readonly servers: FileServerHandle[] = [];
  /** The cluster CA and every service's certificate, in DIR/tls. */
  pki!: TestPki;
  private admin: RpcConnection | null = null;

  private constructor(
    readonly dir: string,
    private readonly options: Required<Omit<ClusterOptions, 'prepare'>>,
  ) {}

  static async start(options: ClusterOptions = {}): Promise<Cluster> {
    const cluster = new Cluster(await tempDir('dfs-cluster-'), {
      fileServers: options.fileServers ?? 3,
      replication: options.replication ?? 3,
      leaseMs: options.leaseMs ?? 3000,
      downAfterMs: options.downAfterMs ?? 1500,
      logLevel: options.logLevel ?? 'info',
      fileServerArgs: options.fileServerArgs ?? [],
      directoryArgs: options.directoryArgs ?? [],
      syncTimeoutMs: options.syncTimeoutMs ?? 15_000,
    });
    cluster.lockUrl = `wss://127.0.0.1:${await freePort()}`;
    cluster.directoryUrl = `wss://127.0.0.1:${await freePort()}`;
    for (let i = 1; i <= cluster.options.fileServers; i++) {
      const port = await freePort();
      cluster.servers.push({ id: `fs-${i}`, port, url: `wss://127.0.0.1:${port}`, data: join(cluster.dir, `fs-${i}`), proc: null as unknown as ServiceProcess });
    }
    cluster.pki = await TestPki.make(join(cluster.dir, 'tls'), [
      { role: 'lock', id: 'lock' },
      { role: 'directory', id: 'directory' },
      ...cluster.servers.map((s) => ({ role: 'file-server' as const, id: s.id })),
    ]);
    await options.prepare?.({ dir: cluster.dir, directoryData: join(cluster.dir, 'directory'), servers: cluster.servers.map(({ id, url, data }) => ({ id, url, data })) });
    await cluster.startLock();
    await cluster.startDirectory();
    await Promise.all(cluster.servers.map((s) => cluster.startFileServer(s.id)));
    await cluster.waitInSync(cluster.options.syncTimeoutMs);
    return cluster;
  }

  /** Starts the lock service (again: on the same port and data); `extra` are more flags for it. */
  async startLock(port?: number, extra: string[] = []): Promise<void> {
    const p = port ?? (this.lockUrl ? Number(new URL(this.lockUrl).port) : await freePort());
    this.lockUrl = `wss://127.0.0.1:${p}`;
    this.lock = startNode('lock', 'servers/lock/main.js', [...this.pki.flags('lock'), '--port', String(p), '--data', join(this.dir, 'lock'), '--lease-ms', String(this.options.leaseMs), '--log-level', this.options.logLevel, ...extra]);
    await this.lock.waitForLine(/listening/);
  }

  async startDirectory(): Promise<void> {
    const p = this.directoryUrl ? Number(new URL(this.directoryUrl).port) : await freePort();
    this.directoryUrl = `wss://127.0.0.1:${p}`;
    this.directory = startNode('directory', 'servers/directory/main.js', [
      ...this.pki.flags('directory'),
      '--port', String(p),
      '--data', join(this.dir, 'directory'),
      '--lock', this.lockUrl,
      '--replication', String(this.options.replication),
      '--down-after-ms', String(this.options.downAfterMs),
      '--log-level', this.options.logLevel,
      ...this.options.directoryArgs,
    ]);
    await this.directory.waitForLine(/listening/);
  }

  server(id: string): FileServerHandle {
    const s = this.servers.find((x) => x.id === id);
    if (!s) throw new Error(`no server ${id}`);
    return s;
  }

  /** Starts (or restarts) a file server; `env` adds to its environment (a crash point, say). */
  async startFileServer(id: string, env: NodeJS.ProcessEnv = {}): Promise<FileServerHandle> {
    const s = this.server(id);
    s.proc = startNode(
      id,
      'servers/file/main.js',
      [...this.pki.flags(id), '--id', id, '--port', String(s.port), '--data', s.data, '--directory', this.directoryUrl, '--log-level', this.options.logLevel, ...this.options.fileServerArgs],
      env,
    );
    await s.proc.waitForLine(/listening/, this.options.syncTimeoutMs);
    return s;
  }

  async adminConn(): Promise<RpcConnection> {
    if (!this.admin || this.admin.closed) this.admin = await this.connect(this.directoryUrl);
    return this.admin;
  }

  /** What a user's client connects with. */
  get transport(): Transport {
    return this.pki.client;
  }

  /** Environment for a spawned client (a test helper, the CLI): where the CA is. */
  get clientEnv(): NodeJS.ProcessEnv {
    return { DFS_CA: this.pki.caPath };
  }

  /**
   * A raw connection to one of the cluster's services: as a user's client, or `as` the service
   * with that id (its certificate), to play its part in a test.
   */
  async connect(url: string, options: { as?: string; maxMessageBytes?: number; expect?: Expected } = {}): Promise<RpcConnection> {
    const transport = options.as ? await this.pki.as(options.as) : this.transport;
    return connect(url, { transport, ...(options.maxMessageBytes ? { maxMessageBytes: options.maxMessageBytes } : {}) }, options.expect);
  }

  /** A client library instance on this cluster. */
  client(options: Omit<DfsClientOptions, 'transport'> = {}): Promise<DfsClient> {
    return DfsClient.connect(this.directoryUrl, { transport: this.transport, ...options });
  }

  async placement(name: string): Promise<PlacementResult> {
    return (await (await this.adminConn()).call('placement', { name })).result as PlacementResult;
  }

  /** Restarts a file server armed to SIGKILL itself at a crash point of `name`'s writes, and waits until all are in sync. */
  async restartWithCrashPoint(id: string, point: string, name: string): Promise<FileServerHandle> {
    await this.server(id).proc.stop();
    const handle = await this.startFileServer(id, { DFS_CRASH_AT: `${point}@${name}` });
    await this.waitInSync(20_000);
    return handle;
  }

  async status(): Promise<StatusResult> {
    return (await (await this.adminConn()).call('status', {})).result as StatusResult;
  }

  /** Waits until every running file server is up and in sync with the directory. */
  async waitInSync(timeoutMs = 15_000, ids?: string[]): Promise<void> {
    const want = ids ?? this.servers.filter((s) => s.proc && !s.proc.exit).map((s) => s.id);
    await waitFor(
      async () => {
        const status = await this.status();
        return want.every((id) => status.servers.some((s) => s.id === id && s.state === 'up' && s.sync === 'in-sync'));
      },
      { timeoutMs, what: `servers ${want.join(', ')} up and in sync` },
    );
  }

  async waitDown(id: string, timeoutMs = 10_000): Promise<void> {
    await waitFor(async () => (await this.status()).servers.some((s) => s.id === id && s.state === 'down'), { timeoutMs, what: `${id} marked down` });
  }

  /** Peak resident memory (VmHWM) of a process, in bytes. */
  static async peakRss(pid: number): Promise<number> {
    const text = await readFile(`/proc/${pid}/status`, 'utf8');
    const match = /VmHWM:\s+(\d+) kB/.exec(text);
    return match ? Number(match[1]) * 1024 : 0;
  }

  async stop(): Promise<void> {
    this.admin?.close();
    await Promise.all(this.servers.map((s) => s.proc?.stop()));
    await this.directory?.stop();
    await this.lock?.stop();
    await removeDir(this.dir);
  }
}
