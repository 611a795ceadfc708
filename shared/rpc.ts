/**
 * The request/response layer every process speaks, over one WebSocket per peer.
 *
 * Rules enforced here (see docs/PROTOCOL.md):
 * - Requests carry an id chosen by the requester; the answer carries the same id. Either side of
 *   a connection may make requests (the directory calls file servers back, file servers call
 *   each other), so each side numbers its own.
 * - Every incoming frame is validated before it is acted on; a malformed one is answered with
 *   BAD_REQUEST and the connection goes on serving.
 * - Large content travels as a stream of binary chunks with credit-based flow control: the
 *   sender keeps at most `windowBytes` unacknowledged, the receiver acknowledges what its
 *   consumer has taken. Memory stays bounded whatever the file size.
 * - Both sides ping; a peer silent for `deadAfterMs` is taken for dead and its connection is
 *   terminated, which fails its pending requests with CLOSED and fires the close hooks (the lock
 *   service frees the locks of a dead session that way).
 */
import { randomBytes } from 'node:crypto';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import type { IncomingMessage } from 'node:http';
import type { z } from 'zod';
import { DfsError, toDfsError, type WireError } from './errors.js';
import { decodeFrame, encodeFrame, type Frame } from './frame.js';
import { silentLogger, type Logger } from './log.js';

export const DEFAULT_CHUNK_BYTES = 1 << 20;
export const DEFAULT_WINDOW_BYTES = 4 << 20;
/** Largest WebSocket message accepted; ws closes the connection with 1009 past it. */
export const DEFAULT_MAX_MESSAGE_BYTES = 4 << 20;
export const DEFAULT_PING_INTERVAL_MS = 1000;
export const DEFAULT_DEAD_AFTER_MS = 4000;
export const DEFAULT_CALL_TIMEOUT_MS = 15000;

export interface CallContext {
  readonly conn: RpcConnection;
  readonly requestId: number;
  /** The inline body of the request, if it had one. */
  readonly body: Buffer | undefined;
  /** The streamed body of the request, if it was sent as a stream. */
  readonly stream: IncomingStream | undefined;
  /** Aborted when the requester cancels or the connection closes. */
  readonly signal: AbortSignal;
  /** Sends an event about this request (a queue position, say) to the requester. */
  event(ev: string, data: unknown): void;
}

export type Handler = (args: unknown, ctx: CallContext) => unknown;
export type Handlers = Record<string, Handler>;

/** A handler's answer when it has a body or a stream to send along with the result. */
export class Reply {
  constructor(
    readonly result: unknown,
    readonly body?: Buffer,
    readonly stream?: AsyncIterable<Buffer>,
  ) {}
}

export interface Response {
  result: unknown;
  body: Buffer | undefined;
  stream: IncomingStream | undefined;
}

export interface CallOptions {
  body?: Buffer;
  stream?: AsyncIterable<Buffer>;
  /** Time allowed for the answer once the request is fully sent. */
  timeoutMs?: number;
  signal?: AbortSignal;
  onEvent?: (ev: string, data: unknown) => void;
  /** Called with a success that arrives after the call was cancelled (a lock granted too late). */
  onLateResult?: (result: unknown) => void;
}

export interface ConnectionOptions {
  handlers?: Handlers;
  log?: Logger;
  pingIntervalMs?: number;
  deadAfterMs?: number;
  windowBytes?: number;
  chunkBytes?: number;
  callTimeoutMs?: number;
}

/** Wraps a handler with argument validation: invalid arguments are BAD_REQUEST and reach no code. */
export function op<S extends z.ZodType>(schema: S, fn: (args: z.infer<S>, ctx: CallContext) => unknown): Handler {
  return (args, ctx) => {
    const parsed = schema.safeParse(args);
    if (!parsed.success) {
      const problems = parsed.error.issues
        .slice(0, 3)
        .map((issue) => `${issue.path.length ? issue.path.join('.') : 'arguments'}: ${issue.message}`)
        .join('; ');
      throw new DfsError('BAD_REQUEST', `invalid arguments: ${problems}`);
    }
    return fn(parsed.data, ctx);
  };
}

/**
 * The receiving end of a stream. Iterating it takes chunks in order; each chunk taken is
 * acknowledged to the sender (in batches), which is what lets the sender go on.
 */
export class IncomingStream implements AsyncIterable<Buffer> {
  private readonly queue: Buffer[] = [];
  private ended = false;
  private failure: DfsError | null = null;
  private wake: (() => void) | null = null;
  private unacked = 0;
  private iterated = false;

  constructor(
    private readonly ack: (bytes: number) => void,
    private readonly ackEvery: number,
  ) {}

  push(chunk: Buffer): void {
    if (this.ended || this.failure) return;
    this.queue.push(chunk);
    this.notify();
  }

  end(): void {
    this.ended = true;
    this.notify();
  }

  fail(err: DfsError): void {
    if (this.ended) return;
    this.failure = err;
    this.queue.length = 0;
    this.notify();
  }

  get done(): boolean {
    return this.ended || this.failure !== null;
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Buffer> {
    if (this.iterated) throw new DfsError('INTERNAL', 'a stream can be read only once');
    this.iterated = true;
    for (;;) {
      const chunk = this.queue.shift();
      if (chunk !== undefined) {
        this.unacked += chunk.length;
        if (this.unacked >= this.ackEvery) {
          this.ack(this.unacked);
          this.unacked = 0;
        }
        yield chunk;
        continue;
      }
      if (this.failure) throw this.failure;
      if (this.ended) return;
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
  }

  /** Reads and drops what is left of the stream, so its sender can finish. */
  async drain(): Promise<void> {
    if (this.iterated) return;
    for await (const _ of this) void _;
  }

  /** Reads the whole stream into one buffer; only for content known to be small. */
  async collect(limit: number): Promise<Buffer> {
    const parts: Buffer[] = [];
    let total = 0;
    for await (const chunk of this) {
      total += chunk.length;
      if (total > limit) throw new DfsError('TOO_LARGE', `content over ${limit} bytes`);
      parts.push(chunk);
    }
    return Buffer.concat(parts, total);
  }
}

interface Pending {
  op: string;
  resolve: (response: Response) => void;
  reject: (err: DfsError) => void;
  timer: NodeJS.Timeout | null;
  timeoutMs: number;
  onEvent: ((ev: string, data: unknown) => void) | undefined;
  onLateResult: ((result: unknown) => void) | undefined;
}

interface Credit {
  inFlight: number;
  wake: (() => void) | null;
  stopped: DfsError | null;
}

/** A request being served. Its AbortController is made only if the handler asks for the signal. */
class Active {
  private controller: AbortController | null = null;
  private abortedWith: DfsError | null = null;

  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.abortedWith) this.controller.abort(this.abortedWith);
    }
    return this.controller.signal;
  }

  abort(err: DfsError): void {
    if (this.abortedWith) return;
    this.abortedWith = err;
    this.controller?.abort(err);
  }
}

const closeMessages: Record<number, string> = {
  1001: 'the peer is going away',
  1006: 'the connection dropped',
  1009: 'a message was over the size limit',
};

let connectionCounter = 0;

export class RpcConnection {
  /** Short random id, used in logs and in lock holder names. */
  readonly id: string;
  /** Free-form label a peer gives itself (a client name, a file server id). */
  label = '';
  /** Per-connection state a service hangs on the session. */
  readonly session = new Map<string, unknown>();
  readonly remote: string;

  private nextId = 0;
  private readonly pending = new Map<number, Pending>();
  private readonly cancelled = new Map<number, (result: unknown) => void>();
  private readonly active = new Map<number, Active>();
  private readonly incoming = new Map<string, IncomingStream>();
  private readonly credits = new Map<string, Credit>();
  private readonly closeHooks: Array<(err: DfsError) => void> = [];
  private readonly handlers: Handlers;
  private readonly log: Logger;
  private readonly windowBytes: number;
  private readonly chunkBytes: number;
  private readonly callTimeoutMs: number;
  private readonly deadAfterMs: number;
  private lastSeen = Date.now();
  private pingTimer: NodeJS.Timeout | null = null;
  private closedWith: DfsError | null = null;
  private readonly eventListeners: Array<(ev: string, data: unknown) => void> = [];

  constructor(
    private readonly ws: WebSocket,
    options: ConnectionOptions = {},
    remote = '',
  ) {
    this.id = randomBytes(3).toString('hex') + (++connectionCounter).toString(36);
    this.remote = remote;
    this.handlers = options.handlers ?? {};
    this.log = options.log ?? silentLogger;
    this.windowBytes = options.windowBytes ?? DEFAULT_WINDOW_BYTES;
    this.chunkBytes = options.chunkBytes ?? DEFAULT_CHUNK_BYTES;
    this.callTimeoutMs = options.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    this.deadAfterMs = options.deadAfterMs ?? DEFAULT_DEAD_AFTER_MS;
    const pingIntervalMs = options.pingIntervalMs ?? DEFAULT_PING_INTERVAL_MS;

    ws.binaryType = 'nodebuffer';
    ws.on('message', (data: RawData, isBinary: boolean) => this.onMessage(data as Buffer, isBinary));
    ws.on('pong', () => (this.lastSeen = Date.now()));
    ws.on('ping', () => (this.lastSeen = Date.now()));
    ws.on('error', (err: Error & { code?: string }) => {
      const tooLarge = err.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH';
      this.log.debug('connection error', { conn: this.id, error: err.message });
      this.shutdown(new DfsError(tooLarge ? 'TOO_LARGE' : 'CLOSED', tooLarge ? 'message over the size limit' : `connection error: ${err.message}`));
    });
    ws.on('close', (code: number, reason: Buffer) => {
      const text = reason.toString() || closeMessages[code] || `closed with code ${code}`;
      this.shutdown(new DfsError(code === 1009 ? 'TOO_LARGE' : 'CLOSED', `connection closed: ${text}`));
    });
    this.pingTimer = setInterval(() => {
      if (Date.now() - this.lastSeen > this.deadAfterMs) {
        this.log.debug('peer silent, dropping connection', { conn: this.id, label: this.label || undefined, silentMs: Date.now() - this.lastSeen });
        this.ws.terminate();
        this.shutdown(new DfsError('CLOSED', `peer did not answer pings for ${this.deadAfterMs} ms`, { silent: true }));
        return;
      }
      if (this.ws.readyState === WebSocket.OPEN) this.ws.ping();
    }, pingIntervalMs);
    this.pingTimer.unref();
  }

  get closed(): boolean {
    return this.closedWith !== null;
  }

  /** Runs when the connection ends for any reason (at once if it already has). */
  onClose(hook: (err: DfsError) => void): void {
    if (this.closedWith) hook(this.closedWith);
    else this.closeHooks.push(hook);
  }

  onEvent(listener: (ev: string, data: unknown) => void): void {
    this.eventListeners.push(listener);
  }

  close(code = 1000, reason = ''): void {
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) this.ws.close(code, reason);
    this.shutdown(new DfsError('CLOSED', reason ? `connection closed: ${reason}` : 'connection closed'));
  }

  /** Ends the connection without the closing handshake, as a crash would. */
  terminate(): void {
    this.ws.terminate();
    this.shutdown(new DfsError('CLOSED', 'connection terminated'));
  }

  notify(ev: string, data: unknown): void {
    this.send({ t: 'evt', ev, data });
  }

  call(op: string, args: unknown, options: CallOptions = {}): Promise<Response> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    const id = ++this.nextId;
    return new Promise<Response>((resolve, reject) => {
      const pending: Pending = {
        op,
        resolve,
        reject,
        timer: null,
        timeoutMs: options.timeoutMs ?? this.callTimeoutMs,
        onEvent: options.onEvent,
        onLateResult: options.onLateResult,
      };
      this.pending.set(id, pending);
      const signal = options.signal;
      if (signal) {
        const onAbort = () => {
          if (!this.pending.has(id)) return;
          this.finish(id);
          if (pending.onLateResult) this.cancelled.set(id, pending.onLateResult);
          this.stopStream(`u${id}`, new DfsError('CANCELLED', 'cancelled'));
          this.send({ t: 'cancel', id });
          reject(new DfsError('CANCELLED', `${op} cancelled`));
        };
        if (signal.aborted) {
          queueMicrotask(onAbort);
        } else {
          signal.addEventListener('abort', onAbort, { once: true });
        }
      }
      if (options.stream) {
        this.send({ t: 'req', id, op, args, stream: true });
        this.pump(id, true, options.stream).then(
          () => this.armTimer(id),
          (err: unknown) => {
            const error = toDfsError(err);
            if (this.pending.has(id)) {
              this.finish(id);
              this.send({ t: 'cancel', id });
              reject(error);
            }
          },
        );
      } else {
        this.send({ t: 'req', id, op, args }, options.body);
        this.armTimer(id);
      }
    });
  }

  private armTimer(id: number): void {
    const pending = this.pending.get(id);
    if (!pending || pending.timeoutMs <= 0 || !Number.isFinite(pending.timeoutMs)) return;
    pending.timer = setTimeout(() => {
      if (!this.pending.has(id)) return;
      this.finish(id);
      this.send({ t: 'cancel', id });
      pending.reject(new DfsError('TIMEOUT', `no answer to ${pending.op} within ${pending.timeoutMs} ms`));
    }, pending.timeoutMs);
  }

  private finish(id: number): Pending | undefined {
    const pending = this.pending.get(id);
    if (!pending) return undefined;
    this.pending.delete(id);
    if (pending.timer) clearTimeout(pending.timer);
    return pending;
  }

  private send(frame: Frame, body?: Buffer): void {
    if (this.ws.readyState !== WebSocket.OPEN) return;
    this.ws.send(encodeFrame(frame, body));
  }

  private onMessage(data: Buffer, isBinary: boolean): void {
    this.lastSeen = Date.now();
    let frame: Frame;
    let body: Buffer | undefined;
    try {
      ({ frame, body } = decodeFrame(data, isBinary));
    } catch (err) {
      const error = toDfsError(err);
      const id = typeof error.details?.id === 'number' ? error.details.id : 0;
      this.log.debug('rejected malformed frame', { conn: this.id, error: error.message });
      this.send({ t: 'res', id, ok: false, error: { code: error.code, message: error.message } });
      return;
    }
    switch (frame.t) {
      case 'req':
        this.onRequest(frame, body);
        return;
      case 'res':
        this.onResponse(frame, body);
        return;
      case 'evt': {
        if (frame.re !== undefined) {
          this.pending.get(frame.re)?.onEvent?.(frame.ev, frame.data);
          return;
        }
        for (const listener of this.eventListeners) listener(frame.ev, frame.data);
        return;
      }
      case 'data':
        // Data for a stream we no longer track (its request failed or was cancelled) is dropped.
        this.incoming.get(`${frame.up ? 'u' : 'd'}${frame.id}`)?.push(body as Buffer);
        return;
      case 'end': {
        const key = `${frame.up ? 'u' : 'd'}${frame.id}`;
        this.incoming.get(key)?.end();
        this.incoming.delete(key);
        return;
      }
      case 'abort': {
        const key = `${frame.up ? 'u' : 'd'}${frame.id}`;
        this.incoming.get(key)?.fail(new DfsError(frame.error.code, frame.error.message));
        this.incoming.delete(key);
        return;
      }
      case 'ack': {
        const credit = this.credits.get(`${frame.up ? 'u' : 'd'}${frame.id}`);
        if (credit) {
          credit.inFlight = Math.max(0, credit.inFlight - frame.bytes);
          const wake = credit.wake;
          credit.wake = null;
          wake?.();
        }
        return;
      }
      case 'cancel': {
        this.active.get(frame.id)?.abort(new DfsError('CANCELLED', 'cancelled by the requester'));
        this.stopStream(`d${frame.id}`, new DfsError('CANCELLED', 'cancelled by the requester'));
        const key = `u${frame.id}`;
        this.incoming.get(key)?.fail(new DfsError('CANCELLED', 'cancelled by the requester'));
        this.incoming.delete(key);
        return;
      }
    }
  }

  private newIncoming(key: string, id: number, up: boolean): IncomingStream {
    const stream = new IncomingStream(
      (bytes) => this.send({ t: 'ack', id, up, bytes }),
      Math.max(1, Math.floor(this.windowBytes / 4)),
    );
    this.incoming.set(key, stream);
    return stream;
  }

  private onRequest(frame: Extract<Frame, { t: 'req' }>, body: Buffer | undefined): void {
    const { id } = frame;
    const handler = Object.hasOwn(this.handlers, frame.op) ? this.handlers[frame.op] : undefined;
    if (!handler) {
      const known = Object.keys(this.handlers).sort().join(', ');
      this.send({ t: 'res', id, ok: false, error: { code: 'BAD_REQUEST', message: `unknown operation ${JSON.stringify(frame.op)}; this service knows: ${known}` } });
      return;
    }
    if (this.active.has(id)) {
      this.send({ t: 'res', id, ok: false, error: { code: 'BAD_REQUEST', message: `request id ${id} is already in use` } });
      return;
    }
    const stream = frame.stream ? this.newIncoming(`u${id}`, id, true) : undefined;
    const active = new Active();
    this.active.set(id, active);
    const ctx: CallContext = {
      conn: this,
      requestId: id,
      body,
      stream,
      get signal() {
        return active.signal;
      },
      event: (ev, data) => this.send({ t: 'evt', ev, data, re: id }),
    };
    const started = this.log.enabled('debug') ? performance.now() : 0;
    new Promise<unknown>((resolve) => resolve(handler(frame.args, ctx)))
      .then(
        async (out) => {
          if (this.closedWith) return;
          if (out instanceof Reply) {
            if (out.stream) {
              this.send({ t: 'res', id, ok: true, result: out.result ?? null, stream: true });
              await this.pump(id, false, out.stream).catch((err: unknown) => {
                this.log.debug('response stream ended early', { conn: this.id, op: frame.op, error: toDfsError(err).message });
              });
            } else {
              this.send({ t: 'res', id, ok: true, result: out.result ?? null }, out.body);
            }
          } else {
            this.send({ t: 'res', id, ok: true, result: out ?? null });
          }
        },
        (err: unknown) => {
          const error = toDfsError(err);
          if (error.code === 'INTERNAL') this.log.error('request failed', { op: frame.op, conn: this.id, error: err instanceof Error ? (err.stack ?? err.message) : String(err) });
          this.send({ t: 'res', id, ok: false, error: error.toWire() });
        },
      )
      .finally(() => {
        this.active.delete(id);
        const key = `u${id}`;
        const left = this.incoming.get(key);
        if (left && !left.done) left.fail(new DfsError('CANCELLED', 'request finished before its stream'));
        this.incoming.delete(key);
        if (started) this.log.debug('served', { op: frame.op, conn: this.id, ms: (performance.now() - started).toFixed(3) });
      });
  }

  private onResponse(frame: Extract<Frame, { t: 'res' }>, body: Buffer | undefined): void {
    const pending = this.finish(frame.id);
    if (!pending) {
      const late = this.cancelled.get(frame.id);
      this.cancelled.delete(frame.id);
      if (late && frame.ok) late(frame.result);
      if (frame.ok && frame.stream) this.send({ t: 'cancel', id: frame.id });
      return;
    }
    if (!frame.ok) {
      this.stopStream(`u${frame.id}`, new DfsError(frame.error.code, frame.error.message));
      pending.reject(new DfsError(frame.error.code, frame.error.message, frame.error.details));
      return;
    }
    const stream = frame.stream ? this.newIncoming(`d${frame.id}`, frame.id, false) : undefined;
    pending.resolve({ result: frame.result, body, stream });
  }

  private stopStream(key: string, err: DfsError): void {
    const credit = this.credits.get(key);
    if (!credit) return;
    credit.stopped = err;
    const wake = credit.wake;
    credit.wake = null;
    wake?.();
  }

  /** Sends a stream in chunks, never more than the window ahead of the receiver's acks. */
  private async pump(id: number, up: boolean, source: AsyncIterable<Buffer>): Promise<void> {
    const key = `${up ? 'u' : 'd'}${id}`;
    const credit: Credit = { inFlight: 0, wake: null, stopped: null };
    this.credits.set(key, credit);
    try {
      for await (const chunk of source) {
        for (let offset = 0; offset < chunk.length; offset += this.chunkBytes) {
          const piece = chunk.subarray(offset, offset + this.chunkBytes);
          while (!credit.stopped && !this.closedWith && credit.inFlight > 0 && credit.inFlight + piece.length > this.windowBytes) {
            await new Promise<void>((resolve) => (credit.wake = resolve));
          }
          if (credit.stopped) throw credit.stopped;
          if (this.closedWith) throw this.closedWith;
          credit.inFlight += piece.length;
          this.send({ t: 'data', id, up }, piece);
        }
      }
      if (credit.stopped) throw credit.stopped;
      this.send({ t: 'end', id, up });
    } catch (err) {
      const error = toDfsError(err);
      if (!credit.stopped) this.send({ t: 'abort', id, up, error: { code: error.code, message: error.message } satisfies WireError });
      throw error;
    } finally {
      this.credits.delete(key);
    }
  }

  private shutdown(err: DfsError): void {
    if (this.closedWith) return;
    this.closedWith = err;
    if (this.pingTimer) clearInterval(this.pingTimer);
    for (const id of [...this.pending.keys()]) this.finish(id)?.reject(err);
    for (const active of this.active.values()) active.abort(err);
    for (const stream of this.incoming.values()) stream.fail(err);
    this.incoming.clear();
    for (const key of this.credits.keys()) this.stopStream(key, err);
    for (const hook of this.closeHooks.splice(0)) {
      try {
        hook(err);
      } catch (hookErr) {
        this.log.error('close hook failed', { conn: this.id, error: toDfsError(hookErr).message });
      }
    }
  }
}

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
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, {
      maxPayload: options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES,
      handshakeTimeout: connectTimeoutMs,
      perMessageDeflate: false,
    });
    const fail = (err: Error & { code?: string }) => {
      ws.removeAllListeners();
      ws.on('error', () => {});
      ws.terminate();
      const why = err.code === 'ECONNREFUSED' ? 'connection refused' : err.message;
      reject(new DfsError('UNAVAILABLE', `cannot reach ${url}: ${why}`));
    };
    ws.once('error', fail);
    ws.once('unexpected-response', (_req, res: IncomingMessage) => fail(new Error(`unexpected HTTP ${res.statusCode}`)));
    ws.once('open', () => {
      ws.removeListener('error', fail);
      resolve(new RpcConnection(ws, options, url));
    });
  });
}

export interface ServerOptions extends ConnectionOptions {
  host: string;
  port: number;
  maxMessageBytes?: number;
  onConnection?: (conn: RpcConnection) => void;
}

export class RpcServer {
  readonly connections = new Set<RpcConnection>();
  private wss: WebSocketServer | null = null;
  private boundPort = 0;

  constructor(private readonly options: ServerOptions) {}

  get port(): number {
    return this.boundPort;
  }

  get url(): string {
    return `ws://${this.options.host.includes(':') ? `[${this.options.host}]` : this.options.host}:${this.boundPort}`;
  }

  listen(): Promise<number> {
    const { host, port } = this.options;
    return new Promise((resolve, reject) => {
      const wss = new WebSocketServer({
        host,
        port,
        maxPayload: this.options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES,
        perMessageDeflate: false,
        clientTracking: false,
      });
      const onError = (err: Error & { code?: string }) => {
        wss.close();
        if (err.code === 'EADDRINUSE') reject(new DfsError('UNAVAILABLE', `port ${port} on ${host} is already in use; pick another with --port`));
        else if (err.code === 'EADDRNOTAVAIL') reject(new DfsError('UNAVAILABLE', `address ${host} is not available on this machine`));
        else reject(new DfsError('UNAVAILABLE', `cannot listen on ${host}:${port}: ${err.message}`));
      };
      wss.once('error', onError);
      wss.once('listening', () => {
        wss.removeListener('error', onError);
        wss.on('error', (err) => this.options.log?.error('server error', { error: err.message }));
        const address = wss.address();
        this.boundPort = typeof address === 'object' && address !== null ? address.port : port;
        this.wss = wss;
        resolve(this.boundPort);
      });
      wss.on('connection', (ws, req) => {
        const conn = new RpcConnection(ws, this.options, `${req.socket.remoteAddress ?? '?'}:${req.socket.remotePort ?? '?'}`);
        this.connections.add(conn);
        conn.onClose(() => this.connections.delete(conn));
        this.options.onConnection?.(conn);
      });
    });
  }

  /** Closes every connection (1001, going away) and stops listening. */
  close(): Promise<void> {
    for (const conn of this.connections) conn.close(1001, 'server shutting down');
    const wss = this.wss;
    this.wss = null;
    if (!wss) return Promise.resolve();
    return new Promise((resolve) => wss.close(() => resolve()));
  }
}
