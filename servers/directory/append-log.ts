/**
 * An append-only file with group commit. An append resolves only once its bytes are written and
 * fsynced. Appends that arrive while a write+fsync is in flight are queued and written together
 * by the next one, so N concurrent appends cost about one fsync instead of N.
 *
 * A write or fsync failure is final: after it nothing written since the last good fsync can be
 * trusted (the page cache may have dropped it), so every pending and later append is rejected and
 * `onFailure` fires once; the owner should stop and let a restart recover from what is on disk.
 */
import { parse } from 'csv-parse/sync';
import { open, type FileHandle } from 'node:fs/promises';

interface Waiter {
  resolve: () => void;
  reject: (err: Error) => void;
}

export class AppendLog {
  private queued: string[] = [];
  private waiters: Waiter[] = [];
  private inFlight: Promise<void> | null = null;
  /** While held (by a compaction), queued appends wait and nothing is written. */
  private held = false;
  private failure: Error | null = null;
  private closed = false;

  private constructor(
    readonly path: string,
    private readonly handle: FileHandle,
    private readonly onFailure: (err: Error) => void,
  ) {}

  /** Opens (creating if needed) `path` for appending. */
  static async open(path: string, onFailure: (err: Error) => void = () => {}): Promise<AppendLog> {
    return new AppendLog(path, await open(path, 'a'), onFailure);
  }

  get failed(): Error | null {
    return this.failure;
  }

  /** Appends `text`; resolves when it is durable. */
  append(text: string): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(new Error(`${this.path} is closed`));
    return new Promise<void>((resolve, reject) => {
      this.queued.push(text);
      this.waiters.push({ resolve, reject });
      this.kick();
    });
  }

  /** Resolves when everything appended so far is durable. */
  flush(): Promise<void> {
    if (!this.inFlight && this.waiters.length === 0) return this.failure ? Promise.reject(this.failure) : Promise.resolve();
    return this.append('');
  }

  /**
   * Runs `fn` with the file to itself: the write in flight finishes first, and appends made
   * meanwhile wait until `fn` is done (then they are written as usual, after whatever `fn` did).
   */
  async hold<T>(fn: () => Promise<T>): Promise<T> {
    if (this.held) throw new Error(`${this.path} is already held`);
    this.held = true;
    try {
      while (this.inFlight) await this.inFlight;
      if (this.failure) throw this.failure;
      return await fn();
    } finally {
      this.held = false;
      this.kick();
    }
  }

  /** Replaces the whole content with `content`, durably. Only inside `hold`. */
  async rewrite(content: string): Promise<void> {
    if (!this.held) throw new Error('rewrite is only allowed while the log is held');
    try {
      await this.handle.truncate(0);
      await this.writeAll(Buffer.from(content, 'utf8'));
      await this.handle.sync();
    } catch (err) {
      this.fail(err as Error, []);
      throw err;
    }
  }

  /** Writes what is queued, then closes the file. */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.flush().catch(() => {});
    this.closed = true;
    await this.handle.close();
  }

  private kick(): void {
    if (this.inFlight || this.held || this.failure || this.waiters.length === 0) return;
    const text = this.queued.join('');
    const waiters = this.waiters;
    this.queued = [];
    this.waiters = [];
    this.inFlight = this.writeDurably(text)
      .then(
        () => {
          for (const waiter of waiters) waiter.resolve();
        },
        (err: Error) => this.fail(err, waiters),
      )
      .finally(() => {
        this.inFlight = null;
        this.kick();
      });
  }

  private async writeDurably(text: string): Promise<void> {
    if (text.length > 0) await this.writeAll(Buffer.from(text, 'utf8'));
    await this.handle.datasync();
  }

  private async writeAll(bytes: Buffer): Promise<void> {
    let offset = 0;
    while (offset < bytes.length) {
      const { bytesWritten } = await this.handle.write(bytes, offset, bytes.length - offset);
      offset += bytesWritten;
    }
  }

  private fail(err: Error, waiters: Waiter[]): void {
    const first = this.failure === null;
    this.failure ??= err;
    const all = [...waiters, ...this.waiters];
    this.queued = [];
    this.waiters = [];
    for (const waiter of all) waiter.reject(this.failure);
    if (first) this.onFailure(err);
  }
}

/**
 * The rows of a CSV journal's text after its header line, as fields (null for a line that
 * cannot be parsed), with their 1-based line numbers. Blank lines are skipped, and so is the text
 * after the last newline: empty, or a row a crash cut short, which was never acknowledged.
 */
export function* journalRows(text: string): Generator<{ line: number; fields: string[] | null }> {
  const lines = text.split('\n');
  for (let i = 1; i < lines.length - 1; i++) {
    const line = lines[i]!;
    if (line === '') continue;
    let fields: string[] | null;
    try {
      fields = line.includes('"') ? ((parse(line) as string[][])[0] ?? []) : line.split(',');
    } catch {
      fields = null;
    }
    yield { line: i + 1, fields };
  }
}
