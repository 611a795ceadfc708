/**
 * A bounded in-memory hand-off between a producer that pushes chunks and a consumer that
 * iterates them (a file server forwarding a client's stream to a replica). push() waits while
 * more than `highWaterBytes` are queued, which carries the consumer's pace back to the producer.
 * When the consumer fails, fail() makes push() drop chunks instead of waiting forever.
 */
export class ChunkPipe implements AsyncIterable<Buffer> {
  private readonly queue: Buffer[] = [];
  private queuedBytes = 0;
  private ended = false;
  private failure: Error | null = null;
  private readerWake: (() => void) | null = null;
  private writerWake: (() => void) | null = null;

  constructor(private readonly highWaterBytes = 2 << 20) {}

  get failed(): Error | null {
    return this.failure;
  }

  async push(chunk: Buffer): Promise<void> {
    if (this.failure || this.ended) return;
    this.queue.push(chunk);
    this.queuedBytes += chunk.length;
    this.wakeReader();
    while (this.queuedBytes > this.highWaterBytes && !this.failure) {
      await new Promise<void>((resolve) => (this.writerWake = resolve));
    }
  }

  end(): void {
    this.ended = true;
    this.wakeReader();
  }

  /** The consumer is gone (or the producer gives up): stop waiting, drop what is queued. */
  fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    this.queue.length = 0;
    this.queuedBytes = 0;
    this.wakeReader();
    this.wakeWriter();
  }

  private wakeReader(): void {
    const wake = this.readerWake;
    this.readerWake = null;
    wake?.();
  }

  private wakeWriter(): void {
    const wake = this.writerWake;
    this.writerWake = null;
    wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Buffer> {
    for (;;) {
      const chunk = this.queue.shift();
      if (chunk !== undefined) {
        this.queuedBytes -= chunk.length;
        if (this.queuedBytes <= this.highWaterBytes) this.wakeWriter();
        yield chunk;
        continue;
      }
      if (this.failure) throw this.failure;
      if (this.ended) return;
      await new Promise<void>((resolve) => (this.readerWake = resolve));
    }
  }
}
