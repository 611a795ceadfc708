/**
 * Fencing tokens: one counter for the whole service, strictly increasing, across restarts too.
 *
 * Writing the counter to disk on every grant would put an fsync on the hot path, so tokens are
 * reserved in blocks instead: `fencing.json` holds a ceiling, made durable before any token up
 * to it is issued. After a crash or restart issuing resumes above the stored ceiling, so a token
 * is never issued twice, whatever happened to the ones in between (they are simply skipped).
 *
 * The next block is reserved in the background once half of the current one is used; if grants
 * outrun the disk, `issue()` returns null until the reservation is durable, and `onAvailable`
 * listeners are told when tokens can be issued again.
 */
import { readFile, readdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileDurably } from '../../shared/durable.js';
import { DfsError } from '../../shared/errors.js';
import { silentLogger, type Logger } from '../../shared/log.js';

export const FENCING_FILE = 'fencing.json';
export const DEFAULT_BLOCK_SIZE = 1000;
/** Pause before retrying a reservation the disk refused. */
export const DEFAULT_RETRY_MS = 1000;

export interface FencingOptions {
  /** Tokens reserved per durable write. */
  blockSize?: number;
  retryMs?: number;
  log?: Logger;
}

interface StoredCeiling {
  ceiling: number;
}

function parseStored(text: string, path: string): number {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new DfsError('INTERNAL', `${path} is not valid JSON; refusing to start, since restarting the fencing counter could reissue old tokens. Restore it, or delete it only if no file server keeps tokens from this service`);
  }
  const ceiling = (value as Partial<StoredCeiling> | null)?.ceiling;
  if (typeof ceiling !== 'number' || !Number.isSafeInteger(ceiling) || ceiling < 0) {
    throw new DfsError('INTERNAL', `${path} has no valid "ceiling" (a non-negative integer); refusing to start rather than reissue old tokens`);
  }
  return ceiling;
}

export class FencingCounter {
  /** The next token to issue. */
  private nextToken: number;
  /** Tokens up to this one may be issued: a ceiling at least this high is on disk. */
  private durableCeiling: number;
  private reservation: Promise<void> | null = null;
  private retryTimer: NodeJS.Timeout | null = null;
  private starved = false;
  private closed = false;
  private readonly availableListeners: Array<() => void> = [];
  private readonly path: string;
  private readonly blockSize: number;
  private readonly retryMs: number;
  private readonly log: Logger;

  private constructor(dataDir: string, storedCeiling: number, options: FencingOptions) {
    this.path = join(dataDir, FENCING_FILE);
    this.nextToken = storedCeiling + 1;
    this.durableCeiling = storedCeiling;
    this.blockSize = options.blockSize ?? DEFAULT_BLOCK_SIZE;
    this.retryMs = options.retryMs ?? DEFAULT_RETRY_MS;
    this.log = options.log ?? silentLogger;
  }

  /** Reads the stored ceiling and durably reserves the first block; rejects if it cannot. */
  static async open(dataDir: string, options: FencingOptions = {}): Promise<FencingCounter> {
    const blockSize = options.blockSize ?? DEFAULT_BLOCK_SIZE;
    if (!Number.isSafeInteger(blockSize) || blockSize < 2) throw new DfsError('BAD_REQUEST', `fencing block size must be an integer of at least 2, not ${blockSize}`);
    const path = join(dataDir, FENCING_FILE);
    let stored = 0;
    try {
      stored = parseStored(await readFile(path, 'utf8'), path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    await removeLeftoverTemps(dataDir);
    const counter = new FencingCounter(dataDir, stored, options);
    await counter.reserve();
    return counter;
  }

  /** The next token, or null when the next block is not durable yet (see `onAvailable`). */
  issue(): number | null {
    if (this.nextToken > this.durableCeiling) {
      this.starved = true;
      this.startReservation();
      return null;
    }
    const token = this.nextToken++;
    if (this.durableCeiling - token < this.blockSize / 2 && this.reservation === null && this.retryTimer === null) this.startReservation();
    return token;
  }

  /** The last token issued, 0 if none since the counter began. */
  get lastIssued(): number {
    return this.nextToken - 1;
  }

  get ceiling(): number {
    return this.durableCeiling;
  }

  /** Called each time tokens become available after `issue()` returned null. */
  onAvailable(listener: () => void): void {
    this.availableListeners.push(listener);
  }

  /** Stops reserving blocks and waits for a reservation in flight to finish. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    await this.reservation?.catch(() => {});
  }

  private startReservation(): void {
    if (this.reservation !== null || this.retryTimer !== null || this.closed) return;
    this.reservation = this.reserve().then(
      () => {
        this.reservation = null;
        if (this.starved && this.nextToken <= this.durableCeiling) {
          this.starved = false;
          for (const listener of this.availableListeners) listener();
        }
      },
      (err: unknown) => {
        this.reservation = null;
        if (this.closed) return;
        this.log.error('cannot reserve fencing tokens; grants will stall when the current block runs out', {
          path: this.path,
          error: err instanceof Error ? err.message : String(err),
          retryInMs: this.retryMs,
        });
        this.retryTimer = setTimeout(() => {
          this.retryTimer = null;
          this.startReservation();
        }, this.retryMs);
        this.retryTimer.unref();
      },
    );
  }

  /** Durably raises the ceiling one block above what is issued or reserved. */
  private async reserve(): Promise<void> {
    const target = Math.max(this.durableCeiling, this.nextToken - 1) + this.blockSize;
    if (!Number.isSafeInteger(target)) throw new DfsError('INTERNAL', 'the fencing counter has reached the largest safe integer');
    const content: StoredCeiling = { ceiling: target };
    await writeFileDurably(this.path, JSON.stringify(content) + '\n');
    this.durableCeiling = Math.max(this.durableCeiling, target);
    this.log.debug('reserved fencing tokens', { upTo: target });
  }
}

/** Temp files a crash left mid-write (see shared/durable.ts); the real file is intact. */
async function removeLeftoverTemps(dataDir: string): Promise<void> {
  let entries: string[];
  try {
    entries = await readdir(dataDir);
  } catch {
    return;
  }
  const prefix = `.${FENCING_FILE}.`;
  await Promise.all(entries.filter((entry) => entry.startsWith(prefix) && entry.endsWith('.tmp')).map((entry) => unlink(join(dataDir, entry)).catch(() => {})));
}
