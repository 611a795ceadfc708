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
import { createServer as createTlsServer } from 'node:https';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { WebSocket, WebSocketServer } from 'ws';
import { DfsError } from '../errors.js';
import { describeIdentity, identityOfPeer, type ServiceIdentity, type ServiceRole } from '../tls/identity.js';
import { SERVICE_CLAIM_HEADER, checkScheme, formatClaim, parseClaim, schemeOf, type Transport } from '../tls/transport.js';
import type { Logger } from '../log.js';
import { RpcConnection, type ConnectionOptions } from './connection.js';
import { DEFAULT_HANDSHAKE_TIMEOUT_MS, DEFAULT_MAX_MESSAGE_BYTES, LIMITS_HEADER, defaultMaxConnections, formatLimits, parseLimits } from './limits.js';

export interface ConnectOptions extends ConnectionOptions {
  /** TLS with the cluster CA (and this process's certificate, if a service), or plain ws://. */
  transport: Transport;
  /** Time allowed to open the connection. */
  connectTimeoutMs?: number;
  maxMessageBytes?: number;
}

/** The service a connection must reach; anyone else at the URL is refused. */
export interface Expected {
  role: ServiceRole;
  id?: string;
}

/** The identity a TLS socket's verified peer certificate names (null: none, or not from our CA). */
function verifiedIdentity(socket: Socket): ServiceIdentity | null {
  const tls = socket as TLSSocket;
  if (typeof tls.getPeerCertificate !== 'function' || !tls.authorized) return null;
  return identityOfPeer(tls.getPeerCertificate());
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

/**
 * Opens a connection; UNAVAILABLE when nobody answers at the URL, or when the service there is
 * not the one `expected` (its certificate names another).
 */
export function connect(url: string, options: ConnectOptions, expected?: Expected): Promise<RpcConnection> {
  const { transport } = options;
  try {
    checkUrl(url);
    checkScheme(url, transport);
  } catch (err) {
    return Promise.reject(err);
  }
  const connectTimeoutMs = options.connectTimeoutMs ?? 5000;
  const maxMessageBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { [LIMITS_HEADER]: formatLimits({ maxMessageBytes }) };
    if (transport.kind === 'insecure' && transport.identity) headers[SERVICE_CLAIM_HEADER] = formatClaim(transport.identity);
    const tls = transport.kind === 'tls' ? { ca: transport.ca, ...(transport.cert && transport.key ? { cert: transport.cert, key: transport.key } : {}) } : {};
    const ws = new WebSocket(url, {
      maxPayload: maxMessageBytes,
      handshakeTimeout: connectTimeoutMs,
      perMessageDeflate: false,
      headers,
      ...tls,
    });
    let peer = parseLimits(undefined);
    let service: ServiceIdentity | null = null;
    const fail = (err: Error & { code?: string }) => {
      ws.removeAllListeners();
      ws.on('error', () => {});
      ws.terminate();
      reject(new DfsError('UNAVAILABLE', `cannot reach ${url}: ${connectProblem(err)}`));
    };
    ws.once('error', fail);
    ws.once('upgrade', (res: IncomingMessage) => {
      peer = parseLimits(res.headers[LIMITS_HEADER]);
      service = transport.kind === 'tls' ? verifiedIdentity(res.socket) : parseClaim(res.headers[SERVICE_CLAIM_HEADER]);
    });
    ws.once('unexpected-response', (_req, res: IncomingMessage) => fail(new Error(`unexpected HTTP ${res.statusCode}`)));
    ws.once('open', () => {
      ws.removeListener('error', fail);
      if (expected && (service?.role !== expected.role || (expected.id !== undefined && service.id !== expected.id))) {
        fail(new Error(`the service there is ${describeIdentity(service)}, not ${expected.role}${expected.id !== undefined && expected.id !== expected.role ? ` ${expected.id}` : ''}`));
        return;
      }
      const conn = new RpcConnection(ws, options, url, peer);
      conn.service = service;
      resolve(conn);
    });
  });
}

/** Why a connection could not be opened, in words (TLS failures say what to check). */
function connectProblem(err: Error & { code?: string }): string {
  if (err.code === 'ECONNREFUSED') return 'connection refused';
  if (err.code === 'ECONNRESET' || err.code === 'EPROTO') return `${err.message} (is it a plain ws:// service, or one of another cluster?)`;
  if (err.code === 'ERR_TLS_CERT_ALTNAME_INVALID') return `its certificate does not name this host: ${err.message}`;
  if (err.code === 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' || err.code === 'SELF_SIGNED_CERT_IN_CHAIN' || err.code === 'DEPTH_ZERO_SELF_SIGNED_CERT' || err.code === 'CERT_SIGNATURE_FAILURE') {
    return `its certificate was not issued by the cluster CA this client trusts (${err.code}); check --ca / DFS_CA`;
  }
  if (err.code === 'CERT_HAS_EXPIRED') return 'its certificate has expired';
  return err.message;
}

export interface ServerOptions extends ConnectionOptions {
  transport: Transport;
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
    return `${schemeOf(this.options.transport)}://${this.options.host.includes(':') ? `[${this.options.host}]` : this.options.host}:${this.boundPort}`;
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
    const { transport } = this.options;
    wss.on('headers', (headers) => {
      headers.push(`${LIMITS_HEADER}: ${formatLimits({ maxMessageBytes })}`);
      if (transport.kind === 'insecure' && transport.identity) headers.push(`${SERVICE_CLAIM_HEADER}: ${formatClaim(transport.identity)}`);
    });
    // Peers are asked for a certificate but not required to have one: a user's client has none.
    const http =
      transport.kind === 'tls'
        ? createTlsServer({ ca: transport.ca, cert: transport.cert, key: transport.key, requestCert: true, rejectUnauthorized: false, minVersion: 'TLSv1.2', handshakeTimeout: handshakeTimeoutMs })
        : createServer();
    http.maxConnections = this.cap;
    http.on('drop', () => this.logRefusal('at-cap', 'connection refused: the server is at its connection cap', { maxConnections: this.cap }));
    // Under TLS the TLS handshake has its own timeout (handshakeTimeout above); the clock here
    // then runs from the secure connection to the WebSocket upgrade, on the socket it upgrades.
    http.on(transport.kind === 'tls' ? 'secureConnection' : 'connection', (socket: Socket) => {
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
    http.on('tlsClientError', (err: Error, socket: Socket) => {
      this.logRefusal('tls', 'refused a connection that failed its TLS handshake (a plain ws:// client, or one of another cluster?)', { error: err.message });
      socket.destroy();
    });
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
    conn.service = this.options.transport.kind === 'tls' ? verifiedIdentity(req.socket) : parseClaim(req.headers[SERVICE_CLAIM_HEADER]);
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
