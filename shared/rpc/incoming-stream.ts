/**
 * The receiving end of a stream, and the credit it grants its sender.
 *
 * Flow control is credit-based and the receiver is in charge: a new stream's sender may send
 * INITIAL_STREAM_CREDIT bytes; every further byte needs credit the receiver grants with `ack`
 * frames. The receiver grants as its consumer takes chunks, up to a per-stream window, and only
 * while the connection's streams together stay within its budget. So one connection can make
 * this process hold at most max(budget, streams x initial credit) bytes of stream content, and
 * a sender that goes past its credit is breaking the protocol: `push` reports it, and the
 * connection drops that peer. Grants go out when a quarter of the target credit is free again,
 * so acks come in batches.
 */
import { DfsError } from '../errors.js';
import { INITIAL_STREAM_CREDIT } from './limits.js';

/** Credit outstanding (granted, not yet consumed) across one connection's incoming streams. */
export class InboundBudget {
  outstanding = 0;
  streams = 0;

  constructor(
    readonly budgetBytes: number,
    readonly windowBytes: number,
  ) {}

  /** The credit a stream holding `own` should have outstanding. */
  targetFor(own: number): number {
    const room = this.budgetBytes - (this.outstanding - own);
    return Math.max(INITIAL_STREAM_CREDIT, Math.min(this.windowBytes, room));
  }
}

export interface ProgressRule {
  /** Each period, the sender must deliver at least `minBytes` (or all it has credit for). */
  withinMs: number;
  minBytes: number;
}

export class IncomingStream implements AsyncIterable<Buffer> {
  private readonly queue: Buffer[] = [];
  private ended = false;
  private failure: DfsError | null = null;
  private wake: (() => void) | null = null;
  private iterated = false;
  private released = false;
  /** The consumer read it to the end. */
  private finished = false;
  private granted = INITIAL_STREAM_CREDIT;
  private received = 0;
  private consumed = 0;
  private watchdog: NodeJS.Timeout | null = null;

  constructor(
    private readonly sendGrant: (bytes: number) => void,
    private readonly budget: InboundBudget,
    /** Called when the consumer stops reading before the end, so the sender can be told. */
    private readonly onAbandon: () => void = () => {},
  ) {
    budget.outstanding += INITIAL_STREAM_CREDIT;
    budget.streams++;
    this.maybeGrant();
  }

  /** Queues a chunk. False when the sender went past the credit it was given. */
  push(chunk: Buffer): boolean {
    if (this.ended || this.failure) return true; // in flight when we gave up: dropped
    this.received += chunk.length;
    if (this.received > this.granted) return false;
    this.queue.push(chunk);
    this.notify();
    return true;
  }

  end(): void {
    if (this.failure) return;
    this.ended = true;
    this.stopWatchdog();
    this.notify();
  }

  fail(err: DfsError): void {
    if (this.failure || this.finished) return;
    this.failure = err;
    this.queue.length = 0;
    this.stopWatchdog();
    this.release();
    this.notify();
  }

  /**
   * The stream's request is over: whatever was not read is dropped and its credit given back,
   * whether the stream ended, failed, or was never read at all.
   */
  dispose(err: DfsError): void {
    if (!this.finished && !this.failure) this.failure = err;
    this.queue.length = 0;
    this.stopWatchdog();
    this.release();
    this.notify();
  }

  /** Ended or failed: nothing more will arrive. */
  get done(): boolean {
    return this.ended || this.failure !== null;
  }

  /** Bytes that arrived so far. */
  get bytesReceived(): number {
    return this.received;
  }

  /**
   * Fails the stream with TIMEOUT when its sender stops delivering: in any period in which it
   * had credit for at least `minBytes`, it must send that much. A sender held back by our own
   * slowness (no credit left) is not stalled.
   */
  requireProgress(rule: ProgressRule): void {
    this.stopWatchdog();
    if (this.done) return;
    let receivedAtStart = this.received;
    let availableAtStart = this.granted - this.received;
    this.watchdog = setInterval(() => {
      const delivered = this.received - receivedAtStart;
      if (availableAtStart > 0 && delivered < Math.min(rule.minBytes, availableAtStart)) {
        this.fail(new DfsError('TIMEOUT', `the sender stalled: ${delivered} bytes in ${rule.withinMs} ms`));
        return;
      }
      receivedAtStart = this.received;
      availableAtStart = this.granted - this.received;
    }, rule.withinMs);
    this.watchdog.unref();
  }

  private stopWatchdog(): void {
    if (this.watchdog) clearInterval(this.watchdog);
    this.watchdog = null;
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  private release(): void {
    if (this.released) return;
    this.released = true;
    this.budget.outstanding -= this.granted - this.consumed;
    this.budget.streams--;
  }

  private maybeGrant(): void {
    if (this.done) return;
    const own = this.granted - this.consumed;
    const target = this.budget.targetFor(own);
    const grant = target - own;
    if (grant < Math.max(1, target / 4)) return;
    this.granted += grant;
    this.budget.outstanding += grant;
    this.sendGrant(grant);
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Buffer> {
    if (this.iterated) throw new DfsError('INTERNAL', 'a stream can be read only once');
    this.iterated = true;
    try {
      for (;;) {
        const chunk = this.queue.shift();
        if (chunk !== undefined) {
          this.consumed += chunk.length;
          // Taken by the consumer: no longer held here, so no longer outstanding credit.
          this.budget.outstanding -= chunk.length;
          this.maybeGrant();
          yield chunk;
          continue;
        }
        if (this.failure) throw this.failure;
        if (this.ended) {
          this.finished = true;
          return;
        }
        await new Promise<void>((resolve) => (this.wake = resolve));
      }
    } finally {
      if (!this.finished && !this.failure) {
        this.failure = new DfsError('CANCELLED', 'the reader stopped reading the stream');
        this.onAbandon();
      }
      this.queue.length = 0;
      this.stopWatchdog();
      this.release();
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
