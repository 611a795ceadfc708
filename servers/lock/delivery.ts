/**
 * Hands out work in bounded batches, in the order it was queued, yielding to the event loop
 * between batches. The lock service delivers grants and `queued` events through it: one
 * session dropping a thousand locks with a hundred waiters each makes a hundred thousand
 * messages, and sending them in one go would keep pings and every other client waiting.
 */
export type Schedule = (run: () => void) => void;

export const DEFAULT_BATCH = 256;

export class BatchedDelivery<T> {
  private queue: T[] = [];
  private head = 0;
  private scheduled = false;

  constructor(
    private readonly deliver: (item: T) => void,
    private readonly batch = DEFAULT_BATCH,
    private readonly schedule: Schedule = (run) => void setImmediate(run),
    /** A delivery that throws is reported here; the ones after it still go out. */
    private readonly onError: (err: unknown) => void = () => {},
  ) {}

  push(item: T): void {
    this.queue.push(item);
    if (!this.scheduled) {
      this.scheduled = true;
      this.schedule(() => this.runBatch());
    }
  }

  /** Items queued and not yet delivered. */
  get pending(): number {
    return this.queue.length - this.head;
  }

  private runBatch(): void {
    const end = Math.min(this.queue.length, this.head + this.batch);
    while (this.head < end) {
      const item = this.queue[this.head]!;
      this.queue[this.head++] = undefined as T; // let it be collected
      try {
        this.deliver(item);
      } catch (err) {
        this.onError(err);
      }
    }
    if (this.head === this.queue.length) {
      this.queue = [];
      this.head = 0;
      this.scheduled = false;
      return;
    }
    this.schedule(() => this.runBatch());
  }
}
