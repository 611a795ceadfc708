/**
 * Both ends of opening a connection: `connect()` for a client, `RpcServer` for a service.
 *
 * A service bounds what opening costs it: at most `maxConnections` sockets at once (the rest
 * are refused by the kernel-facing listener), an HTTP upgrade must finish within
 * `handshakeTimeoutMs`, and at most `maxPendingHandshakes` may be unfinished at once (a new one
 * over that evicts the oldest), so half-open sockets can neither exhaust the file descriptors
 * nor lock ordinary clients out for longer than one handshake timeout.
 */
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { Socket } from 'node:net';
import { WebSocket, WebSocketServer } from 'ws';
import { DfsError } from '../errors.js';
import type { Logger } from '../log.js';
import { RpcConnection, type ConnectionOptions } from './connection.js';
import { DEFAULT_HANDSHAKE_TIMEOUT_MS, DEFAULT_MAX_MESSAGE_BYTES, LIMITS_HEADER, defaultMaxConnections, formatLimits, parseLimits } from './limits.js';

export interface ConnectOptions extends ConnectionOptions {
  /** Time allowed to open the connection. */
  connectTimeoutMs?: number;
  maxMessageBytes?: number;
}

export function checkUrl(url: string): void {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new DfsError('BAD_REQUEST', `${JSON.stringify(url)} is not a URL; expected ws://host:port`);
  }
  if (parsed.protocol !== 'ws:' && parsed.protocol !== 'wss:') throw new DfsError('BAD_REQUEST', `${url} is not a ws:// or wss:// URL`);
}

/** Opens a connection; UNAVAILABLE when nobody answers at the URL. */
export function connect(url: string, options: ConnectOptions = {}): Promise<RpcConnection> {
  checkUrl(url);
  const connectTimeoutMs = options.connectTimeoutMs ?? 5000;
  const maxMessageBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, {
      maxPayload: maxMessageBytes,
      handshakeTimeout: connectTimeoutMs,
      perMessageDeflate: false,
      headers: { [LIMITS_HEADER]: formatLimits({ maxMessageBytes }) },
    });
    let peer = parseLimits(undefined);
    const fail = (err: Error & { code?: string }) => {
      ws.removeAllListeners();
      ws.on('error', () => {});
      ws.terminate();
      const why = err.code === 'ECONNREFUSED' ? 'connection refused' : err.message;
      reject(new DfsError('UNAVAILABLE', `cannot reach ${url}: ${why}`));
    };
    ws.once('error', fail);
    ws.once('upgrade', (res: IncomingMessage) => (peer = parseLimits(res.headers[LIMITS_HEADER])));
    ws.once('unexpected-response', (_req, res: IncomingMessage) => fail(new Error(`unexpected HTTP ${res.statusCode}`)));
    ws.once('open', () => {
      ws.removeListener('error', fail);
      resolve(new RpcConnection(ws, options, url, peer));
    });
  });
}

export interface ServerOptions extends ConnectionOptions {
  host: string;
  port: number;
  maxMessageBytes?: number;
  /** Sockets open at once (default: what the open-file limit allows, at most 10,000). */
  maxConnections?: number;
  handshakeTimeoutMs?: number;
  maxPendingHandshakes?: number;
  onConnection?: (conn: RpcConnection) => void;
}

/** Refusals of one kind are logged at most this often. */
const REFUSAL_LOG_INTERVAL_MS = 10_000;

export class RpcServer {
  readonly connections = new Set<RpcConnection>();
  private http: Server | null = null;
  private wss: WebSocketServer | null = null;
  private boundPort = 0;
  /** Sockets whose upgrade has not finished, oldest first, with their timers. */
  private readonly handshakes = new Map<Socket, NodeJS.Timeout>();
  private readonly lastRefusalLog = new Map<string, number>();
  private cap = 0;

  constructor(private readonly options: ServerOptions) {}

  get port(): number {
    return this.boundPort;
  }

  get url(): string {
    return `ws://${this.options.host.includes(':') ? `[${this.options.host}]` : this.options.host}:${this.boundPort}`;
  }

  /** The connection cap in force. */
  get maxConnections(): number {
    return this.cap;
  }

  async listen(): Promise<number> {
    const { host, port } = this.options;
    this.cap = this.options.maxConnections ?? (await defaultMaxConnections());
    const handshakeTimeoutMs = this.options.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
    const maxPending = this.options.maxPendingHandshakes ?? Math.max(16, Math.floor(this.cap / 4));
    const maxMessageBytes = this.options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    const wss = new WebSocketServer({ noServer: true, maxPayload: maxMessageBytes, perMessageDeflate: false, clientTracking: false });
    wss.on('headers', (headers) => headers.push(`${LIMITS_HEADER}: ${formatLimits({ maxMessageBytes })}`));
    const http = createServer();
    http.maxConnections = this.cap;
    http.on('drop', () => this.logRefusal('at-cap', 'connection refused: the server is at its connection cap', { maxConnections: this.cap }));
    http.on('connection', (socket: Socket) => {
      const timer = setTimeout(() => {
        this.handshakes.delete(socket);
        socket.destroy();
        this.logRefusal('handshake-timeout', 'dropped a connection that did not finish its handshake in time', { timeoutMs: handshakeTimeoutMs });
      }, handshakeTimeoutMs);
      timer.unref();
      this.handshakes.set(socket, timer);
      socket.once('close', () => this.endHandshake(socket));
      if (this.handshakes.size > maxPending) {
        const [oldest] = this.handshakes.keys();
        this.endHandshake(oldest!);
        oldest!.destroy();
        this.logRefusal('handshake-evicted', 'too many unfinished handshakes; dropped the oldest', { maxPending });
      }
    });
    http.on('clientError', (_err, socket: Socket) => socket.destroy());
    http.on('request', (_req, res) => {
      res.writeHead(426, { 'content-type': 'text/plain', connection: 'close' });
      res.end('this is a dfs service: connect with a dfs client (WebSocket)\n');
    });
    http.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
      this.endHandshake(socket);
      if (!this.wss) return socket.destroy();
      wss.handleUpgrade(req, socket, head, (ws) => this.accept(ws, req));
    });
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error & { code?: string }) => {
        http.close();
        if (err.code === 'EADDRINUSE') reject(new DfsError('UNAVAILABLE', `port ${port} on ${host} is already in use; pick another with --port`));
        else if (err.code === 'EADDRNOTAVAIL') reject(new DfsError('UNAVAILABLE', `address ${host} is not available on this machine`));
        else reject(new DfsError('UNAVAILABLE', `cannot listen on ${host}:${port}: ${err.message}`));
      };
      http.once('error', onError);
      http.listen(port, host, () => {
        http.removeListener('error', onError);
        http.on('error', (err) => this.options.log?.error('server error', { error: err.message }));
        resolve();
      });
    });
    const address = http.address();
    this.boundPort = typeof address === 'object' && address !== null ? address.port : port;
    this.http = http;
    this.wss = wss;
    return this.boundPort;
  }

  private accept(ws: WebSocket, req: IncomingMessage): void {
    const peer = parseLimits(req.headers[LIMITS_HEADER]);
    const conn = new RpcConnection(ws, this.options, `${req.socket.remoteAddress ?? '?'}:${req.socket.remotePort ?? '?'}`, peer);
    this.connections.add(conn);
    conn.onClose(() => this.connections.delete(conn));
    this.options.onConnection?.(conn);
  }

  private endHandshake(socket: Socket): void {
    const timer = this.handshakes.get(socket);
    if (timer === undefined) return;
    clearTimeout(timer);
    this.handshakes.delete(socket);
  }

  private logRefusal(kind: string, message: string, fields: Record<string, unknown>): void {
    const now = Date.now();
    if (now - (this.lastRefusalLog.get(kind) ?? 0) < REFUSAL_LOG_INTERVAL_MS) return;
    this.lastRefusalLog.set(kind, now);
    (this.options.log as Logger | undefined)?.warn(message, { ...fields, connections: this.connections.size, handshaking: this.handshakes.size });
  }

  /** Closes every connection (1001, going away) and stops listening. */
  close(): Promise<void> {
    for (const conn of this.connections) conn.close(1001, 'server shutting down');
    for (const socket of [...this.handshakes.keys()]) {
      this.endHandshake(socket);
      socket.destroy();
    }
    const http = this.http;
    const wss = this.wss;
    this.http = null;
    this.wss = null;
    wss?.close();
    if (!http) return Promise.resolve();
    return new Promise((resolve) => {
      http.close(() => resolve());
      http.closeAllConnections();
    });
  }
}
