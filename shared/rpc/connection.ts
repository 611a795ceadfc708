/**
 * One peer, one WebSocket: requests both ways, pushed events, streams, pings.
 *
 * Rules enforced here (docs/PROTOCOL.md, "Frames"):
 * - Requests carry an id chosen by the requester; the answer carries the same id. Either side
 *   may make requests (the directory calls file servers back, file servers call each other), so
 *   each side numbers its own.
 * - Nothing is sent that the peer would refuse: a frame over the header limit or the peer's
 *   advertised message limit fails its call at once with TOO_LARGE (an answer that would be too
 *   large is replaced by a TOO_LARGE error with the request's id). A frame refused anyway is
 *   matched to its request by id, so that its caller fails fast rather than timing out.
 * - Every incoming frame is validated before it is acted on; a malformed one is answered with
 *   BAD_REQUEST and the connection goes on serving.
 * - Streams are flow-controlled by credit the receiver grants (incoming-stream.ts). A peer that
 *   sends past its credit is disconnected. Senders also wait while the socket's send buffer is
 *   over its high-water mark, across all of a connection's streams and answers.
 * - Both sides ping; a peer silent for `deadAfterMs` is taken for dead and its connection
 *   terminated. Silence is counted only while this process could have heard the peer: a stall of
 *   our own event loop, or our own pause in reading, is not held against it.
 */
import { randomBytes } from 'node:crypto';
import { WebSocket, type RawData } from 'ws';
import { DfsError, toDfsError, type WireError } from '../errors.js';
import type { ServiceIdentity } from '../tls/identity.js';
import { decodeFrame, encodeFrame, frameIdentity, messageBytes, type Frame } from '../frame.js';
import { silentLogger, type Logger } from '../log.js';
import type { CallContext, Handlers } from './handler.js';
import { Reply } from './handler.js';
import { InboundBudget, IncomingStream } from './incoming-stream.js';
import {
  DEFAULT_CALL_TIMEOUT_MS,
  DEFAULT_CHUNK_BYTES,
  DEFAULT_DEAD_AFTER_MS,
  DEFAULT_MAX_ACTIVE_REQUESTS,
  DEFAULT_MAX_INCOMING_STREAMS,
  DEFAULT_MAX_MESSAGE_BYTES,
  DEFAULT_OUTPUT_HIGH_WATER_BYTES,
  DEFAULT_PING_INTERVAL_MS,
  DEFAULT_STREAM_BUDGET_BYTES,
  DEFAULT_WINDOW_BYTES,
  INITIAL_STREAM_CREDIT,
  MIN_STREAM_PIECE_BYTES,
  type PeerLimits,
} from './limits.js';

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
  /** Most credit granted to one incoming stream. */
  windowBytes?: number;
  /** Most credit outstanding across all incoming streams of the connection. */
  streamBudgetBytes?: number;
  /** Incoming request streams open at once; more are refused with LIMIT. */
  maxIncomingStreams?: number;
  chunkBytes?: number;
  callTimeoutMs?: number;
  /** Send-buffer bytes past which senders wait. */
  outputHighWaterBytes?: number;
  /** Requests served at once past which the connection stops reading from its peer. */
  maxActiveRequests?: number;
  /** A stream whose receiver grants no credit for this long is aborted (default: dead-after x 15). */
  sendStallMs?: number;
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

/** What a stream's sender may still send, as granted by its receiver. */
interface Credit {
  available: number;
  wake: (() => void) | null;
  stopped: DfsError | null;
}

/** A wait for room in the send buffer. */
interface RoomWaiter {
  bytes: number;
  resolve: () => void;
  reject: (err: DfsError) => void;
}

/** A request being served. Its AbortController is made only if the handler asks for the signal. */
class Active {
  private controller: AbortController | null = null;
  private abortedWith: DfsError | null = null;
  /** Send-buffer room reserved for this request's answer. */
  reserved = 0;

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
  1008: 'the peer broke the protocol',
  1009: 'a message was over the size limit',
};

const DEFAULT_PEER: PeerLimits = { maxMessageBytes: DEFAULT_MAX_MESSAGE_BYTES };
/** Room left in a message for a data frame's header. */
const DATA_HEADER_ALLOWANCE = 1024;

export class RpcConnection {
  /** Random id, used in logs and in lock holder names. */
  readonly id: string;
  /** Free-form label a peer gives itself (a client name, a file server id). */
  label = '';
  /** Per-connection state a service hangs on the session. */
  readonly session = new Map<string, unknown>();
  /**
   * The cluster service at the other end, as its certificate from the cluster CA says (or, under
   * --insecure, as it claims); null for a user's client. Set once, before any frame is read.
   */
  service: ServiceIdentity | null = null;
  readonly remote: string;

  private nextId = 0;
  private readonly pending = new Map<number, Pending>();
  private readonly cancelled = new Map<number, (result: unknown) => void>();
  private readonly active = new Map<number, Active>();
  private readonly incoming = new Map<string, IncomingStream>();
  private readonly credits = new Map<string, Credit>();
  private readonly closeHooks: Array<(err: DfsError) => void> = [];
  private readonly eventListeners: Array<(ev: string, data: unknown) => void> = [];
  private readonly handlers: Handlers;
  private readonly log: Logger;
  private readonly chunkBytes: number;
  private readonly callTimeoutMs: number;
  private readonly deadAfterMs: number;
  private readonly pingIntervalMs: number;
  private readonly highWater: number;
  private readonly maxActive: number;
  private readonly maxIncomingStreams: number;
  private readonly sendStallMs: number;
  private readonly budget: InboundBudget;
  private uploads = 0;
  private reserved = 0;
  private readonly roomWaiters: RoomWaiter[] = [];
  /** Why reading from the peer is paused: too many of its requests in service, or our send buffer over its mark. */
  private readonly pausedFor = new Set<'busy' | 'output'>();
  /** Last time the peer showed life without a frame: it took what we sent, or one of its requests finished. */
  private lastProgress = 0;
  private lastSeen = Date.now();
  private lastTick = Date.now();
  private lastBuffered = 0;
  private pingTimer: NodeJS.Timeout | null = null;
  private closedWith: DfsError | null = null;

  constructor(
    private readonly ws: WebSocket,
    options: ConnectionOptions = {},
    remote = '',
    private readonly peer: PeerLimits = DEFAULT_PEER,
  ) {
    this.id = randomBytes(6).toString('hex');
    this.remote = remote;
    this.handlers = options.handlers ?? {};
    this.log = options.log ?? silentLogger;
    this.chunkBytes = Math.max(MIN_STREAM_PIECE_BYTES, Math.min(options.chunkBytes ?? DEFAULT_CHUNK_BYTES, peer.maxMessageBytes - DATA_HEADER_ALLOWANCE));
    this.callTimeoutMs = options.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    this.deadAfterMs = options.deadAfterMs ?? DEFAULT_DEAD_AFTER_MS;
    this.pingIntervalMs = options.pingIntervalMs ?? DEFAULT_PING_INTERVAL_MS;
    this.highWater = options.outputHighWaterBytes ?? DEFAULT_OUTPUT_HIGH_WATER_BYTES;
    this.maxActive = options.maxActiveRequests ?? DEFAULT_MAX_ACTIVE_REQUESTS;
    this.maxIncomingStreams = options.maxIncomingStreams ?? DEFAULT_MAX_INCOMING_STREAMS;
    this.sendStallMs = options.sendStallMs ?? this.deadAfterMs * 15;
    this.budget = new InboundBudget(options.streamBudgetBytes ?? DEFAULT_STREAM_BUDGET_BYTES, options.windowBytes ?? DEFAULT_WINDOW_BYTES);

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
    this.pingTimer = setInterval(() => this.tick(), this.pingIntervalMs);
    this.pingTimer.unref();
  }

  get closed(): boolean {
    return this.closedWith !== null;
  }

  /** The largest message the peer said it accepts. */
  get peerMaxMessageBytes(): number {
    return this.peer.maxMessageBytes;
  }

  /** Bytes queued for the socket plus room reserved for answers being made: what this connection holds for sending. */
  get outputBacklog(): number {
    return this.ws.bufferedAmount + this.reserved;
  }

  /** Whether this connection has stopped reading from its peer (too busy, or its answers not taken). */
  get readingPaused(): boolean {
    return this.pausedFor.size > 0;
  }

  /** Senders (answers, stream pieces) waiting for room in the send buffer. */
  get waitingForRoom(): number {
    return this.roomWaiters.length;
  }

  /** Milliseconds since anything (a frame, a ping or a pong) last came from the peer. */
  get silentMs(): number {
    return Date.now() - this.lastSeen;
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

  /** Asks the peer for a sign of life now, rather than at the next ping. */
  probe(): void {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.ping();
  }

  notify(ev: string, data: unknown): void {
    try {
      this.sendFrame({ t: 'evt', ev, data });
    } catch (err) {
      this.log.warn('event not sent', { conn: this.id, ev, error: toDfsError(err).message });
    }
  }

  // ------------------------------------------------------------ calls

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
      try {
        if (options.stream) this.sendFrame({ t: 'req', id, op, args, stream: true });
        else this.sendFrame({ t: 'req', id, op, args }, options.body);
      } catch (err) {
        this.finish(id);
        const error = toDfsError(err);
        this.log.warn('request not sent', { conn: this.id, op, error: error.message });
        reject(new DfsError(error.code, `${op} was not sent: ${error.message}`, error.details));
        return;
      }
      const signal = options.signal;
      if (signal) {
        const onAbort = () => {
          if (!this.pending.has(id)) return;
          this.finish(id);
          if (pending.onLateResult) this.cancelled.set(id, pending.onLateResult);
          this.stopStream(`u${id}`, new DfsError('CANCELLED', 'cancelled'));
          this.sendQuietly({ t: 'cancel', id });
          reject(new DfsError('CANCELLED', `${op} cancelled`));
        };
        if (signal.aborted) queueMicrotask(onAbort);
        else signal.addEventListener('abort', onAbort, { once: true });
      }
      if (options.stream) {
        this.pump(id, true, options.stream).then(
          () => this.armTimer(id),
          (err: unknown) => {
            if (!this.pending.has(id)) return;
            this.finish(id);
            this.sendQuietly({ t: 'cancel', id });
            reject(toDfsError(err));
          },
        );
      } else {
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
      this.sendQuietly({ t: 'cancel', id });
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

  // ------------------------------------------------------------ sending

  /** Sends a frame; TOO_LARGE when the peer would refuse it. Nothing is sent after close. */
  private sendFrame(frame: Frame, body?: Buffer): void {
    if (this.ws.readyState !== WebSocket.OPEN) return;
    const data = encodeFrame(frame, body);
    const bytes = messageBytes(data);
    if (bytes > this.peer.maxMessageBytes) {
      throw new DfsError('TOO_LARGE', `a ${bytes}-byte message is over the peer's ${this.peer.maxMessageBytes}-byte limit`, { bytes });
    }
    this.ws.send(data, this.afterWrite);
    // Answers of any kind count: past the mark, stop taking requests until the peer reads.
    if (this.ws.bufferedAmount + this.reserved > this.highWater) this.pauseReading('output');
  }

  /** For small control frames, which cannot be too large; a failure is only logged. */
  private sendQuietly(frame: Frame): void {
    try {
      this.sendFrame(frame);
    } catch (err) {
      this.log.warn('frame not sent', { conn: this.id, t: frame.t, error: toDfsError(err).message });
    }
  }

  /** Answers request `id`; an answer the peer would refuse becomes a TOO_LARGE error. */
  private answer(id: number, op: string, frame: Frame, body?: Buffer): boolean {
    try {
      this.sendFrame(frame, body);
      return true;
    } catch (err) {
      const error = toDfsError(err);
      this.log.warn('answer too large to send; sent an error instead', { conn: this.id, op, error: error.message });
      this.sendQuietly({ t: 'res', id, ok: false, error: { code: error.code, message: `the answer to ${op} was not sent: ${error.message}` } });
      return false;
    }
  }

  /** Called as each write reaches the socket: the send buffer shrank, waiters may go on. */
  private readonly afterWrite = (): void => {
    if (this.roomWaiters.length > 0) this.grantRoom();
    if (this.pausedFor.has('output') && this.ws.bufferedAmount + this.reserved <= this.highWater / 2) this.resumeReading('output');
  };

  private fits(bytes: number): boolean {
    const buffered = this.ws.bufferedAmount;
    return buffered + this.reserved + bytes <= this.highWater || (this.reserved === 0 && buffered <= this.highWater);
  }

  /** Waits (in arrival order) for room for `bytes` in the send buffer, and reserves it. */
  private acquireOutput(bytes: number): Promise<void> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    if (this.roomWaiters.length === 0 && this.fits(bytes)) {
      this.reserved += bytes;
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      this.roomWaiters.push({ bytes, resolve, reject });
      // Nothing may be in flight to call afterWrite: look again once the socket drains a little.
      this.watchForRoom();
    });
  }

  private releaseOutput(bytes: number): void {
    this.reserved = Math.max(0, this.reserved - bytes);
    if (this.roomWaiters.length > 0) this.grantRoom();
  }

  private grantRoom(): void {
    while (this.roomWaiters.length > 0 && this.fits(this.roomWaiters[0]!.bytes)) {
      const waiter = this.roomWaiters.shift()!;
      this.reserved += waiter.bytes;
      waiter.resolve();
    }
    if (this.roomWaiters.length > 0) this.watchForRoom();
  }

  private roomTimer: NodeJS.Timeout | null = null;

  private watchForRoom(): void {
    if (this.roomTimer || this.closedWith) return;
    this.roomTimer = setTimeout(() => {
      this.roomTimer = null;
      this.grantRoom();
    }, 10);
    this.roomTimer.unref();
  }

  // ------------------------------------------------------------ receiving

  private onMessage(data: Buffer, isBinary: boolean): void {
    this.lastSeen = Date.now();
    let frame: Frame;
    let body: Buffer | undefined;
    try {
      ({ frame, body } = decodeFrame(data, isBinary));
    } catch (err) {
      const error = toDfsError(err);
      const guessed = typeof error.details?.id === 'number' ? { t: 'req', id: error.details.id } : null;
      this.refused(frameIdentity(data, isBinary) ?? guessed, error);
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
      case 'data': {
        // Data for a stream we no longer track (its request failed or was cancelled) is dropped.
        const stream = this.incoming.get(`${frame.up ? 'u' : 'd'}${frame.id}`);
        if (stream && !stream.push(body as Buffer)) this.violation(`stream ${frame.id} sent past the credit it was granted`);
        return;
      }
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
          credit.available += frame.bytes;
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

  /** A frame that could not be accepted: tell whoever it concerns, by the id it carried. */
  private refused(who: { t: string; id: number } | null, error: DfsError): void {
    const fields = { conn: this.id, t: who?.t, id: who?.id, error: error.message };
    if (error.code === 'TOO_LARGE') this.log.warn('refused a frame', fields);
    else this.log.debug('refused a malformed frame', fields);
    if (who?.t === 'res') {
      // The peer's answer to our request cannot be taken: fail that call now.
      const pending = this.finish(who.id);
      this.stopStream(`u${who.id}`, error);
      pending?.reject(new DfsError(error.code, `the answer to ${pending.op} was refused: ${error.message}`));
      return;
    }
    if (who?.t === 'data' || who?.t === 'end' || who?.t === 'abort') {
      for (const key of [`u${who.id}`, `d${who.id}`]) {
        this.incoming.get(key)?.fail(error);
        this.incoming.delete(key);
      }
      return;
    }
    if (who?.t === 'ack' || who?.t === 'cancel' || who?.t === 'evt') return;
    this.sendQuietly({ t: 'res', id: who?.id ?? 0, ok: false, error: { code: error.code, message: error.message } });
  }

  /** The peer broke flow control: it would make us hold unbounded memory, so it goes. */
  private violation(what: string): void {
    this.log.warn('peer broke flow control; disconnecting', { conn: this.id, label: this.label || undefined, remote: this.remote, problem: what });
    if (this.ws.readyState === WebSocket.OPEN) this.ws.close(1008, 'flow control violated');
    this.shutdown(new DfsError('BAD_REQUEST', `connection closed: ${what}`));
  }

  private newIncoming(key: string, id: number, up: boolean): IncomingStream {
    const stream = new IncomingStream(
      (bytes) => this.sendQuietly({ t: 'ack', id, up, bytes }),
      this.budget,
      // A response stream its reader gave up on: the responder stops sending.
      up ? undefined : () => this.sendQuietly({ t: 'cancel', id }),
    );
    this.incoming.set(key, stream);
    return stream;
  }

  private onRequest(frame: Extract<Frame, { t: 'req' }>, body: Buffer | undefined): void {
    const { id } = frame;
    const handler = Object.hasOwn(this.handlers, frame.op) ? this.handlers[frame.op] : undefined;
    if (!handler) {
      const known = Object.keys(this.handlers).sort().join(', ');
      this.sendQuietly({ t: 'res', id, ok: false, error: { code: 'BAD_REQUEST', message: `unknown operation ${JSON.stringify(frame.op)}; this service knows: ${known}` } });
      return;
    }
    if (this.active.has(id)) {
      this.sendQuietly({ t: 'res', id, ok: false, error: { code: 'BAD_REQUEST', message: `request id ${id} is already in use` } });
      return;
    }
    if (frame.stream && this.uploads >= this.maxIncomingStreams) {
      // Its data frames find no stream and are dropped, so a refused upload costs nothing.
      this.sendQuietly({ t: 'res', id, ok: false, error: { code: 'LIMIT', message: `${this.uploads} uploads are already open on this connection, the most allowed; retry when one ends` } });
      return;
    }
    const stream = frame.stream ? this.newIncoming(`u${id}`, id, true) : undefined;
    if (stream) this.uploads++;
    const active = new Active();
    this.active.set(id, active);
    this.pauseIfBusy();
    const ctx: CallContext = {
      conn: this,
      requestId: id,
      body,
      stream,
      get signal() {
        return active.signal;
      },
      event: (ev, data) => {
        try {
          this.sendFrame({ t: 'evt', ev, data, re: id });
        } catch (err) {
          this.log.warn('event not sent', { conn: this.id, op: frame.op, ev, error: toDfsError(err).message });
        }
      },
      reserveOutput: async (bytes) => {
        await this.acquireOutput(bytes);
        if (this.active.get(id) === active) active.reserved += bytes;
        else this.releaseOutput(bytes);
      },
    };
    const started = this.log.enabled('debug') ? performance.now() : 0;
    new Promise<unknown>((resolve) => resolve(handler(frame.args, ctx)))
      .then(
        async (out) => {
          if (this.closedWith) return;
          if (!(out instanceof Reply)) {
            this.answer(id, frame.op, { t: 'res', id, ok: true, result: out ?? null });
            return;
          }
          if (out.stream) {
            if (!this.answer(id, frame.op, { t: 'res', id, ok: true, result: out.result ?? null, stream: true })) return;
            await this.pump(id, false, out.stream).catch((err: unknown) => {
              this.log.debug('response stream ended early', { conn: this.id, op: frame.op, error: toDfsError(err).message });
            });
            return;
          }
          // A large body nobody reserved room for still waits for the send buffer to drain.
          const bytes = out.body?.length ?? 0;
          const unreserved = active.reserved === 0 && bytes >= MIN_STREAM_PIECE_BYTES;
          if (unreserved) await this.acquireOutput(bytes);
          try {
            this.answer(id, frame.op, { t: 'res', id, ok: true, result: out.result ?? null }, out.body);
          } finally {
            if (unreserved) this.releaseOutput(bytes);
          }
        },
        (err: unknown) => {
          const error = toDfsError(err);
          if (error.code === 'INTERNAL') this.log.error('request failed', { op: frame.op, conn: this.id, error: err instanceof Error ? (err.stack ?? err.message) : String(err) });
          this.answer(id, frame.op, { t: 'res', id, ok: false, error: error.toWire() });
        },
      )
      .catch((err: unknown) => this.log.debug('answer not sent', { conn: this.id, op: frame.op, error: toDfsError(err).message }))
      .finally(() => {
        this.active.delete(id);
        if (active.reserved > 0) this.releaseOutput(active.reserved);
        if (stream) {
          this.uploads--;
          stream.dispose(new DfsError('CANCELLED', 'request finished before its stream'));
          this.incoming.delete(`u${id}`);
        }
        this.resumeIfIdle();
        if (started) this.log.debug('served', { op: frame.op, conn: this.id, ms: (performance.now() - started).toFixed(3) });
      });
  }

  /** Too many requests in service: stop reading until some finish (TCP carries the pressure back). */
  private pauseIfBusy(): void {
    if (this.active.size >= this.maxActive) this.pauseReading('busy');
  }

  private resumeIfIdle(): void {
    this.lastProgress = Date.now();
    if (this.active.size <= (this.maxActive * 3) / 4) this.resumeReading('busy');
  }

  private pauseReading(reason: 'busy' | 'output'): void {
    if (this.pausedFor.has(reason)) return;
    if (this.pausedFor.size === 0) this.ws.pause();
    this.pausedFor.add(reason);
    const why = reason === 'busy' ? 'peer has too many requests in service' : 'send buffer over its mark (the peer is not reading)';
    this.log.warn(`${why}; reading paused`, { conn: this.id, label: this.label || undefined, active: this.active.size, buffered: this.ws.bufferedAmount });
  }

  private resumeReading(reason: 'busy' | 'output'): void {
    if (!this.pausedFor.delete(reason) || this.pausedFor.size > 0 || this.closedWith) return;
    this.ws.resume();
  }

  private onResponse(frame: Extract<Frame, { t: 'res' }>, body: Buffer | undefined): void {
    const pending = this.finish(frame.id);
    // The responder is done with the request: whatever upload is still going is of no use to it.
    this.stopStream(`u${frame.id}`, new DfsError(frame.ok ? 'CANCELLED' : frame.error.code, frame.ok ? 'answered before the upload ended' : frame.error.message));
    if (!pending) {
      const late = this.cancelled.get(frame.id);
      this.cancelled.delete(frame.id);
      if (late && frame.ok) late(frame.result);
      if (frame.ok && frame.stream) this.sendQuietly({ t: 'cancel', id: frame.id });
      return;
    }
    if (!frame.ok) {
      pending.reject(new DfsError(frame.error.code, frame.error.message, frame.error.details));
      return;
    }
    const stream = frame.stream ? this.newIncoming(`d${frame.id}`, frame.id, false) : undefined;
    pending.resolve({ result: frame.result, body, stream });
  }

  // ------------------------------------------------------------ streams out

  private stopStream(key: string, err: DfsError): void {
    const credit = this.credits.get(key);
    if (!credit) return;
    credit.stopped = err;
    const wake = credit.wake;
    credit.wake = null;
    wake?.();
  }

  /** Waits until the receiver has granted at least `bytes` of credit; TIMEOUT when it stalls. */
  private async waitForCredit(credit: Credit, bytes: number): Promise<void> {
    while (!credit.stopped && !this.closedWith && credit.available < bytes) {
      let timer: NodeJS.Timeout | undefined;
      const granted = await new Promise<boolean>((resolve) => {
        credit.wake = () => resolve(true);
        timer = setTimeout(() => resolve(false), this.sendStallMs);
      });
      clearTimeout(timer);
      credit.wake = null;
      if (!granted) throw new DfsError('TIMEOUT', `the receiver granted no credit for ${this.sendStallMs} ms`);
    }
  }

  /**
   * Sends a stream in pieces, never past the credit the receiver granted, nor past the send
   * buffer's mark. An answer's content is pulled from its source only once it can go (credit for
   * a piece, room for a chunk): a peer that pipelines reads and never takes them cannot make this
   * process read files, or hold them open, for it. An upload is fed by another connection (a
   * client's write flowing on to a replica), so it takes its chunk first and waits after: holding
   * room here while waiting on another peer could tie two connections into a knot.
   */
  private async pump(id: number, up: boolean, source: AsyncIterable<Buffer>): Promise<void> {
    const key = `${up ? 'u' : 'd'}${id}`;
    const credit: Credit = { available: INITIAL_STREAM_CREDIT, wake: null, stopped: null };
    this.credits.set(key, credit);
    const iterator = source[Symbol.asyncIterator]();
    let exhausted = false;
    try {
      for (;;) {
        let held = 0;
        if (!up) {
          await this.waitForCredit(credit, MIN_STREAM_PIECE_BYTES);
          await this.acquireOutput(this.chunkBytes);
          held = this.chunkBytes;
        }
        try {
          const next = await iterator.next();
          if (next.done) {
            exhausted = true;
            break;
          }
          await this.sendChunk(id, up, credit, next.value, held === 0);
        } finally {
          if (held > 0) this.releaseOutput(held);
        }
      }
      if (credit.stopped) throw credit.stopped;
      this.sendFrame({ t: 'end', id, up });
    } catch (err) {
      const error = toDfsError(err);
      if (!credit.stopped) this.sendQuietly({ t: 'abort', id, up, error: { code: error.code, message: error.message } satisfies WireError });
      throw error;
    } finally {
      this.credits.delete(key);
      if (!exhausted) void Promise.resolve(iterator.return?.()).catch(() => {});
    }
  }

  /** Sends one chunk in pieces as credit allows; `reserve`: wait for send-buffer room per piece. */
  private async sendChunk(id: number, up: boolean, credit: Credit, chunk: Buffer, reserve: boolean): Promise<void> {
    let offset = 0;
    while (offset < chunk.length) {
      const left = chunk.length - offset;
      await this.waitForCredit(credit, Math.min(left, MIN_STREAM_PIECE_BYTES));
      if (credit.stopped) throw credit.stopped;
      if (this.closedWith) throw this.closedWith;
      const size = Math.min(this.chunkBytes, credit.available, left);
      if (reserve) await this.acquireOutput(size);
      try {
        this.sendFrame({ t: 'data', id, up }, chunk.subarray(offset, offset + size));
      } finally {
        if (reserve) this.releaseOutput(size);
      }
      credit.available -= size;
      offset += size;
    }
  }

  // ------------------------------------------------------------ liveness and shutdown

  private tick(): void {
    const now = Date.now();
    // A late tick means this process stalled; the peer could not have been heard meanwhile.
    const late = now - this.lastTick - this.pingIntervalMs;
    this.lastTick = now;
    if (late > this.pingIntervalMs) this.lastSeen = Math.min(now, this.lastSeen + late);
    // The peer taking what we send is a sign of life, as is one of its requests finishing. A peer
    // we stopped reading gets no other credit: one that neither reads nor lets a request finish
    // for the dead-peer time is dropped like a silent one.
    const buffered = this.ws.bufferedAmount;
    if (buffered < this.lastBuffered) this.lastProgress = now;
    this.lastBuffered = buffered;
    if (this.lastProgress > this.lastSeen) this.lastSeen = this.lastProgress;
    if (this.pausedFor.has('output') && buffered + this.reserved <= this.highWater / 2) this.resumeReading('output');
    if (now - this.lastSeen > this.deadAfterMs) {
      // Frames may be waiting in the socket behind this timer: let them be read first.
      setImmediate(() => this.judgeSilence());
      return;
    }
    if (this.ws.readyState === WebSocket.OPEN) this.ws.ping();
  }

  private judgeSilence(): void {
    if (this.closedWith) return;
    const silentMs = Date.now() - Math.max(this.lastSeen, this.lastProgress);
    if (silentMs <= this.deadAfterMs) {
      if (this.ws.readyState === WebSocket.OPEN) this.ws.ping();
      return;
    }
    this.log.debug('peer silent, dropping connection', { conn: this.id, label: this.label || undefined, silentMs, paused: [...this.pausedFor].join(',') || undefined });
    this.ws.terminate();
    this.shutdown(new DfsError('CLOSED', `peer did not answer pings for ${this.deadAfterMs} ms`, { silent: true }));
  }

  private shutdown(err: DfsError): void {
    if (this.closedWith) return;
    this.closedWith = err;
    if (this.pingTimer) clearInterval(this.pingTimer);
    if (this.roomTimer) clearTimeout(this.roomTimer);
    for (const id of [...this.pending.keys()]) this.finish(id)?.reject(err);
    for (const active of this.active.values()) active.abort(err);
    for (const stream of this.incoming.values()) stream.fail(err);
    this.incoming.clear();
    for (const key of this.credits.keys()) this.stopStream(key, err);
    for (const waiter of this.roomWaiters.splice(0)) waiter.reject(err);
    for (const hook of this.closeHooks.splice(0)) {
      try {
        hook(err);
      } catch (hookErr) {
        this.log.error('close hook failed', { conn: this.id, error: toDfsError(hookErr).message });
      }
    }
  }
}
